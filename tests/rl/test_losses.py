"""PPO clipped loss with clip-higher and dual clip: a hand-computed case (values, gradients, metrics), a
plain-loop reference on random inputs that hit every regime, config validation and registry errors."""

from __future__ import annotations

import math
import random

import pytest
import torch

from cleaner.rl import losses
from cleaner.rl.losses import PolicyLossConfig

TOL = dict(rtol=0.0, atol=1e-6)


def hand_inputs():
    """2 sequences x 3 tokens, old log-probs 0, so ratio = exp(log_prob).
    Sequence 0, A = +1, ratios [1.0, 1.5, 0.5], last token masked out.
    Sequence 1, A = -1, ratios [0.5, 1.2, 12.0]."""
    ratios = torch.tensor([[1.0, 1.5, 0.5], [0.5, 1.2, 12.0]], dtype=torch.float64)
    log_prob = ratios.log().requires_grad_(True)
    old_log_prob = torch.zeros(2, 3, dtype=torch.float64)
    advantages = torch.tensor([[1.0] * 3, [-1.0] * 3], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    return log_prob, old_log_prob, advantages, mask


def test_ppo_clip_hand_computed():
    # clip range [1 - 0.2, 1 + 0.28] = [0.8, 1.28]; dual clip c = 10.
    # Seq 0 (A = +1): loss = max(-r, -clip(r)):
    #   r = 1.0 -> max(-1, -1) = -1 (not clipped)
    #   r = 1.5 -> max(-1.5, -1.28) = -1.28 (upper clip)
    #   r = 0.5 -> max(-0.5, -0.8) = -0.5 (not clipped: A > 0 keeps the smaller ratio); masked -> 0
    # Seq 1 (A = -1): loss = min(max(r, clip(r)), 10):
    #   r = 0.5  -> max(0.5, 0.8) = 0.8 (lower clip)
    #   r = 1.2  -> max(1.2, 1.2) = 1.2 (not clipped)
    #   r = 12.0 -> max(12, 1.28) = 12 -> min(12, 10) = 10 (dual clip)
    # token-mean over the 5 masked-in tokens: (-1 - 1.28 + 0.8 + 1.2 + 10) / 5 = 9.72 / 5 = 1.944
    log_prob, old_log_prob, advantages, mask = hand_inputs()
    loss_per_token, metrics = losses.ppo_clip(log_prob, old_log_prob, advantages, mask, PolicyLossConfig())
    expected = torch.tensor([[-1.0, -1.28, 0.0], [0.8, 1.2, 10.0]], dtype=torch.float64)
    torch.testing.assert_close(loss_per_token, expected, **TOL)

    loss, metrics2 = losses.policy_loss(log_prob, old_log_prob, advantages, mask)
    assert loss.item() == pytest.approx(1.944, abs=1e-9)
    assert metrics2 == metrics

    # Metrics: clipped term wins at (0, 1) and (1, 0) -> 2 / 5; dual clip wins at (1, 2) -> 1 / 5.
    # ppo_kl = mean(old - new) = -(0 + ln 1.5 + ln 0.5 + ln 1.2 + ln 12) / 5 = -(2.379546) / 5 = -0.475909
    assert metrics["pg_clipfrac"] == pytest.approx(0.4, abs=1e-9)
    assert metrics["pg_clipfrac_lower"] == pytest.approx(0.2, abs=1e-9)
    kl = -(math.log(1.5) + math.log(0.5) + math.log(1.2) + math.log(12.0)) / 5
    assert metrics["ppo_kl"] == pytest.approx(kl, abs=1e-9)
    assert kl == pytest.approx(-0.475909, abs=1e-6)

    # Gradient of the token-mean loss w.r.t. log_prob: d(-A r)/d log r = -A r where unclipped, 0 where clipped,
    # dual-clipped or masked, all divided by 5: [[-1, 0, 0], [0, 1.2, 0]] / 5.
    loss.backward()
    want_grad = torch.tensor([[-1.0, 0.0, 0.0], [0.0, 1.2, 0.0]], dtype=torch.float64) / 5
    torch.testing.assert_close(log_prob.grad, want_grad, **TOL)


def loop_ppo_clip(log_prob, old_log_prob, advantages, mask, low, high, c):
    """Reference, one token at a time, with the regime each token fell in."""
    loss, regimes = [], []
    for i in range(len(log_prob)):
        row, row_regimes = [], []
        for t in range(len(log_prob[i])):
            a = advantages[i][t]
            r = math.exp(min(max(log_prob[i][t] - old_log_prob[i][t], -20.0), 20.0))
            clipped_r = min(max(r, 1 - low), 1 + high)
            value = max(-a * r, -a * clipped_r)
            regime = "clip_high" if (a > 0 and r > 1 + high) else "clip_low" if (a < 0 and r < 1 - low) else "none"
            if a < 0 and value > -a * c:
                value, regime = -a * c, "dual"
            row.append(value if mask[i][t] else 0.0)
            row_regimes.append(regime if mask[i][t] else "masked")
        loss.append(row)
        regimes.append(row_regimes)
    return loss, regimes


@pytest.mark.parametrize("low,high,c", [(0.2, 0.28, 10.0), (0.1, 0.4, 3.0), (0.3, 0.05, 1.5)])
def test_ppo_clip_matches_loop(low, high, c):
    rng = random.Random(int(100 * low + 10 * high + c))
    num_seqs, num_tokens = 16, 24
    # Log-ratios spread wide enough to hit both clip bounds, and large positive ones for the dual clip.
    log_prob = [[rng.gauss(-1.0, 0.5) for _ in range(num_tokens)] for _ in range(num_seqs)]
    old_log_prob = [[lp - rng.choice([rng.gauss(0, 0.4), rng.uniform(1.0, 3.0)]) for lp in row]
                    for row in log_prob]
    advantages = [[rng.choice([-1.0, 1.0]) * rng.uniform(0.1, 2.0)] * num_tokens for _ in range(num_seqs)]
    advantages[0] = [0.0] * num_tokens  # A = 0 tokens: loss 0, never clipped
    mask = [[1 if t < rng.randint(1, num_tokens) else 0 for t in range(num_tokens)] for _ in range(num_seqs)]
    config = PolicyLossConfig(clip_ratio_low=low, clip_ratio_high=high, clip_ratio_c=c)
    got, metrics = losses.ppo_clip(torch.tensor(log_prob, dtype=torch.float64),
                                   torch.tensor(old_log_prob, dtype=torch.float64),
                                   torch.tensor(advantages, dtype=torch.float64), torch.tensor(mask), config)
    want, regimes = loop_ppo_clip(log_prob, old_log_prob, advantages, mask, low, high, c)
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), rtol=0.0, atol=1e-9)

    flat = [g for row in regimes for g in row]
    for regime in ("none", "clip_high", "clip_low", "dual", "masked"):
        assert flat.count(regime) >= 3, f"inputs do not exercise {regime!r}: {flat.count(regime)}"
    in_mask = [g for g in flat if g != "masked"]
    # pg_clipfrac: tokens where the clipped term wins the max (upper bound with A > 0, lower bound with A < 0);
    # a dual-clipped token has r > 1 + high with A < 0, where the unclipped term wins, so it is not counted.
    assert metrics["pg_clipfrac"] == pytest.approx(
        (in_mask.count("clip_high") + in_mask.count("clip_low")) / len(in_mask), abs=1e-12)
    assert metrics["pg_clipfrac_lower"] == pytest.approx(in_mask.count("dual") / len(in_mask), abs=1e-12)
    kl = [old_log_prob[i][t] - log_prob[i][t] for i in range(num_seqs) for t in range(num_tokens) if mask[i][t]]
    assert metrics["ppo_kl"] == pytest.approx(sum(kl) / len(kl), abs=1e-12)


