"""The rollout on a real (tiny, randomly initialised) transformers model: batched and async drivers agree,
sampled log-probs are the model's, recomputation with prefix reuse equals a full recomputation, and re-scoring
through the SGLang client (against a fake server that scores with the same model) equals it on spliced tokens."""

from __future__ import annotations

import asyncio

import pytest
import torch

from cleaner import chat
from cleaner.lab.model import tiny_qwen3
from cleaner.rollout.drivers import ScriptedTools, make_episodes, run_batched
from cleaner.rollout.engines import (
    ForcedEngine,
    GenRequest,
    SamplingParams,
    SGLangEngine,
    TransformersEngine,
    sample_token,
)
from cleaner.rollout.episode import RolloutConfig
from cleaner.rollout.recompute import (
    first_spliced,
    full_recompute,
    logprob_gap,
    recompute,
    rescore_spliced,
    score,
)
from cleaner.trajectory import ToolResult

TOL = 1e-5  # float32 on CPU: batched, cached and full forwards agree to ~1e-6 in log-prob
PROMPTS = [("p0", [{"role": "user", "content": "What is 12 * 12?"}]),
           ("p1", [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Sum 1..10?"}])]


@pytest.fixture(scope="module")
def model(tok):
    torch.set_num_threads(1)
    return tiny_qwen3(tok, hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128, seed=0)


@pytest.fixture(scope="module")
def engine(model, tok):
    return TransformersEngine(model, tok.convert_tokens_to_ids("<|im_end|>"), tok.pad_token_id)


def test_a_trajectory_does_not_depend_on_the_batch_it_was_generated_in(tok, engine):
    """All six episodes in one padded batch, and each one alone: the same tokens and log-probs."""
    cfg = RolloutConfig(max_response_tokens=24)
    sampling = SamplingParams(temperature=1.0, top_p=0.9)
    batched = asyncio.run(run_batched(engine, ScriptedTools({}), make_episodes(tok, PROMPTS, 3, cfg, seed=5), sampling))
    alone = [asyncio.run(run_batched(engine, ScriptedTools({}), [e], sampling))[0]
             for e in make_episodes(tok, PROMPTS, 3, cfg, seed=5)]
    assert [t.id for t in batched] == [t.id for t in alone] == [f"p{i}/{k}" for i in (0, 1) for k in range(3)]
    assert [t.group for t in batched] == ["p0"] * 3 + ["p1"] * 3
    for a, b in zip(batched, alone):
        assert a.ids == b.ids
        assert a.logprobs == pytest.approx(b.logprobs, abs=TOL)
    assert len({tuple(t.ids) for t in batched}) == 6  # different seeds per sample: the samples differ
    other = asyncio.run(run_batched(engine, ScriptedTools({}), make_episodes(tok, PROMPTS, 3, cfg, seed=6), sampling))
    assert [t.ids for t in other] != [t.ids for t in batched]


def test_sampled_logprobs_are_the_models(tok, model, engine):
    context = chat.prompt_span(tok, PROMPTS[0][1]).ids
    out = engine.generate([GenRequest("a", context, 20, seed=3)], SamplingParams(temperature=0.7))[0]
    assert len(out.ids) == len(out.logprobs) > 0
    assert list(out.logprobs) == pytest.approx(score(model, context, out.ids, temperature=0.7), abs=TOL)


def test_sample_token_filters():
    logits = torch.tensor([2.0, 1.0, 0.5, -1.0])
    g = torch.Generator().manual_seed(0)
    assert sample_token(logits, SamplingParams(temperature=0), g)[0] == 0
    assert {sample_token(logits, SamplingParams(top_k=1), g)[0] for _ in range(50)} == {0}
    assert {sample_token(logits, SamplingParams(top_p=0.5), g)[0] for _ in range(50)} == {0}  # p(0) = 0.61
    assert {sample_token(logits, SamplingParams(top_p=0.75), g)[0] for _ in range(200)} == {0, 1}  # 0.61 + 0.22
    draws = torch.tensor([sample_token(logits, SamplingParams(), g)[0] for _ in range(4000)])
    freq = torch.bincount(draws, minlength=4).float() / 4000
    assert torch.allclose(freq, torch.softmax(logits, 0), atol=0.03)  # 4 standard errors at n=4000
    token, lp = sample_token(logits, SamplingParams(temperature=2.0), g)
    assert lp == pytest.approx(float(torch.log_softmax(logits / 2, 0)[token]))


def say(reasoning, code=None):
    return reasoning + (chat.hermes_call_text(code) if code is not None else "")


def spliced_rollout(tok, model):
    """Four trajectories through the episode state machine: a shallow splice, a deep one, and two without."""
    name_err, fixed = "v = [1, 2, 3]\nprint(sum(v) / len(w))", "v = [1, 2, 3]\nprint(sum(v) / len(v))"
    tools = ScriptedTools({name_err: ToolResult("error", "NameError: name 'w' is not defined", "NameError"),
                           fixed: ToolResult("ok", "2.0"), "x = 1/0": ToolResult("error", "ZeroDivisionError"),
                           "print(45)": ToolResult("ok", "45")})
    scripts = {"p0/0": [say("Mean.\n", name_err), say("Typo.\n", fixed), "\\boxed{2}"],  # shallow
               "p0/1": [say("Divide.\n", "x = 1/0"), say("Just print it.\n", "print(45)"), "\\boxed{45}"],  # deep
               "p0/2": [say("Mean.\n", fixed), "\\boxed{2}"],  # no splice
               "p1/0": [say("Sum.\n", "print(45)"), "\\boxed{45}"]}
    engine = ForcedEngine(model, tok, scripts)
    return asyncio.run(run_batched(engine, tools, make_episodes(tok, PROMPTS[:1], 3, RolloutConfig(), 0)
                       + make_episodes(tok, PROMPTS[1:], 1, RolloutConfig(), 0), SamplingParams()))


def test_recompute_with_prefix_reuse_equals_full_and_finds_the_stale_splices(tok, model):
    trajs = spliced_rollout(tok, model)
    assert [t.stats["splices_shallow"] + 2 * t.stats["splices_deep"] for t in trajs] == [1, 2, 0, 0]
    reused, full = recompute(model, trajs, tok.pad_token_id), full_recompute(model, trajs, tok.pad_token_id)
    for t, a, b in zip(trajs, reused, full):
        assert len(a) == len(b) == len(t.ids) - len(t.prompt)
        assert a == pytest.approx(b, abs=TOL)
    gaps = [logprob_gap(t, r) for t, r in zip(trajs, reused)]
    for g in gaps:
        assert g["untouched_tokens"] > 0 and g["untouched_max_abs_gap"] < TOL
    assert gaps[0]["spliced_tokens"] > 0 and gaps[0]["spliced_mean_abs_gap"] > 1e-3  # sampled after the error
    assert gaps[1]["spliced_tokens"] > 0 and gaps[1]["spliced_mean_abs_gap"] > 1e-3
    assert gaps[2]["spliced_tokens"] == gaps[3]["spliced_tokens"] == 0


def scoring(model):
    """A fake `/generate` for re-scoring requests (max_new_tokens 0, logprob_start_len): the model's log-probs of
    the input tokens from logprob_start_len on, in SGLang's [logprob, id, text] triples."""

    def answer(body):
        ids, start = tuple(body["input_ids"]), body["logprob_start_len"]
        lps = score(model, ids[:start], ids[start:])
        return {"meta_info": {"input_token_logprobs": [[lp, i, None] for lp, i in zip(lps, ids[start:])]}}

    return answer


def test_sglang_rescoring_starts_at_the_first_splice_and_equals_recompute_there(tok, model, json_server):
    trajs = spliced_rollout(tok, model)
    server = json_server(scoring(model))
    rescored = asyncio.run(rescore_spliced(SGLangEngine([server.url], [0]), trajs))
    starts = [first_spliced(t) for t in trajs]
    assert [s is not None for s in starts] == [True, True, False, False]
    assert starts[0] > len(trajs[0].prompt)  # shallow: the original reasoning stays, re-scoring starts after it
    assert starts[1] == len(trajs[1].prompt)  # deep: the whole first turn was replaced
    assert sorted((r["rid"], r["logprob_start_len"]) for r in server.requests) == [
        ("p0/0#rescore", starts[0]), ("p0/1#rescore", starts[1])]  # one request per spliced trajectory
    for r in server.requests:
        assert r["sampling_params"] == {"max_new_tokens": 0} and r["return_logprob"] is True
    full = recompute(model, trajs, tok.pad_token_id)
    for t, s, got, want in zip(trajs, starts, rescored, full):
        p = len(t.prompt)
        assert len(got) == len(t.ids) - p
        if s is None:
            assert got == t.logprobs[p:]  # nothing spliced: the sampled log-probs stand, no request sent
            continue
        assert got[: s - p] == t.logprobs[p:s]  # before the splice: as sampled
        assert got[s - p:] == pytest.approx(want[s - p:], abs=TOL)  # from the splice on: as the policy scores them
        assert max(abs(a - b) for a, b in zip(got[s - p:], t.logprobs[s:])) > 1e-3  # and they were stale
