"""Group advantages: hand-computed cases, a plain-loop reference on random inputs, registry errors.
Comparisons with verl live in test_verl_parity.py."""

from __future__ import annotations

import math
import random
import statistics

import numpy as np
import pytest
import torch

from cleaner.rl import advantages as adv
from cleaner.rl.advantages import AdvantageConfig

TOL = dict(rtol=0.0, atol=1e-6)


def test_grpo_hand_computed():
    # Group "a": r = [1, -1, -1]; mean = -1/3; deviations = [4/3, -2/3, -2/3];
    # unbiased var = (16/9 + 4/9 + 4/9) / (3 - 1) = 4/3; std = sqrt(4/3) = 1.154701;
    # adv = [ (4/3)/1.154701, (-2/3)/1.154701, ... ] = [1.154701, -0.577350, -0.577350] (eps 1e-6 shifts < 1e-6).
    # Group "b": r = [1, -1]; mean 0; unbiased std = sqrt((1 + 1) / 1) = 1.414214; adv = [0.707107, -0.707107].
    # Masks: row 1 has its last token masked; row 4 (group b, r = 1) has two masked tokens.
    rewards = torch.tensor([1.0, -1.0, -1.0, 1.0, -1.0])
    groups = ["a", "a", "a", "b", "b"]
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 1]])
    out = adv.grpo(rewards, groups, mask)
    s3, s2 = math.sqrt(4 / 3), math.sqrt(2)
    expected = torch.tensor([
        [4 / 3 / s3] * 3,
        [-2 / 3 / s3, -2 / 3 / s3, 0.0],
        [-2 / 3 / s3] * 3,
        [1 / s2, 0.0, 0.0],
        [-1 / s2] * 3,
    ])
    torch.testing.assert_close(out, expected, **TOL)


def test_dr_grpo_does_not_divide_by_std():
    # norm_by_std=False: adv = r - mean = [4/3, -2/3, -2/3] for r = [1, -1, -1].
    out = adv.grpo(torch.tensor([1.0, -1.0, -1.0]), [0, 0, 0], torch.ones(3, 2),
                   AdvantageConfig(norm_by_std=False))
    torch.testing.assert_close(out[:, 0], torch.tensor([4 / 3, -2 / 3, -2 / 3]), **TOL)


def test_equal_rewards_and_singletons_get_zero():
    # Group 0: all +1 -> std 0 -> 0 / (0 + eps) = 0. Group 1: one member -> 0 by convention (verl: r).
    rewards = torch.tensor([1.0, 1.0, 1.0, -1.0])
    for name in ("grpo", "rloo"):
        out = adv.get(name)(rewards, torch.tensor([0, 0, 0, 1]), torch.ones(4, 3), AdvantageConfig())
        assert torch.equal(out, torch.zeros(4, 3)), name


def test_rloo_hand_computed():
    # r = [1, -1, -1]: 1 - mean(-1, -1) = 2; -1 - mean(1, -1) = -1; -1 - mean(1, -1) = -1.
    # Second group r = [0.5, -0.5]: 0.5 - (-0.5) = 1; -0.5 - 0.5 = -1.
    out = adv.rloo(torch.tensor([1.0, -1.0, -1.0, 0.5, -0.5]), [7, 7, 7, 3, 3], torch.ones(5, 1))
    torch.testing.assert_close(out[:, 0], torch.tensor([2.0, -1.0, -1.0, 1.0, -1.0]), **TOL)


def loop_grpo(rewards, groups, mask, norm_by_std, eps):
    """Reference: a plain-Python loop over responses."""
    out = []
    for i, r in enumerate(rewards):
        members = [rewards[j] for j in range(len(rewards)) if groups[j] == groups[i]]
        if len(members) == 1:
            a = 0.0
        else:
            a = r - statistics.fmean(members)
            if norm_by_std:
                a = a / (statistics.stdev(members) + eps)  # stdev: n - 1 in the denominator
        out.append([a * m for m in mask[i]])
    return out


def loop_rloo(rewards, groups, mask):
    out = []
    for i, r in enumerate(rewards):
        others = [rewards[j] for j in range(len(rewards)) if groups[j] == groups[i] and j != i]
        a = r - statistics.fmean(others) if others else 0.0
        out.append([a * m for m in mask[i]])
    return out


