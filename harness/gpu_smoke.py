"""GPU smoke check: the project's rollout, SAAR, recompute and GRPO update on a random-initialised model of
Qwen3-4B's size, on one GPU, in minutes, with nothing installed but torch and transformers.

    python -m harness.gpu_smoke                                   # one GPU: Qwen3-4B's config, bf16 (~8 GiB weights)
    python -m harness.gpu_smoke --device cpu --config tiny        # any machine, seconds (the test runs this)

What it measures, in order, and writes to one JSON file (`--out`) with a short table on stdout:
1. Model: transformers' Qwen3 with Qwen3-4B's sizes (`QWEN3_4B`, from its `config.json`), randomly initialised on
   the device in bf16. Where the memory it is estimated to need (`_memory_estimate`) exceeds the device's free
   memory, fewer layers are used, and the JSON says so (`model.fallback`).
2. Rollout: G trajectories per prompt through the project's own driver and state machine (`run_batched`,
   `Episode`, online SAAR with the paper's gamma, K and p). A random model writes no tool calls, so each turn is
   part sampled, part scripted (`ScriptedTail`): the model samples the start of the turn with the lab's
   `TransformersEngine` (tokens/s of generation are measured there), then a scripted tool call or answer ends it,
   with the log-probs the model gives it in that context. The scripts make the first call of some trajectories
   fail (NameError, ZeroDivisionError); the lookahead retry is generated after the error, as in training, and
   `saar.step` splices it in, shallow or deep by code similarity. Tool results are scripted: no code runs, so no
   sandbox is needed. The JSON counts sampled, scripted and rendered tokens apart.
3. Recompute: the log-probs of every response token under the same weights, with the prompt's KV cache reused by
   its group (`recompute`) and by full forwards (`full_recompute`), one group per call: the largest difference
   (bound: `tolerance`) and the speed-up (median of `repeats` timed runs after one warm-up). Also the gap between
   sampled and recomputed log-probs, on untouched and on spliced tokens.
4. One GRPO update with `cleaner.rl` (the lab trainer's batch and log-prob helpers, the paper's GRPO advantages and
   clipped loss, token-mean over the whole batch in micro-batches): the loss is finite, the parameters changed.
Plus device name, versions, peak memory per phase and wall time. The exit status is 1 when a check fails.

What it does not measure: learning (random weights, one step), SGLang or verl (their throughput, their log-prob
conventions, FSDP sharding), flash-attention, long contexts (prompts of `prompt_tokens`, turns of a few hundred
tokens, not the paper's 20k), real tool execution, or a model that writes its own calls. Generation speed is the
lab engine's: eager transformers, one sampled token per row per step on the host with per-request generators, so
the logits of each step are copied to the host; it bounds nothing about SGLang. In bf16 the recompute tolerance is
a prior (bf16 resolves a logit of magnitude 4 to about 0.016), not yet a measured value.

Departures from the project's own code paths, and why: the model's vocabulary (151,936) is larger than the lab
tokenizer's, so the tokenizer is padded with filler tokens (`_tokenizer`) that decode to bytes 0xA1-0xFF: any id
the model samples decodes, and none can spell a tool call or a chat marker. The update keeps the parameters and
AdamW's moments in bf16, with no float32 master copy as verl's FSDP keeps (on one H100 that copy would not fit
beside the logits), so at the paper's lr most elements' steps are below bf16 resolution: `params_changed_fraction`
is small, and the check asks only that parameters changed.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import itertools
import json
import math
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen3Config

from cleaner import chat
from cleaner.lab import tasks
from cleaner.lab.sft import idle_threads
from cleaner.lab.tokenizer import lab_tokenizer
from cleaner.lab.trainer import _batch, _log_probs
from cleaner.metrics import rollout_metrics
from cleaner.recipe import AlgoConfig
from cleaner.rl.advantages import compute_advantages
from cleaner.rl.dapo import shaped_rewards
from cleaner.rl.losses import policy_loss
from cleaner.rollout.drivers import ScriptedTools, make_episodes, run_batched
from cleaner.rollout.engines import GenOutput, GenRequest, SamplingParams, TransformersEngine
from cleaner.rollout.episode import RolloutConfig
from cleaner.rollout.recompute import full_recompute, logprob_gap, recompute, score
from cleaner.saar import SaarConfig
from cleaner.trajectory import ToolResult

REPO = Path(__file__).resolve().parents[1]
GIB = 2**30

# Qwen/Qwen3-4B's config.json (4,022,468,096 parameters with tied embeddings)
QWEN3_4B = dict(vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
                num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
                rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True)
# the same architecture, small enough for a CPU test: grouped-query attention, tied embeddings, and a vocabulary
# larger than the lab tokenizer's, so the filler tokens are exercised too
TINY = dict(vocab_size=4096, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, max_position_embeddings=4096, rms_norm_eps=1e-6,
            rope_theta=1000000.0, tie_word_embeddings=True)


@dataclass(frozen=True)
class Preset:
    """One smoke configuration: the model and the sizes of the batch. The command line may override the sizes."""

    model: dict[str, Any]  # Qwen3Config keyword arguments
    dtype: str  # parameter dtype: "bfloat16" (as the cluster trains) or "float32"
    prompts: int  # distinct prompts, one GRPO group each
    group_size: int  # trajectories per prompt (the paper's G is 16)
    prompt_tokens: int  # each prompt is lengthened to at least this many tokens (a long system message)
    reasoning_tokens: int  # tokens the model samples at the start of each turn, before the scripted call or answer
    micro_batch: int  # trajectories per forward and backward in the update (gradients summed, one optimizer step)
    gradient_checkpointing: bool  # recompute activations in the backward pass (as verl does for 4B models)
    lr: float  # AdamW learning rate of the update ("2e-6" for 4B in the paper)
    tolerance: float  # the largest |reuse - full| recomputed log-prob accepted
    repeats: int  # timed runs of each recompute, after one warm-up; the median is reported


PRESETS = {
    "qwen3_4b": Preset(QWEN3_4B, "bfloat16", prompts=4, group_size=16, prompt_tokens=512, reasoning_tokens=96,
                       micro_batch=4, gradient_checkpointing=True, lr=2e-6, tolerance=0.1, repeats=3),
    "tiny": Preset(TINY, "float32", prompts=2, group_size=4, prompt_tokens=96, reasoning_tokens=12, micro_batch=4,
                   gradient_checkpointing=True, lr=1e-3, tolerance=1e-4, repeats=3),
}
OVERRIDABLE = ("prompts", "group_size", "prompt_tokens", "reasoning_tokens", "micro_batch", "tolerance", "repeats")

TOOL_DOC = ("The code_interpreter tool runs Python 3 and returns what the code prints; each call runs in the state "
            "left by the earlier successful calls, and its output is cut to 256 characters.")
# per trajectory, by its index in the group: the turns the script ends
KINDS = ("shallow", "deep", "clean", "no_tool")


def smoke(args: argparse.Namespace) -> dict[str, Any]:
    """The whole check, top to bottom; returns the JSON record."""
    wall_start = time.perf_counter()
    preset = replace(PRESETS[args.config], **{k: getattr(args, k) for k in OVERRIDABLE if getattr(args, k) is not None})
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit(f"gpu_smoke: no CUDA device here (torch {torch.__version__}, CUDA {torch.version.cuda or 'none'}); "
                 f"on a CPU run: --device cpu --config tiny")
    if device.type == "cpu":
        torch.set_num_threads(idle_threads())
    transformers.utils.logging.disable_progress_bar()
    dtype = getattr(torch, preset.dtype)

    # 1. model: Qwen3 with the preset's sizes, random weights, as many layers as fit
    tokenizer = _tokenizer(preset.model["vocab_size"])
    cfg = _rollout_config(preset)
    seq_tokens = preset.prompt_tokens + cfg.max_response_tokens  # an upper bound of a trajectory's length
    requested = args.layers or preset.model["num_hidden_layers"]
    free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else None
    layers, fallback, estimate = _fit_layers(preset, requested, dtype, seq_tokens, free)
    config = _config(preset, layers, tokenizer)
    torch.manual_seed(args.seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
    parameters = sum(p.numel() for p in model.parameters())
    config_used = config.to_diff_dict()
    _peak_gib(device)

    # 2. rollout: the project's driver and episodes, online SAAR; turns part sampled, part scripted
    problems = tasks.problems("train", preset.prompts, seed=args.seed)
    prompts = _long_prompts(tokenizer, tasks.prompts(problems), preset.prompt_tokens)
    scripts, tools = _scripts(problems, preset.group_size)
    engine = ScriptedTail(model, tokenizer, scripts, preset.reasoning_tokens)
    episodes = make_episodes(tokenizer, prompts, preset.group_size, cfg, args.seed)
    engine.engine.generate([GenRequest("warm-up", episodes[0].prompt.ids, 2, 0)], SamplingParams())  # not timed
    t0 = time.perf_counter()
    trajs = asyncio.run(run_batched(engine, tools, episodes, SamplingParams(temperature=1.0)))
    rollout_s = time.perf_counter() - t0
    groups = [[t for t in trajs if t.group == g] for g in dict.fromkeys(t.group for t in trajs)]
    trajs = [t for g in groups for t in g]  # group by group, the order of the recomputed log-probs below
    correct = tasks.correctness(trajs, problems)
    rollout = {**rollout_metrics(trajs, correct), **engine.counts, "rollout_s": rollout_s,
               "generation_s": engine.generate_s,
               "generation_tokens_per_s": engine.counts["sampled_tokens"] / engine.generate_s,
               "prompt_tokens": sum(len(t.prompt) for t in trajs) / len(trajs),
               "rendered_tokens": sum(len(t.ids) - sum(t.loss_mask) for t in trajs),  # prompts and tool outputs
               "how": ("each turn: up to reasoning_tokens sampled by the model (TransformersEngine, per-generation "
                       "seeds), cut before a sampled special token, then a scripted tool call or answer with the "
                       "model's log-probs in context; tool results scripted (no code runs); SAAR online "
                       "(Episode: lookahead retry generated after the error, spliced by saar.step); "
                       "generated_tokens counts all the engine returned, sampled_tokens only the model's")}
    peak = {"rollout": _peak_gib(device)}

    # 3. recompute: prefix KV reuse against full forwards, one group per call, same weights
    times: dict[str, list[float]] = {"reuse": [], "full": []}
    logprobs: dict[str, list[list[float]]] = {}
    for repeat in range(preset.repeats + 1):  # the first run of each warms up and is not timed
        for name, fn in (("reuse", recompute), ("full", full_recompute)):
            _sync(device)
            t0 = time.perf_counter()
            out = [fn(model, g, tokenizer.pad_token_id) for g in groups]
            _sync(device)
            if repeat:
                times[name].append(time.perf_counter() - t0)
            logprobs[name] = [lp for g in out for lp in g]
    reused, full = logprobs["reuse"], logprobs["full"]
    diffs = [abs(a - b) for r, f in zip(reused, full) for a, b in zip(r, f)]
    gaps = [logprob_gap(t, r) for t, r in zip(trajs, reused)]
    spliced_tokens = sum(g["spliced_tokens"] for g in gaps)
    reuse_s, full_s = statistics.median(times["reuse"]), statistics.median(times["full"])
    recomputed = {
        "tolerance": preset.tolerance, "max_abs_diff": max(diffs), "mean_abs_diff": sum(diffs) / len(diffs),
        "tokens_compared": len(diffs), "reuse_s": reuse_s, "full_s": full_s, "speedup": full_s / reuse_s,
        "repeats": preset.repeats, "groups": len(groups), "trajectories_per_call": preset.group_size,
        "response_tokens_mean": len(diffs) / len(trajs),
        "sampled_vs_recomputed": {  # on the policy's own tokens: untouched ones should agree, spliced ones not
            "untouched_tokens": sum(g["untouched_tokens"] for g in gaps),
            "untouched_max_abs_gap": max(g["untouched_max_abs_gap"] for g in gaps),
            "spliced_tokens": spliced_tokens,
            "spliced_mean_abs_gap": sum(g["spliced_mean_abs_gap"] * g["spliced_tokens"] for g in gaps)
            / max(1, spliced_tokens)}}
    peak["recompute"] = _peak_gib(device)

    # 4. one GRPO update with cleaner.rl: rewards, group advantages, clipped loss over micro-batches, one step
    algo = AlgoConfig(lr=preset.lr, max_response_tokens=cfg.max_response_tokens,
                      overlong_buffer_tokens=cfg.max_response_tokens // 4)
    lengths = torch.tensor([len(t.ids) - len(t.prompt) for t in trajs])
    rewards = shaped_rewards(torch.tensor(correct), lengths, algo.max_response_tokens, algo.overlong_buffer_tokens,
                             algo.overlong_penalty_factor)
    batch = _batch(trajs, reused, tokenizer.pad_token_id)
    advantages = compute_advantages(rewards, [t.group for t in trajs], batch["mask"], algo.advantage_config())
    batch = {k: v.to(device) for k, v in {**batch, "advantages": advantages}.items()}
    num_tokens = batch["mask"].sum()
    loss_cfg = algo.loss_config()  # the paper's: PPO clip 0.2 / 0.28, dual clip 10, token-mean
    model.train()
    model.config.use_cache = False
    if preset.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    before = [p.detach().to("cpu", copy=True) for p in model.parameters()]
    opt = torch.optim.AdamW(model.parameters(), lr=algo.lr, betas=(0.9, 0.95), weight_decay=0.0)  # as the lab's
    _sync(device)
    t0 = time.perf_counter()
    loss_total, metrics = 0.0, []
    for start in range(0, len(trajs), preset.micro_batch):
        rows = slice(start, start + preset.micro_batch)
        log_prob = _log_probs(model, batch["ids"][rows], batch["attention"][rows], algo.temperature)
        loss, m = policy_loss(log_prob, batch["old_log_prob"][rows], batch["advantages"][rows], batch["mask"][rows],
                              loss_cfg, global_num_tokens=num_tokens)
        loss.backward()  # the micro-batch losses sum to the batch's token-mean loss, and so do their gradients
        loss_total += loss.item()
        metrics.append(m)
    grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), algo.max_grad_norm))
    opt.step()
    _sync(device)
    step_s = time.perf_counter() - t0
    changed = [int((p.detach() != b.to(p.device)).sum()) for p, b in zip(model.parameters(), before)]
    update = {"loss": loss_total, "grad_norm": grad_norm, "step_s": step_s, "lr": algo.lr,
              "micro_batches": len(metrics), "trained_tokens": int(num_tokens), "reward_mean": float(rewards.mean()),
              "ppo_kl": statistics.fmean(m["ppo_kl"] for m in metrics),
              "pg_clipfrac": statistics.fmean(m["pg_clipfrac"] for m in metrics),
              "params_changed_fraction": sum(changed) / parameters,
              "param_tensors_changed": sum(c > 0 for c in changed), "param_tensors": len(changed)}
    peak["update"] = _peak_gib(device)

    checks = {
        "recompute_equal": recomputed["max_abs_diff"] <= preset.tolerance,
        "splices_shallow_and_deep": rollout["splices_shallow"] > 0 and rollout["splices_deep"] > 0,
        "loss_finite": math.isfinite(loss_total) and math.isfinite(grad_norm),
        "params_changed": sum(changed) > 0,
    }
    return {
        "config": args.config, "device": str(device), "device_name": _device_name(device),
        "torch": torch.__version__, "transformers": transformers.__version__, "cuda": torch.version.cuda,
        "python": platform.python_version(), "git_commit": _git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "seed": args.seed,
        "preset": dataclasses.asdict(preset),
        "model": {"architecture": "Qwen3ForCausalLM, random init", "dtype": preset.dtype, "parameters": parameters,
                  "layers": layers, "layers_requested": requested, "fallback": fallback,
                  "memory_estimate_gib": estimate / GIB, "config": config_used,
                  "tokenizer": (f"the lab tokenizer ({len(lab_tokenizer())} tokens) padded with "
                                f"{len(tokenizer) - len(lab_tokenizer())} filler tokens")},
        "rollout": rollout, "recompute": recomputed, "update": update,
        "peak_memory_gib": peak if device.type == "cuda" else None,
        "host_max_rss_gib": _max_rss_gib(),
        "checks": checks, "passed": all(checks.values()),
        "wall_s": time.perf_counter() - wall_start,
    }


class ScriptedTail:
    """An engine whose turns the model starts and a script ends. Each request: the model samples up to
    `reasoning_tokens` tokens (the lab's `TransformersEngine`, all requests in one batch, per-request seeds); a
    sampled special token (end of turn, a tool-call marker) and what follows it are dropped, so the turn's structure
    is the script's; then the next scripted text of the trajectory and `<|im_end|>` follow, with the log-probs the
    model gives them after the sampled part (`score`, as `ForcedEngine`). Counts sampled and scripted tokens."""

    def __init__(self, model: Any, tokenizer: Any, scripts: dict[str, list[str]], reasoning_tokens: int):
        self.model, self.tokenizer = model, tokenizer
        self.engine = TransformersEngine(model, tokenizer.convert_tokens_to_ids(chat.IM_END), tokenizer.pad_token_id)
        self.scripts = {k: list(v) for k, v in scripts.items()}
        self.reasoning_tokens = reasoning_tokens
        self.special_ids = frozenset(tokenizer.added_tokens_decoder)
        self.generate_s = 0.0
        self.counts = {"generations": 0, "sampled_tokens": 0, "sampled_tokens_kept": 0, "scripted_tokens": 0}

    def generate(self, requests: list[GenRequest], sampling: SamplingParams) -> list[GenOutput]:
        tails = [tuple(self.tokenizer.encode(self.scripts[r.request_id].pop(0), add_special_tokens=False))
                 + (self.engine.eos_id,) for r in requests]
        asks = [replace(r, max_new_tokens=min(self.reasoning_tokens, r.max_new_tokens - len(tail)))
                for r, tail in zip(requests, tails)]
        assert all(a.max_new_tokens >= 0 for a in asks), "a scripted tail does not fit in the response budget"
        t0 = time.perf_counter()
        sampled = self.engine.generate(asks, sampling)
        self.generate_s += time.perf_counter() - t0
        out = []
        for r, s, tail in zip(requests, sampled, tails):
            keep = next((i for i, token in enumerate(s.ids) if token in self.special_ids), len(s.ids))
            ids = s.ids[:keep]
            tail_logprobs = score(self.model, r.context + ids, tail, sampling.temperature)
            out.append(GenOutput(ids + tail, s.logprobs[:keep] + tuple(tail_logprobs)))
            self.counts["generations"] += 1
            self.counts["sampled_tokens"] += len(s.ids)
            self.counts["sampled_tokens_kept"] += keep
            self.counts["scripted_tokens"] += len(tail)
        return out


def _tokenizer(vocab_size: int) -> Any:
    """The lab tokenizer, padded with filler tokens up to `vocab_size` so every id the model can sample decodes.
    A filler is three characters of the byte-level alphabet that stand for bytes 0xA1-0xFF (0xAD excepted, whose
    character differs): never ASCII, so no filler spells a tool call, a chat marker or a digit."""
    lab = lab_tokenizer()
    if vocab_size <= len(lab):
        return lab
    with tempfile.TemporaryDirectory() as folder:
        lab.save_pretrained(folder)
        path = Path(folder) / "tokenizer.json"
        state = json.loads(path.read_text(encoding="utf-8"))
        vocab = state["model"]["vocab"]
        high = [chr(b) for b in range(0xA1, 0x100) if b != 0xAD]
        fillers = ("".join(c) for c in itertools.product(high, repeat=3))
        for piece in fillers:
            if len(vocab) == vocab_size:
                break
            vocab.setdefault(piece, len(vocab))
        path.write_text(json.dumps(state), encoding="utf-8")
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    assert len(tokenizer) == vocab_size, f"padded tokenizer has {len(tokenizer)} tokens, not {vocab_size}"
    return tokenizer


def _rollout_config(preset: Preset) -> RolloutConfig:
    """Room for three turns of sampled and scripted tokens (a failed call, its retry, the answer) and two tool
    outputs; the paper's SAAR (gamma 0.5, K 3, p 1.0)."""
    return RolloutConfig(max_turns=4, max_response_tokens=3 * preset.reasoning_tokens + 512, saar=SaarConfig())


def _config(preset: Preset, layers: int, tokenizer: Any) -> Qwen3Config:
    return Qwen3Config(**{**preset.model, "num_hidden_layers": layers}, bos_token_id=None,
                       eos_token_id=tokenizer.convert_tokens_to_ids(chat.IM_END), pad_token_id=tokenizer.pad_token_id)


def _fit_layers(preset: Preset, requested: int, dtype: torch.dtype, seq_tokens: int,
                free_bytes: int | None) -> tuple[int, str | None, int]:
    """(layers, why fewer than `requested` or None, bytes estimated): the most layers up to `requested` whose
    `_memory_estimate` fits in `free_bytes` (None: no limit is known, as on the CPU). Exits with a message when even
    one layer does not fit: then the logits, not the layers, are too large."""
    def need(layers: int) -> int:
        return _memory_estimate(preset, layers, dtype, seq_tokens)

    if free_bytes is None:
        return requested, None, need(requested)
    layers = requested
    while layers > 1 and need(layers) > free_bytes:
        layers -= 1
    if need(layers) > free_bytes:
        sys.exit(f"gpu_smoke: even {layers} layer(s) need about {need(layers) / GIB:.1f} GiB, "
                 f"{free_bytes / GIB:.1f} GiB free; lower --group-size, --micro-batch or --prompt-tokens")
    why = None if layers == requested else (f"{requested} layers need about {need(requested) / GIB:.1f} GiB, "
                                            f"{free_bytes / GIB:.1f} GiB free: {layers} layers used")
    return layers, why, need(layers)


def _memory_estimate(preset: Preset, layers: int, dtype: torch.dtype, seq_tokens: int) -> int:
    """Bytes the largest phase with `layers` layers needs, from the parameter count (counted on the meta device)
    and the batch sizes:
    - rollout: weights, and the KV cache of every trajectory at `seq_tokens`;
    - recompute: weights, and one group's logits over the vocabulary (in the model's dtype, a float32 copy, the
      scaled logits, their log-softmax: 2 + 4 + 4 + 4 bytes in bf16);
    - update: weights, gradients and AdamW's two moments (4 x the weights), and either a micro-batch's logits
      forward and backward (about 24 bytes per logit) or the optimizer step's temporaries (about 1 x the weights).
    Plus 4 GiB for activations and the allocator. An estimate: the GPU run reports the measured peaks next to it."""
    with torch.device("meta"):  # one and two layers: the count is linear in the layers
        one, two = (sum(p.numel() for p in AutoModelForCausalLM.from_config(
            Qwen3Config(**{**preset.model, "num_hidden_layers": n})).parameters()) for n in (1, 2))
    params = one + (layers - 1) * (two - one)
    size = dtype.itemsize
    weights = params * size
    logits = seq_tokens * preset.model["vocab_size"]
    trajectories = preset.prompts * preset.group_size
    kv_per_token = 2 * layers * preset.model["num_key_value_heads"] * preset.model["head_dim"] * size
    kv = kv_per_token * trajectories * seq_tokens
    generating = weights + kv
    scoring = weights + preset.group_size * logits * (size + 12)
    updating = 4 * weights + max(preset.micro_batch * logits * 24, weights)
    return max(generating, scoring, updating) + 4 * GIB


def _long_prompts(tokenizer: Any, prompts: list[tuple[str, list[dict[str, str]]]],
                  prompt_tokens: int) -> list[tuple[str, list[dict[str, str]]]]:
    """The lab's prompts with their system message lengthened by a tool description, repeated until the rendered
    prompt has at least `prompt_tokens` tokens (prefix reuse gains with the prompt's share of the sequence)."""
    out = []
    for prompt_id, messages in prompts:
        system, rest = messages[0], messages[1:]
        while len(chat.prompt_span(tokenizer, [system, *rest]).ids) < prompt_tokens:
            system = {**system, "content": f"{system['content']} {TOOL_DOC}"}
        out.append((prompt_id, [system, *rest]))
    return out


def _scripts(problems: list[tasks.Problem], group_size: int) -> tuple[dict[str, list[str]], ScriptedTools]:
    """What ends each turn, per trajectory (`<problem id>/<k>`), and the tool results, by the trajectory's kind
    (`KINDS[k % 4]`):
    - shallow: a call with a typo (NameError), the retry with the reference program (code similar: shallow splice),
      the correct answer;
    - deep: a call dividing by zero, the retry printing a number (code dissimilar: deep splice), a wrong answer;
    - clean: the reference program, the correct answer;
    - no_tool: a wrong answer without a call.
    So every group of 2 or more has rewards that differ."""
    scripts, results = {}, {}
    for p in problems:
        typo = p.code.replace(f"print({p.result})", f"print({p.result}_)")
        zero = p.code.replace(f"print({p.result})", f"print({p.result} / 0)")
        guess = f"print({p.answer + 1})"
        results[p.code] = ToolResult("ok", f"{p.answer}\n")
        results[guess] = ToolResult("ok", f"{p.answer + 1}\n")
        results[typo] = ToolResult("error", f"Traceback (most recent call last):\n  File \"<cell>\", line "
                                   f"{typo.count(chr(10)) + 1}, in <module>\nNameError: name '{p.result}_' is not "
                                   f"defined", "NameError")
        results[zero] = ToolResult("error", f"Traceback (most recent call last):\n  File \"<cell>\", line "
                                   f"{zero.count(chr(10)) + 1}, in <module>\nZeroDivisionError: division by zero",
                                   "ZeroDivisionError")

        def call(code: str) -> str:
            return f"\nLet me compute it.\n{chat.hermes_call_text(code)}"

        def answer(value: int) -> str:
            return f"\nThe answer is \\boxed{{{value}}}."

        turns = {"shallow": [call(typo), call(p.code), answer(p.answer)],
                 "deep": [call(zero), call(guess), answer(p.answer + 1)],
                 "clean": [call(p.code), answer(p.answer)],
                 "no_tool": [answer(p.answer + 1)]}
        for k in range(group_size):
            scripts[f"{p.id}/{k}"] = turns[KINDS[k % len(KINDS)]]
    return scripts, ScriptedTools(results)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_gib(device: torch.device) -> float | None:
    """The peak memory allocated on the device since the last call (None on the CPU), then reset."""
    if device.type != "cuda":
        return None
    peak = torch.cuda.max_memory_allocated(device) / GIB
    torch.cuda.reset_peak_memory_stats(device)
    return peak


def _max_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB  # Linux reports KiB


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def _git_commit() -> str | None:
    """The checkout's commit, or None where the repository is a copy without git."""
    done = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else None


def table(record: dict[str, Any]) -> str:
    """The short table printed at the end."""
    m, r, c, u = record["model"], record["rollout"], record["recompute"], record["update"]
    ok = {True: "ok", False: "FAILED"}
    peak = record["peak_memory_gib"]
    memory = (", ".join(f"{k} {v:.1f} GiB" for k, v in peak.items()) + f" (estimate {m['memory_estimate_gib']:.1f})"
              if peak else f"host max RSS {record['host_max_rss_gib']:.2f} GiB")
    rows = [
        ("device", f"{record['device_name']} ({record['device']}), torch {record['torch']}, "
                   f"transformers {record['transformers']}"),
        ("model", f"{record['config']}: {m['layers']} layers{' (FALLBACK)' if m['fallback'] else ''}, "
                  f"{m['parameters']:,} parameters, {m['dtype']}"),
        ("rollout", f"{r['trajectories']} trajectories, {r['splices_shallow']} shallow + {r['splices_deep']} deep "
                    f"splices; {r['sampled_tokens']} tokens sampled at {r['generation_tokens_per_s']:.0f} tok/s"),
        ("recompute", f"reuse {c['reuse_s']:.3f} s vs full {c['full_s']:.3f} s: {c['speedup']:.2f}x; max |diff| "
                      f"{c['max_abs_diff']:.1e} (tolerance {c['tolerance']:.0e})  "
                      f"{ok[record['checks']['recompute_equal']]}"),
        ("update", f"loss {u['loss']:+.4f}, grad norm {u['grad_norm']:.3f}, {u['step_s']:.2f} s, "
                   f"{100 * u['params_changed_fraction']:.1f}% of parameter elements changed  "
                   f"{ok[record['checks']['loss_finite'] and record['checks']['params_changed']]}"),
        ("memory", memory),
        ("wall", f"{record['wall_s']:.1f} s  {'passed' if record['passed'] else 'FAILED'}"),
    ]
    return "\n".join(f"{name:<10} {text}" for name, text in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.gpu_smoke", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", choices=sorted(PRESETS), default="qwen3_4b")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--out", type=Path, help="the JSON record (default: results/runs/gpu_smoke/<config>-<device>"
                                                 ".json, git-ignored)")
    parser.add_argument("--layers", type=int, help="decoder layers (default: the config's); the GPU run may use "
                                                   "fewer where they do not fit")
    parser.add_argument("--seed", type=int, default=0)
    for name in OVERRIDABLE:
        kind = float if name == "tolerance" else int
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, help=f"override the preset's {name}")
    args = parser.parse_args(argv)
    out = args.out or REPO / "results" / "runs" / "gpu_smoke" / f"{args.config}-{args.device}.json"
    record = {"command": " ".join(["python -m harness.gpu_smoke", *(sys.argv[1:] if argv is None else argv)]),
              **smoke(args)}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    print(table(record))
    print(f"record: {out.resolve().relative_to(REPO) if out.resolve().is_relative_to(REPO) else out}")
    return 0 if record["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