def test_log_ratio_is_clamped_like_verl():
    # log-ratio 50 is clamped to 20: A = +1, the upper clip holds (loss -1.28) and no inf/NaN appears;
    # A = -1: min(max(e^20, 1.28), 10) = 10. ppo_kl = -(20 + 20) / 2 = -20.
    log_prob = torch.tensor([[50.0], [50.0]])
    loss, metrics = losses.ppo_clip(log_prob, torch.zeros(2, 1), torch.tensor([[1.0], [-1.0]]), torch.ones(2, 1))
    torch.testing.assert_close(loss, torch.tensor([[-1.28], [10.0]]), **TOL)
    assert metrics["ppo_kl"] == pytest.approx(-20.0, abs=1e-6)


def test_config_validation():
    with pytest.raises(ValueError, match="clip_ratio_c"):
        PolicyLossConfig(clip_ratio_c=1.0)
    with pytest.raises(ValueError, match="clip_ratio_c"):
        PolicyLossConfig(clip_ratio_c=math.inf)
    with pytest.raises(ValueError, match="clip_ratio_low"):
        PolicyLossConfig(clip_ratio_low=1.0)
    with pytest.raises(ValueError, match="clip_ratio_high"):
        PolicyLossConfig(clip_ratio_high=-0.1)
    with pytest.raises(ValueError, match="loss_scale_factor"):
        PolicyLossConfig(loss_scale_factor=0)
    with pytest.raises(ValueError, match="valid: seq-mean-token-mean, seq-mean-token-sum, "
                                         "seq-mean-token-sum-norm, token-mean, token-sum"):
        PolicyLossConfig(loss_agg_mode="sequence-mean")
    with pytest.raises(ValueError, match=r"unknown policy loss 'gspo'; valid: ppo_clip"):
        PolicyLossConfig(policy_loss="gspo")


def test_paper_defaults():
    config = PolicyLossConfig()
    assert (config.clip_ratio_low, config.clip_ratio_high, config.clip_ratio_c, config.loss_agg_mode) == \
        (0.2, 0.28, 10.0, "token-mean")


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match=r"must all be \[B, T\]"):
        losses.ppo_clip(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 4), torch.ones(2, 3))
