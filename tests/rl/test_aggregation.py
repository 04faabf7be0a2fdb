"""Loss aggregation modes: hand-computed values, a plain-loop reference, micro-batch splitting with global counts,
error messages. Comparisons with verl's agg_loss live in test_verl_parity.py."""

from __future__ import annotations

import random

import pytest
import torch

from cleaner.rl import aggregation as agg

TOL = dict(rtol=0.0, atol=1e-6)

# 3 sequences x 3 tokens; row 2 is fully masked out and its NaN must not leak.
LOSS = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, float("nan"), 9.0]])
MASK = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0]])


@pytest.mark.parametrize("mode,kwargs,expected", [
    # masked-in tokens: 1, 2 (row 0) and 4 (row 1); 3 tokens; 2 non-empty sequences.
    ("token-mean", {}, (1 + 2 + 4) / 3),  # 7 / 3 = 2.333333
    ("token-mean", {"global_num_tokens": 14}, 7 / 14),  # a micro-batch of a 14-token step: 0.5
    ("token-sum", {}, 7.0),
    ("seq-mean-token-mean", {}, ((1 + 2) / 2 + 4 / 1) / 2),  # (1.5 + 4) / 2 = 2.75
    ("seq-mean-token-mean", {"global_num_seqs": 5}, (1.5 + 4) / 5),  # 1.1
    ("seq-mean-token-sum", {}, ((1 + 2) + 4) / 2),  # 3.5
    ("seq-mean-token-sum-norm", {}, 3.5 / 3),  # divided by T = 3: 1.166667
    ("seq-mean-token-sum-norm", {"loss_scale_factor": 10}, 3.5 / 10),  # 0.35
])
def test_hand_computed(mode, kwargs, expected):
    assert agg.aggregate(LOSS, MASK, mode, **kwargs).item() == pytest.approx(expected, abs=1e-6)


def loop_aggregate(loss, mask, mode, scale):
    """Reference: plain loops over sequences and tokens (0/1 masks)."""
    total, num_tokens, seq_values = 0.0, 0, []
    for row, row_mask in zip(loss, mask):
        kept = [value for value, m in zip(row, row_mask) if m]
        total += sum(kept)
        num_tokens += len(kept)
        if kept:
            seq_values.append(sum(kept) / len(kept) if mode == "seq-mean-token-mean" else sum(kept))
    if mode == "token-mean":
        return total / num_tokens
    if mode == "token-sum":
        return total
    seq_mean = sum(seq_values) / len(seq_values)
    return seq_mean / scale if mode == "seq-mean-token-sum-norm" else seq_mean


@pytest.mark.parametrize("mode", sorted(agg.AGGREGATIONS))
def test_matches_loop(mode):
    rng = random.Random(sorted(agg.AGGREGATIONS).index(mode))
    for _ in range(30):
        num_seqs, num_tokens = rng.randint(1, 8), rng.randint(1, 12)
        loss = [[rng.gauss(0, 1) for _ in range(num_tokens)] for _ in range(num_seqs)]
        lengths = [rng.randint(0, num_tokens) for _ in range(num_seqs)]
        lengths[0] = max(lengths[0], 1)  # at least one token in the batch
        mask = [[int(t < n) for t in range(num_tokens)] for n in lengths]
        got = agg.aggregate(torch.tensor(loss, dtype=torch.float64), torch.tensor(mask), mode).item()
        assert got == pytest.approx(loop_aggregate(loss, mask, mode, num_tokens), abs=1e-9)


@pytest.mark.parametrize("mode", sorted(agg.AGGREGATIONS))
def test_micro_batches_with_global_counts_sum_to_the_full_batch(mode):
    # Splitting a step into micro-batches and passing the step's counts must reproduce the full-batch loss;
    # with each micro-batch's own counts it would not (the micro-batches have different token counts).
    torch.manual_seed(0)
    loss = torch.randn(8, 10, dtype=torch.float64)
    lengths = torch.tensor([10, 1, 4, 7, 0, 2, 9, 3])
    mask = (torch.arange(10) < lengths[:, None]).long()
    counts = dict(global_num_tokens=mask.sum(), global_num_seqs=(lengths > 0).sum(), loss_scale_factor=16)
    full = agg.aggregate(loss, mask, mode, **counts)
    chunks = [slice(0, 3), slice(3, 5), slice(5, 8)]
    summed = sum(agg.aggregate(loss[s], mask[s], mode, **counts) for s in chunks)
    torch.testing.assert_close(summed, full, rtol=0.0, atol=1e-12)
    if mode != "token-sum":  # the only mode without a denominator
        local = sum(agg.aggregate(loss[s], mask[s], mode, loss_scale_factor=16) for s in chunks)
        assert abs(local - full) > 1e-3


def test_gradient_ignores_masked_out_nan():
    loss = LOSS.clone().requires_grad_(True)
    agg.aggregate(loss, MASK, "token-mean").backward()
    # d/dl of (l00 + l01 + l10) / 3: 1/3 on masked-in entries, 0 elsewhere (including the NaN position).
    torch.testing.assert_close(loss.grad, MASK.float() / 3, **TOL)


def test_empty_batch_raises():
    empty = torch.zeros(2, 3, dtype=torch.long)
    for mode in ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"):
        with pytest.raises(ValueError, match="cannot average over"):
            agg.aggregate(torch.ones(2, 3), empty, mode)
    # With the step's counts, an empty micro-batch contributes 0.
    assert agg.aggregate(torch.ones(2, 3), empty, "token-mean", global_num_tokens=5).item() == 0.0


def test_bad_shapes_and_scale_raise():
    with pytest.raises(ValueError, match=r"both be \[B, T\]"):
        agg.aggregate(torch.ones(2, 3), torch.ones(2, 4), "token-mean")
    with pytest.raises(ValueError, match="loss_scale_factor must be > 0"):
        agg.aggregate(torch.ones(2, 3), torch.ones(2, 3), "seq-mean-token-sum-norm", loss_scale_factor=0)


def test_unknown_mode_lists_valid_keys():
    with pytest.raises(ValueError, match=r"unknown loss_agg_mode 'seq-sum'; valid: seq-mean-token-mean, "
                                         r"seq-mean-token-sum, seq-mean-token-sum-norm, token-mean, token-sum"):
        agg.get("seq-sum")
