"""DAPO helpers: overlong penalty at hand-picked lengths, outcome rewards, group filtering, dynamic-sampling fill
(refill needed, surplus dropped, batches run out)."""

from __future__ import annotations

import random

import pytest
import torch

from cleaner.rl import dapo

PAPER = dict(max_response_tokens=20480, buffer_len=4096, penalty_factor=1.0)  # paper: buffer 4096, factor 1.0


@pytest.mark.parametrize("length,expected", [
    (0, 0.0),
    (7000, 0.0),  # about the paper's mean response length
    (16384, 0.0),  # 20480 - 4096: last length without penalty
    (16385, -1 / 4096),  # one token into the buffer: -0.000244
    (18432, -0.5),  # half-way through the buffer: -(18432 - 16384) / 4096 = -0.5
    (20479, -4095 / 4096),
    (20480, -1.0),  # at the limit: -penalty_factor
])
def test_overlong_penalty_paper_settings(length, expected):
    got = dapo.overlong_penalty(torch.tensor([length]), **PAPER)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(expected, abs=1e-7)


def test_overlong_penalty_factor_and_buffer():
    # max 100, buffer 20, factor 0.5: free up to 80; 90 -> -(10/20)*0.5 = -0.25; 100 -> -0.5.
    got = dapo.overlong_penalty(torch.tensor([79, 80, 81, 90, 100]), 100, 20, 0.5)
    torch.testing.assert_close(got, torch.tensor([0.0, 0.0, -0.025, -0.25, -0.5]), rtol=0.0, atol=1e-7)
    # buffer == max: the penalty starts at length 0; 25 -> -25/100 = -0.25.
    assert dapo.overlong_penalty(torch.tensor([25]), 100, 100, 1.0).item() == pytest.approx(-0.25)


def test_overlong_penalty_matches_verl_formula_loop():
    # verl's DAPO reward manager, per response: min(-(L - (max - buffer)) / buffer * factor, 0).
    rng = random.Random(3)
    lengths = [rng.randint(0, 300) for _ in range(200)] + [300, 240, 241]
    got = dapo.overlong_penalty(torch.tensor(lengths), 300, 60, 1.5)
    want = [min(-(n - (300 - 60)) / 60 * 1.5, 0.0) for n in lengths]
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float32), rtol=0.0, atol=1e-6)


def test_overlong_penalty_rejects_bad_input():
    with pytest.raises(ValueError, match=r"must be in \[0, 100\] tokens, got \[101\]"):
        dapo.overlong_penalty(torch.tensor([50, 101]), 100, 20, 1.0)
    with pytest.raises(ValueError, match="buffer_len"):
        dapo.overlong_penalty(torch.tensor([5]), 100, 0, 1.0)
    with pytest.raises(ValueError, match="buffer_len"):
        dapo.overlong_penalty(torch.tensor([5]), 100, 101, 1.0)
    with pytest.raises(ValueError, match="penalty_factor"):
        dapo.overlong_penalty(torch.tensor([5]), 100, 20, -1.0)


def test_outcome_and_shaped_rewards():
    assert dapo.outcome_reward(True) == 1.0
    assert dapo.outcome_reward(False) == -1.0
    # correct at 7000 tokens: +1; wrong at 18432: -1 - 0.5; correct at the limit: 1 - 1 = 0; wrong at the limit: -2.
    got = dapo.shaped_rewards(torch.tensor([True, False, True, False]), torch.tensor([7000, 18432, 20480, 20480]),
                              **PAPER)
    torch.testing.assert_close(got, torch.tensor([1.0, -1.5, 0.0, -2.0]), rtol=0.0, atol=1e-7)
    # penalty_factor 0 switches shaping off: rewards back in {-1, +1}.
    off = dapo.shaped_rewards(torch.tensor([True, False]), torch.tensor([20480, 20480]), 20480, 4096, 0.0)
    assert off.tolist() == [1.0, -1.0]
    with pytest.raises(ValueError, match="1-D bool"):
        dapo.shaped_rewards(torch.tensor([1, 0]), torch.tensor([1, 1]), **PAPER)


def test_groups_with_signal():
    # Groups: a = [1, 1, 1] (no signal), b = [1, -1] (signal), c = [-1] (singleton: no signal),
    # d = [-1.5, -1.0] (signal from the overlong penalty alone). Members interleaved.
    rewards = torch.tensor([1.0, 1.0, -1.0, 1.0, -1.0, 1.0, -1.5, -1.0])
    groups = ["a", "b", "b", "a", "c", "a", "d", "d"]
    keep = dapo.groups_with_signal(rewards, groups)
    assert keep.tolist() == [False, True, True, False, False, False, True, True]

