"""Log-probs of purified trajectories under the current policy, reusing the KV cache of the shared prompt.

A spliced span was sampled in a lookahead context that held the error; in the purified trajectory it stands after
different tokens, so its sampled log-probs are stale. `recompute` scores every response token of the final
sequences: the prompt is run once per group of trajectories that share it (the G samples of one prompt), its KV
cache is repeated for the group, and only the responses are run on top. `full_recompute` runs each whole sequence
and is the reference. `logprob_gap` measures, per trajectory, how far the sampled log-probs were from the
recomputed ones on spliced and on untouched tokens. `rescore_spliced` is the server-side variant: an SGLang server
re-scores each trajectory from its first spliced token, reusing its radix cache for the prefix before it.

Log-probs are taken at `temperature` (logits divided by it), as the engines report them.

`length_chunks` groups rows of a batch by length so that a forward runs little padding; `recompute`, the lab
trainer's update and the transformers engine's prefill use it.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

import torch
from transformers import DynamicCache

from cleaner.trajectory import Provenance, Trajectory

SPLICED = (Provenance.SPLICED_SHALLOW, Provenance.SPLICED_DEEP)


def _device(model: Any) -> torch.device:
    """Where the model's inputs go (its parameters' device: a GPU model takes GPU tensors)."""
    return next(model.parameters()).device


def _pad_right(rows: list[tuple[int, ...]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids, mask


CHUNK_OVERHEAD_TOKENS = 64  # what one more forward costs, in padded tokens (the lab model on one CPU thread)


def length_chunks(lengths: list[int], overhead_tokens: int = CHUNK_OVERHEAD_TOKENS) -> list[list[int]]:
    """Rows grouped by length for the forward: the row indices sorted by length (stable), cut into runs that
    minimise the padded tokens of all runs plus `overhead_tokens` per run (dynamic programming over the cuts)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    best = [0.0] + [float("inf")] * len(order)  # best[j]: cost of the first j sorted rows
    cut = [0] * (len(order) + 1)
    for j in range(1, len(order) + 1):
        for i in range(j):  # rows i..j-1 in one run, padded to the longest, the last
            cost = best[i] + (j - i) * lengths[order[j - 1]] + overhead_tokens
            if cost < best[j]:
                best[j], cut[j] = cost, i
    runs, j = [], len(order)
    while j:
        runs.append(order[cut[j]:j])
        j = cut[j]
    return runs[::-1]


def _token_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    """logits [B, T, V] predicting targets [B, T] -> log-probs [B, T]."""
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    return logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


@torch.no_grad()
def score(model: Any, context: tuple[int, ...], continuation: tuple[int, ...], temperature: float = 1.0) -> list[float]:
    """Log-probs of `continuation` tokens after `context`, one forward pass."""
    ids = torch.tensor([context + continuation], device=_device(model))
    logits = model(input_ids=ids).logits[:, len(context) - 1 : -1]
    return _token_logprobs(logits, ids[:, len(context):], temperature)[0].tolist()


@torch.no_grad()
def full_recompute(model: Any, trajectories: list[Trajectory], pad_id: int,
                   temperature: float = 1.0) -> list[list[float]]:
    """Reference: log-probs of each trajectory's response tokens (after the prompt), whole sequences in a batch."""
    ids, mask = (x.to(_device(model)) for x in _pad_right([tuple(t.ids) for t in trajectories], pad_id))
    logp = _token_logprobs(model(input_ids=ids, attention_mask=mask).logits[:, :-1], ids[:, 1:], temperature)
    return [logp[i, len(t.prompt) - 1 : len(t.ids) - 1].tolist() for i, t in enumerate(trajectories)]


