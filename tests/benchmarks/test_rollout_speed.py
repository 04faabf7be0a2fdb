"""Rollout and recompute speed on the lab-sized tiny model (3.8 M parameters, random weights, CPU):
- recompute of G = 8 sequences sharing a 200-token prompt, with the prompt's KV cache reused vs full sequences;
- rollout throughput of the batched driver (16 trajectories per engine call) vs one trajectory at a time.

Run with `make bench`; the ratios are recorded in docs/benchmarks.md."""

from __future__ import annotations

import asyncio

import random

import pytest
import torch

from cleaner.lab.model import tiny_qwen3
from cleaner.rollout.drivers import ScriptedTools, make_episodes, run_batched
from cleaner.rollout.engines import SamplingParams, TransformersEngine
from cleaner.rollout.episode import RolloutConfig
from cleaner.rollout.recompute import full_recompute, recompute
from cleaner.trajectory import Provenance, Span, Trajectory, Turn

G, PROMPT_TOKENS, RESPONSE_TOKENS = 8, 200, 100


@pytest.fixture(scope="module")
def model(tok):
    torch.set_num_threads(2)
    return tiny_qwen3(tok, seed=0)


@pytest.fixture(scope="module")
def group(tok):
    rng = random.Random(0)
    prompt = Span(Provenance.PROMPT, tuple(rng.randrange(10, len(tok)) for _ in range(PROMPT_TOKENS)), "")
    trajs = []
    for k in range(G):
        ids = tuple(rng.randrange(10, len(tok)) for _ in range(RESPONSE_TOKENS))
        turn = Turn(Span(Provenance.ORIGINAL, ids, "", (0.0,) * len(ids)), Span(Provenance.ORIGINAL, (), "", ()))
        trajs.append(Trajectory(f"g/{k}", prompt, (turn,)))
    return trajs


@pytest.mark.parametrize("method", ["prefix_reuse", "full"])
def test_recompute(benchmark, model, tok, group, method):
    fn = recompute if method == "prefix_reuse" else full_recompute
    out = benchmark.pedantic(fn, args=(model, group, tok.pad_token_id), rounds=5, warmup_rounds=1)
    assert [len(x) for x in out] == [RESPONSE_TOKENS] * G


@pytest.mark.parametrize("mode", ["batched", "one_at_a_time"])
def test_rollout_throughput(benchmark, model, tok, mode):
    engine = TransformersEngine(model, tok.convert_tokens_to_ids("<|im_end|>"), tok.pad_token_id)
    cfg = RolloutConfig(max_response_tokens=64)
    prompts = [(f"p{i}", [{"role": "user", "content": f"Compute {i} * {i + 3} with Python."}]) for i in range(4)]

    def run() -> int:
        episodes = make_episodes(tok, prompts, 4, cfg, seed=1)
        if mode == "batched":
            trajs = asyncio.run(run_batched(engine, ScriptedTools({}), episodes, SamplingParams()))
        else:
            trajs = [t for e in episodes for t in asyncio.run(run_batched(engine, ScriptedTools({}), [e], SamplingParams()))]
        return sum(t.meta["timing"]["generated_tokens"] for t in trajs)

    tokens = benchmark.pedantic(run, rounds=3, warmup_rounds=1)
    benchmark.extra_info["tokens"] = tokens
    benchmark.extra_info["tokens_per_s"] = tokens / benchmark.stats.stats.median
    assert tokens > 16 * 32  # random weights rarely sample the stop token: most turns run to the budget