def random_batch(rng: random.Random, continuous: bool):
    sizes = [rng.choice([1, 2, 3, 5, 8]) for _ in range(rng.randint(1, 6))]
    groups = [f"uid-{g}" for g, n in enumerate(sizes) for _ in range(n)]
    rng.shuffle(groups)  # group members are not adjacent
    rewards = [rng.uniform(-2.0, 1.0) if continuous else rng.choice([-1.0, 1.0]) for _ in groups]
    num_tokens = 6
    mask = []
    for _ in groups:
        length = rng.randint(0, num_tokens)
        mask.append([1] * length + [0] * (num_tokens - length))
    return rewards, groups, mask


@pytest.mark.parametrize("norm_by_std", [True, False])
@pytest.mark.parametrize("continuous", [True, False])
def test_grpo_matches_loop(norm_by_std, continuous):
    rng = random.Random(1234 + norm_by_std + 2 * continuous)
    for _ in range(50):
        rewards, groups, mask = random_batch(rng, continuous)
        got = adv.grpo(torch.tensor(rewards, dtype=torch.float64), np.array(groups), torch.tensor(mask),
                       AdvantageConfig(norm_by_std=norm_by_std, eps=1e-6))
        want = torch.tensor(loop_grpo(rewards, groups, mask, norm_by_std, 1e-6), dtype=torch.float64)
        torch.testing.assert_close(got, want, rtol=0.0, atol=1e-9)


def test_rloo_matches_loop():
    rng = random.Random(99)
    for _ in range(50):
        rewards, groups, mask = random_batch(rng, continuous=True)
        ids = torch.tensor([int(g.split("-")[1]) for g in groups])  # int tensor ids this time
        got = adv.rloo(torch.tensor(rewards, dtype=torch.float64), ids, torch.tensor(mask))
        want = torch.tensor(loop_rloo(rewards, groups, mask), dtype=torch.float64)
        torch.testing.assert_close(got, want, rtol=0.0, atol=1e-9)


def test_group_id_kinds_agree():
    # The same grouping as strings, a numpy object array, a list of tuples and an int tensor.
    rewards = torch.tensor([1.0, -1.0, 1.0, 1.0, -1.0, -1.0])
    mask = torch.ones(6, 2)
    as_ints = torch.tensor([5, 9, 5, 9, 5, 9])
    want = adv.grpo(rewards, as_ints, mask)
    for ids in (["x", "y", "x", "y", "x", "y"], np.array(["x", "y", "x", "y", "x", "y"], dtype=object),
                [(1, "p"), (2, "p"), (1, "p"), (2, "p"), (1, "p"), (2, "p")]):
        torch.testing.assert_close(adv.grpo(rewards, ids, mask), want, rtol=0.0, atol=0.0)
    assert want.abs().sum() > 0


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="3 group ids for a batch of 2"):
        adv.grpo(torch.tensor([1.0, -1.0]), [0, 0, 1], torch.ones(2, 2))
    with pytest.raises(ValueError, match=r"response_mask must be \[B, T\]"):
        adv.grpo(torch.tensor([1.0, -1.0]), [0, 0], torch.ones(3, 2))
    with pytest.raises(ValueError, match="1-D float"):
        adv.grpo(torch.tensor([1, -1]), [0, 0], torch.ones(2, 2))
    with pytest.raises(ValueError, match="eps must be > 0"):
        AdvantageConfig(eps=0.0)


def test_unknown_estimator_lists_valid_keys():
    with pytest.raises(ValueError, match=r"unknown advantage estimator 'gae'; valid: grpo, rloo"):
        adv.get("gae")
    with pytest.raises(ValueError, match="valid: grpo, rloo"):
        AdvantageConfig(estimator="ppo")


def test_compute_advantages_dispatches():
    rewards, ids, mask = torch.tensor([1.0, -1.0, -1.0]), [0, 0, 0], torch.ones(3, 1)
    torch.testing.assert_close(adv.compute_advantages(rewards, ids, mask, AdvantageConfig(estimator="rloo")),
                               adv.rloo(rewards, ids, mask), rtol=0.0, atol=0.0)
    # default is GRPO: 1.154701 for the +1 (see the hand case), not RLOO's 2.
    assert adv.compute_advantages(rewards, ids, mask)[0, 0].item() == pytest.approx(math.sqrt(4 / 3), abs=1e-5)
