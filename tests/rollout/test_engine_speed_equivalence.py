"""The transformers engine's speed-ups keep its samples: shared and length-grouped prefills, kept caches across
turns, a preallocated KV cache, rows that leave the batch when they finish and one softmax for all rows give the
same tokens, token for token, as the loop they replaced (one growing cache, every context prefilled whole, every
row decoded until the last one finishes), for the same seeds; log-probs agree to float order.

Deliberate bugs these tests were seen to catch (each made by hand in `cleaner/rollout/engines.py`, then reverted):
the positions of the wrong rows kept when the batch shrinks (`next_pos[: len(kept)]`); the shared prefill's cache
not repeated for the rows that share it; the cache written one column late (`self.length + 1`)."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import DynamicCache

from cleaner.lab.model import tiny_qwen3
from cleaner.rollout.engines import (
    GenOutput,
    GenRequest,
    PreallocatedLayer,
    SamplingParams,
    TransformersEngine,
    sample_rows,
    sample_token,
)

TOL = 1e-5  # float32 on CPU: another batch shape changes log-probs in the last digits only


@torch.no_grad()
def whole_batch_loop(model, eos_id: int, pad_id: int, requests: list[GenRequest],
                     sampling: SamplingParams) -> list[GenOutput]:
    """The engine's loop before the speed work, as the reference: left padding, one `DynamicCache` grown by
    concatenation, every row decoded (finished ones on padding) until the last row finishes."""
    width = max(len(r.context) for r in requests)
    ids = torch.full((len(requests), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(requests), width), dtype=torch.long)
    for row, r in enumerate(requests):
        ids[row, width - len(r.context):] = torch.tensor(r.context)
        mask[row, width - len(r.context):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache()
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                   use_cache=True, logits_to_keep=1).logits[:, -1].float()
    generators = [torch.Generator().manual_seed(r.seed) for r in requests]
    out_ids: list[list[int]] = [[] for _ in requests]
    out_lps: list[list[float]] = [[] for _ in requests]
    active = [r.max_new_tokens > 0 for r in requests]
    next_pos = positions[:, -1:] + 1
    while any(active):
        tokens = torch.full((len(requests), 1), pad_id, dtype=torch.long)
        for row, r in enumerate(requests):
            if not active[row]:
                continue
            token, lp = sample_token(logits[row], sampling, generators[row])
            out_ids[row].append(token)
            out_lps[row].append(lp)
            tokens[row, 0] = token
            active[row] = token != eos_id and token not in r.stop_ids and len(out_ids[row]) < r.max_new_tokens
        if not any(active):
            break
        mask = torch.cat([mask, torch.ones((len(requests), 1), dtype=torch.long)], dim=1)
        logits = model(input_ids=tokens, attention_mask=mask, position_ids=next_pos, past_key_values=cache,
                       use_cache=True).logits[:, -1].float()
        next_pos = next_pos + 1
    return [GenOutput(tuple(i), tuple(lp)) for i, lp in zip(out_ids, out_lps)]


@pytest.fixture(scope="module")
def model(tok):
    torch.set_num_threads(1)
    return tiny_qwen3(tok, hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128, seed=0)


def requests(tok) -> list[GenRequest]:
    """Twelve requests: contexts of 5 to 40 tokens, three of them sent four times each (as the G samples of a
    prompt), budgets from 0 to 40 tokens, and stop tokens common enough that rows finish at different steps."""
    rng = random.Random(0)
    contexts = [tuple(rng.randrange(10, len(tok)) for _ in range(n)) for n in (5, 17, 40, 23, 9)]
    stop = frozenset(rng.sample(range(10, len(tok)), 60))
    picks = [0, 0, 0, 0, 1, 2, 2, 2, 2, 3, 4, 4]
    budgets = [40, 40, 12, 40, 0, 40, 40, 3, 40, 25, 40, 1]
    return [GenRequest(f"r{k}", contexts[c], budget, seed=100 + k, stop_ids=stop)
            for k, (c, budget) in enumerate(zip(picks, budgets))]


@pytest.mark.parametrize("sampling", [SamplingParams(temperature=1.0), SamplingParams(temperature=0.7, top_p=0.9),
                                      SamplingParams(temperature=1.0, top_k=20), SamplingParams(temperature=0)],
                         ids=["t1", "top_p", "top_k", "greedy"])
def test_generations_equal_the_whole_batch_loop_token_for_token(tok, model, sampling):
    eos, pad = tok.convert_tokens_to_ids("<|im_end|>"), tok.pad_token_id
    reqs = requests(tok)
    new = TransformersEngine(model, eos, pad).generate(reqs, sampling)
    old = whole_batch_loop(model, eos, pad, reqs, sampling)
    assert [o.ids for o in new] == [o.ids for o in old]
    for a, b in zip(new, old):
        assert list(a.logprobs) == pytest.approx(list(b.logprobs), abs=TOL)
    lengths = [len(o.ids) for o in new]
    assert lengths[4] == 0 and lengths[7] <= 3 and lengths[11] == 1  # the budgets hold
    if sampling.temperature > 0:  # rows finish at different steps: the batch shrinks during the call
        assert len(set(lengths)) >= 4 and min(lengths[:4]) < max(lengths[:4])
        assert len({o.ids for o in new[:4]}) > 1  # one context, four seeds: different samples


def test_a_request_alone_samples_what_it_samples_in_the_batch(tok, model):
    eos, pad = tok.convert_tokens_to_ids("<|im_end|>"), tok.pad_token_id
    engine, reqs, sampling = TransformersEngine(model, eos, pad), requests(tok), SamplingParams(temperature=1.0)
    batched = engine.generate(reqs, sampling)
    assert [engine.generate([r], sampling)[0].ids for r in reqs] == [o.ids for o in batched]


def test_preallocated_layer_holds_what_a_growing_layer_holds():
    """Prefill then three single steps: the same keys and values as `DynamicCache`'s; rows dropped keep theirs;
    a write past the capacity raises."""
    torch.manual_seed(0)
    steps = [torch.randn(3, 2, n, 4) for n in (5, 1, 1, 1)]
    fixed = PreallocatedLayer(capacity=8)
    reference = DynamicCache()
    for k in steps:
        keys, values = fixed.update(k, -k)
        ref_keys, ref_values = reference.update(k, -k, layer_idx=0)
        assert torch.equal(keys, ref_keys) and torch.equal(values, ref_values)
    assert fixed.get_seq_length() == 8
    fixed.batch_select_indices(torch.tensor([2, 0]))
    assert torch.equal(fixed.keys, ref_keys[[2, 0]]) and torch.equal(fixed.values, ref_values[[2, 0]])
    with pytest.raises(RuntimeError, match="capacity 8 exceeded"):
        fixed.update(steps[1][[0, 1]], steps[1][[0, 1]])


def next_turn(tok, reqs: list[GenRequest], outs: list[GenOutput], cut: int = 0) -> list[GenRequest]:
    """Each trajectory's next request: its context, what it sampled and a made-up tool response (4 to 9 tokens),
    or, where `cut` > 0, its context without its last `cut` tokens and a new ending (a rollback's new context)."""
    rng = random.Random(1)
    out = []
    for k, (r, o) in enumerate(zip(reqs, outs)):
        tail = tuple(rng.randrange(10, len(tok)) for _ in range(4 + k % 6))
        context = r.context[: len(r.context) - cut] + tail if cut else r.context + o.ids + tail
        out.append(GenRequest(r.request_id, context, 30, seed=r.seed + 1000, stop_ids=r.stop_ids))
    return out


@pytest.mark.parametrize("cut", [0, 3], ids=["next_turn", "rollback"])
def test_a_kept_cache_gives_the_whole_batch_loop_tokens_in_the_next_turn(tok, model, cut):
    """Second calls on kept caches (the prefix of each context held, only the rest prefilled) sample what the plain
    loop samples from scratch. Breakages caught: the kept cache's last sampled token counted as run (a column
    off); the kept prefix placed left-aligned instead of against the new tokens; positions of the new tokens
    counted from 0; the prefill groups merged left-aligned (`PreallocatedLayer.merged` at offset 0)."""
    eos, pad = tok.convert_tokens_to_ids("<|im_end|>"), tok.pad_token_id
    engine, sampling = TransformersEngine(model, eos, pad), SamplingParams(temperature=1.0)
    first = requests(tok)
    second = next_turn(tok, first, engine.generate(first, sampling), cut)
    assert engine._kept and all(engine._reusable(r)[1] > 0 for r in second if r.request_id in engine._kept)
    prefill, groups = engine._prefill, []
    engine._prefill = lambda prefills, *args: groups.append(len(prefills)) or prefill(prefills, *args)
    new = engine.generate(second, sampling)
    assert len(groups) > 1  # prefilled in groups of like lengths, merged into one cache
    old = whole_batch_loop(model, eos, pad, second, sampling)
    assert [o.ids for o in new] == [o.ids for o in old]
    for a, b in zip(new, old):
        assert list(a.logprobs) == pytest.approx(list(b.logprobs), abs=TOL)


@pytest.mark.parametrize("change", ["in_place", "replaced", "through_data_then_forget"])
def test_kept_caches_are_dropped_when_the_weights_change(tok, change):
    """New weights between two calls (in place, as an optimizer step; new tensors, as `p.data = ...`; through
    `.data` in place, which no version counter shows, then `forget()`): the second call samples what a fresh engine
    samples (no kept cache of the old weights is used). Breakages caught: the weights check left out; the check
    without `data_ptr` (the replaced weights' stale cache used)."""
    model = tiny_qwen3(tok, hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128, seed=3)
    eos, pad = tok.convert_tokens_to_ids("<|im_end|>"), tok.pad_token_id
    engine, sampling = TransformersEngine(model, eos, pad), SamplingParams(temperature=1.0)
    first = requests(tok)
    second = next_turn(tok, first, engine.generate(first, sampling))
    with torch.no_grad():
        for p in model.parameters():
            if change == "in_place":
                p.mul_(1.5)
            elif change == "replaced":
                p.data = p.data * 1.5
            else:
                p.data.mul_(1.5)
    if change == "through_data_then_forget":
        engine.forget()
    fresh = TransformersEngine(model, eos, pad).generate(second, sampling)
    new = engine.generate(second, sampling)
    assert [o.ids for o in new] == [o.ids for o in fresh]
    for a, b in zip(new, fresh):
        assert list(a.logprobs) == pytest.approx(list(b.logprobs), abs=TOL)


def test_the_kept_caches_stay_within_their_budget(tok, model):
    """The least recently kept go first past `keep_cache_mib`; a budget of 0 keeps none and samples the same."""
    eos, pad = tok.convert_tokens_to_ids("<|im_end|>"), tok.pad_token_id
    sampling = SamplingParams(temperature=1.0)
    unbounded = TransformersEngine(model, eos, pad)
    unbounded.generate(requests(tok), sampling)
    sizes = [k.nbytes for k in unbounded._kept.values()]
    budget = sum(sizes[-3:]) / 2**20
    bounded = TransformersEngine(model, eos, pad, keep_cache_mib=budget)
    outs = bounded.generate(requests(tok), sampling)
    assert 0 < len(bounded._kept) < len(unbounded._kept)
    assert sum(k.nbytes for k in bounded._kept.values()) <= budget * 2**20
    nothing = TransformersEngine(model, eos, pad, keep_cache_mib=0)
    assert [o.ids for o in nothing.generate(requests(tok), sampling)] == [o.ids for o in outs] and not nothing._kept


@pytest.mark.parametrize("sampling", [SamplingParams(temperature=1.0), SamplingParams(temperature=0.6),
                                      SamplingParams(temperature=0), SamplingParams(top_p=0.8)],
                         ids=["t1", "t0.6", "greedy", "top_p"])
def test_sample_rows_is_sample_token_on_each_row(sampling):
    """The batched softmax draws what `sample_token` draws row by row, with the same log-probs, bit for bit.
    Breakage caught: one generator shared by all rows."""
    logits = torch.randn(16, 1428, generator=torch.Generator().manual_seed(0)) * 4
    rows = [sample_token(row, sampling, torch.Generator().manual_seed(k)) for k, row in enumerate(logits)]
    tokens, logprobs = sample_rows(logits, sampling, [torch.Generator().manual_seed(k) for k in range(16)])
    assert tokens == [t for t, _ in rows] and logprobs == [lp for _, lp in rows]
    assert len(set(tokens)) > 1