@torch.no_grad()
def recompute(model: Any, trajectories: list[Trajectory], pad_id: int, temperature: float = 1.0) -> list[list[float]]:
    """Same result as `full_recompute`, running each distinct prompt once and its responses on its cache, the
    responses of a prompt in groups of like lengths (`length_chunks`), each padded to its longest only."""
    groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for i, t in enumerate(trajectories):
        groups[t.prompt.ids].append(i)
    out: list[list[float]] = [[] for _ in trajectories]
    device = _device(model)
    for prompt, members in groups.items():
        prompt_cache = DynamicCache()
        last = model(input_ids=torch.tensor([prompt], device=device), past_key_values=prompt_cache,
                     use_cache=True).logits[:, -1:]
        responses = [tuple(trajectories[i].ids[len(prompt):]) for i in members]
        for chunk in length_chunks([len(r) for r in responses]):
            cache = DynamicCache()
            for layer, kept in enumerate(prompt_cache.layers):  # the prompt's cache, once per row of the chunk
                cache.update(kept.keys.repeat_interleave(len(chunk), 0), kept.values.repeat_interleave(len(chunk), 0),
                             layer)
            ids, mask = (x.to(device) for x in _pad_right([responses[k] for k in chunk], pad_id))
            full_mask = torch.cat([torch.ones((len(chunk), len(prompt)), dtype=torch.long, device=device), mask],
                                  dim=1)
            positions = torch.arange(len(prompt), len(prompt) + ids.shape[1], device=device).expand(len(chunk), -1)
            logits = model(input_ids=ids, attention_mask=full_mask, position_ids=positions, past_key_values=cache,
                           use_cache=True).logits
            logits = torch.cat([last.expand(len(chunk), -1, -1), logits[:, :-1]], dim=1)  # predictions of ids
            logp = _token_logprobs(logits, ids, temperature)
            for row, k in enumerate(chunk):
                out[members[k]] = logp[row, : len(responses[k])].tolist()
    return out


def first_spliced(trajectory: Trajectory) -> int | None:
    """Index in `trajectory.ids` of its first spliced token, or None when nothing was spliced."""
    return next((i for i, p in enumerate(trajectory.provenance) if p in SPLICED), None)


async def rescore_spliced(engine: Any, trajectories: list[Trajectory]) -> list[list[float]]:
    """Log-probs of each trajectory's response tokens with the spliced part re-scored by an SGLang server
    (`SGLangEngine.arescore`): from the first spliced token to the end, since every token after a splice stands
    after different tokens than when it was sampled. Tokens before it keep their sampled log-probs (0.0 where the
    policy did not sample, as `Trajectory.logprobs`), and a trajectory without a splice sends no request. The
    server's log-prob convention (raw or temperature-scaled logits) is the one it used when sampling, so the gap
    between the two compares like with like."""
    starts = [first_spliced(t) for t in trajectories]
    rescored = await asyncio.gather(*(engine.arescore(t.id, tuple(t.ids), s)
                                      for t, s in zip(trajectories, starts) if s is not None))
    out, it = [], iter(rescored)
    for t, s in zip(trajectories, starts):
        sampled = t.logprobs
        assert sampled is not None, f"trajectory {t.id} has no sampled log-probs"
        out.append(sampled[len(t.prompt):] if s is None else sampled[len(t.prompt):s] + next(it))
    return out


def logprob_gap(trajectory: Trajectory, recomputed: list[float]) -> dict[str, float | int]:
    """|sampled - recomputed| over the trajectory's sampled tokens, split into spliced and untouched ones."""
    sampled = trajectory.logprobs
    assert sampled is not None, f"trajectory {trajectory.id} has no sampled log-probs"
    start = len(trajectory.prompt)
    gaps: dict[str, list[float]] = {"spliced": [], "untouched": []}
    for lp, new, p in zip(sampled[start:], recomputed, trajectory.provenance[start:]):
        if p.trained:
            gaps["spliced" if p in SPLICED else "untouched"].append(abs(lp - new))
    out: dict[str, float | int] = {}
    for kind, values in gaps.items():
        out[f"{kind}_tokens"] = len(values)
        out[f"{kind}_mean_abs_gap"] = sum(values) / len(values) if values else 0.0
        out[f"{kind}_max_abs_gap"] = max(values, default=0.0)
    return out
