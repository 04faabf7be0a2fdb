"""Same inputs, same numbers as verl 0.9.1's `core_algos` (the cluster path trains with verl): GRPO (loop and
vectorised), RLOO, the vanilla PPO policy loss with its metrics under every aggregation mode, and `agg_loss` with
global counts. Tolerance: 1e-6 absolute on float32 inputs. Documented departures are asserted too, so a change on
either side shows."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from verl.trainer.ppo import core_algos
from verl.workers.config.actor import ActorConfig

from cleaner.rl import advantages as adv
from cleaner.rl import aggregation as agg
from cleaner.rl import losses
from cleaner.rl.advantages import AdvantageConfig
from cleaner.rl.losses import PolicyLossConfig

TOL = dict(rtol=0.0, atol=1e-6)
MODES = ["token-mean", "token-sum", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]


def outcome_batch(seed: int, group_size: int = 4, num_groups: int = 6, num_tokens: int = 9):
    """Rewards in {-1, +1} minus an overlong-like penalty, uid strings shuffled, ragged masks. verl takes the
    reward as a token-level tensor and sums it; put it on the last response token as its reward manager does."""
    gen = torch.Generator().manual_seed(seed)
    n = group_size * num_groups
    rewards = torch.where(torch.rand(n, generator=gen) < 0.5, 1.0, -1.0) - 0.3 * torch.rand(n, generator=gen) * (
        torch.rand(n, generator=gen) < 0.3)
    uids = np.array([f"uid-{g}" for g in range(num_groups) for _ in range(group_size)], dtype=object)
    perm = torch.randperm(n, generator=gen).numpy()
    uids = uids[perm]
    lengths = torch.randint(1, num_tokens + 1, (n,), generator=gen)
    mask = (torch.arange(num_tokens) < lengths[:, None]).float()
    token_rewards = torch.zeros(n, num_tokens)
    token_rewards[torch.arange(n), lengths - 1] = rewards
    return rewards, uids, mask, token_rewards


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("norm_by_std", [True, False])
def test_grpo_matches_verl(seed, norm_by_std):
    rewards, uids, mask, token_rewards = outcome_batch(seed, group_size=2 + seed)
    ours = adv.grpo(rewards, uids, mask, AdvantageConfig(norm_by_std=norm_by_std, eps=1e-6))
    for verl_fn in (core_algos.compute_grpo_outcome_advantage, core_algos.compute_grpo_vectorized_outcome_advantage):
        theirs, _ = verl_fn(token_rewards, mask, uids, epsilon=1e-6, norm_adv_by_std_in_grpo=norm_by_std)
        torch.testing.assert_close(ours, theirs, **TOL)
    assert ours.abs().max() > 0.1


@pytest.mark.parametrize("seed", range(5))
def test_rloo_matches_verl(seed):
    rewards, uids, mask, token_rewards = outcome_batch(seed, group_size=2 + seed)
    ours = adv.rloo(rewards, uids, mask)
    for verl_fn in (core_algos.compute_rloo_outcome_advantage, core_algos.compute_rloo_vectorized_outcome_advantage):
        theirs, _ = verl_fn(token_rewards, mask, uids)
        torch.testing.assert_close(ours, theirs, **TOL)


def test_singleton_group_departs_from_verl_grpo():
    # verl's loop GRPO: singleton -> mean 0, std 1 -> advantage r / (1 + eps); ours: 0.
    rewards = torch.tensor([1.0, -1.0, -1.0])
    uids = np.array(["a", "a", "lonely"], dtype=object)
    mask = torch.ones(3, 2)
    theirs, _ = core_algos.compute_grpo_outcome_advantage(
        torch.stack([torch.zeros(3), rewards], dim=1), mask, uids, epsilon=1e-6)
    ours = adv.grpo(rewards, uids, mask)
    torch.testing.assert_close(ours[:2], theirs[:2], **TOL)
    assert theirs[2, 0].item() == pytest.approx(-1.0, abs=1e-5)
    assert ours[2].abs().sum().item() == 0.0


def verl_actor_config(low: float, high: float, c: float, mode: str, **global_batch_info) -> ActorConfig:
    return ActorConfig(strategy="fsdp", rollout_n=4, ppo_micro_batch_size_per_gpu=1, clip_ratio=low,
                       clip_ratio_low=low, clip_ratio_high=high, clip_ratio_c=c, loss_agg_mode=mode,
                       global_batch_info=global_batch_info)


def policy_batch(seed: int, num_seqs: int = 12, num_tokens: int = 16):
    """Log-ratios wide enough to hit both clip bounds and the dual clip (c = 10 needs r > 10, log r > 2.3)."""
    gen = torch.Generator().manual_seed(seed)
    old_log_prob = -2.0 * torch.rand(num_seqs, num_tokens, generator=gen)
    shift = 0.4 * torch.randn(num_seqs, num_tokens, generator=gen)
    big = torch.rand(num_seqs, num_tokens, generator=gen) < 0.15
    shift = torch.where(big, 2.5 + torch.rand(num_seqs, num_tokens, generator=gen), shift)
    log_prob = old_log_prob + shift
    advantages = torch.randn(num_seqs, 1, generator=gen).expand(num_seqs, num_tokens).contiguous()
    lengths = torch.randint(0, num_tokens + 1, (num_seqs,), generator=gen)
    lengths[0] = num_tokens
    mask = (torch.arange(num_tokens) < lengths[:, None]).float()
    return log_prob, old_log_prob, advantages, mask


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("low,high,c", [(0.2, 0.28, 10.0), (0.1, 0.4, 3.0)])
@pytest.mark.parametrize("seed", range(3))
def test_policy_loss_matches_verl_vanilla(mode, low, high, c, seed):
    log_prob, old_log_prob, advantages, mask = policy_batch(seed)
    ours_config = PolicyLossConfig(clip_ratio_low=low, clip_ratio_high=high, clip_ratio_c=c, loss_agg_mode=mode)
    ours_logp = log_prob.clone().requires_grad_(True)
    ours, ours_metrics = losses.policy_loss(ours_logp, old_log_prob, advantages, mask, ours_config)
    theirs_logp = log_prob.clone().requires_grad_(True)
    theirs, theirs_metrics = core_algos.compute_policy_loss_vanilla(
        old_log_prob, theirs_logp, advantages, mask, loss_agg_mode=mode,
        config=verl_actor_config(low, high, c, mode))
    torch.testing.assert_close(ours, theirs, **TOL)
    ours.backward()
    theirs.backward()
    torch.testing.assert_close(ours_logp.grad, theirs_logp.grad, **TOL)
    for key in ("pg_clipfrac", "pg_clipfrac_lower", "ppo_kl"):
        assert ours_metrics[key] == pytest.approx(theirs_metrics[f"actor/{key}"], abs=1e-6), key
    assert ours_metrics["pg_clipfrac"] > 0 and ours_metrics["pg_clipfrac_lower"] > 0


@pytest.mark.parametrize("mode", MODES)
def test_agg_loss_matches_verl_with_global_counts(mode):
    log_prob, old_log_prob, advantages, mask = policy_batch(7)
    loss_mat = -advantages * (log_prob - old_log_prob).exp()
    mask[3] = 0  # a fully masked sequence is excluded from the sequence count on both sides
    for counts in ({}, {"global_num_tokens": 500, "global_num_seqs": 40, "loss_scale_factor": 64}):
        ours = agg.aggregate(loss_mat, mask, mode, **counts)
        theirs = core_algos.agg_loss(loss_mat, mask, mode, batch_num_tokens=counts.get("global_num_tokens"),
                                     global_batch_size=counts.get("global_num_seqs"),
                                     loss_scale_factor=counts.get("loss_scale_factor"))
        torch.testing.assert_close(ours, theirs, **TOL)
