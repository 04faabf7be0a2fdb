"""Policy losses: per-token loss formulas. Aggregation to a scalar lives in `cleaner.rl.aggregation`.

Registry (`POLICY_LOSSES`), each `fn(log_prob, old_log_prob, advantages, response_mask, config) ->
(loss_per_token [B, T], metrics)`:
- `ppo_clip` (paper default): PPO's clipped surrogate with an asymmetric clip range (DAPO's clip-higher) and
  dual clip for negative advantages. With r = exp(log_prob - old_log_prob) and A the advantage:
      l = max(-A r, -A clip(r, 1 - clip_ratio_low, 1 + clip_ratio_high))      when A >= 0
      l = min(max(-A r, -A clip(r, 1 - clip_ratio_low, 1 + clip_ratio_high)), -A clip_ratio_c)   when A < 0
  The dual clip caps the loss of a negative-advantage token whose ratio has grown large (r > clip_ratio_c), so
  one stale token cannot dominate the step. This is verl 0.9.1's `compute_policy_loss_vanilla` formula, including
  its clamp of the log-ratio to [-20, 20] before exp.

Metrics (Python floats; means over masked-in tokens, 0 for a batch with none), named as verl's:
- `pg_clipfrac`: fraction of tokens where the clipped term wins the max: r > 1 + clip_ratio_high with A > 0,
  or r < 1 - clip_ratio_low with A < 0 (a dual-clipped token is not counted here), as verl.
- `pg_clipfrac_lower`: fraction of tokens with A < 0 where the dual clip wins the min.
- `ppo_kl`: mean of old_log_prob - log_prob (the k1 estimate of KL(old || new) on the sampled tokens), from the
  clamped log-ratio, as verl.

Argument order departs from verl's (`old_log_prob` comes first there): here the current policy comes first.
The loss is 0 where the mask is 0. No KL penalty, no entropy bonus: the paper uses neither ("no KL",
`entropy_coeff: 0`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from cleaner.registry import Registry

from cleaner.rl import aggregation

LOG_RATIO_CLAMP = 20.0  # |log_prob - old_log_prob| is clamped to this before exp, as verl, to keep r finite


@dataclass(frozen=True)
class PolicyLossConfig:
    """Policy-loss settings. Defaults are the paper's (Table 5, "clip 0.2/0.28 (clip-higher), token-mean loss")."""

    policy_loss: str = "ppo_clip"  # a key of cleaner.rl.losses.POLICY_LOSSES
    clip_ratio_low: float = 0.2  # ratio floor 1 - clip_ratio_low ("clip_ratio_low: 0.20")
    clip_ratio_high: float = 0.28  # ratio ceiling 1 + clip_ratio_high, DAPO clip-higher ("clip_ratio_high: 0.28")
    clip_ratio_c: float = 10.0  # dual clip: loss of an A < 0 token capped at -A * clip_ratio_c ("clip_ratio_c: 10.0")
    loss_agg_mode: str = "token-mean"  # a key of cleaner.rl.aggregation.AGGREGATIONS ("token-mean loss")
    loss_scale_factor: float | None = None  # seq-mean-token-sum-norm divisor; None: padded length T, as verl

    def __post_init__(self) -> None:
        get(self.policy_loss)
        aggregation.get(self.loss_agg_mode)
        if not 0.0 <= self.clip_ratio_low < 1.0:
            raise ValueError(f"clip_ratio_low must be in [0, 1), got {self.clip_ratio_low}")
        if not (self.clip_ratio_high >= 0.0 and math.isfinite(self.clip_ratio_high)):
            raise ValueError(f"clip_ratio_high must be finite and >= 0, got {self.clip_ratio_high}")
        if not (self.clip_ratio_c > 1.0 and math.isfinite(self.clip_ratio_c)):
            raise ValueError(f"clip_ratio_c (dual clip) must be finite and > 1, as verl requires, "
                             f"got {self.clip_ratio_c}")
        if self.loss_scale_factor is not None and not self.loss_scale_factor > 0:
            raise ValueError(f"loss_scale_factor must be > 0 or None, got {self.loss_scale_factor}")


Metrics = dict[str, float]
PolicyLossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, PolicyLossConfig],
                        tuple[torch.Tensor, Metrics]]
POLICY_LOSSES = Registry("policy loss")
register = POLICY_LOSSES.register
get = POLICY_LOSSES.__getitem__


def _masked_mean(values: torch.Tensor, response_mask: torch.Tensor) -> float:
    # values [B, T], response_mask [B, T] -> mean over masked-in entries, 0.0 when there are none
    mask = response_mask.to(torch.float64)
    total = torch.where(response_mask.bool(), values.to(torch.float64), 0.0) * mask
    return (total.sum() / mask.sum().clamp_min(1.0)).item()


def _check_shapes(**tensors: torch.Tensor) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) != 1 or len(next(iter(shapes.values()))) != 2:
        raise ValueError(f"policy loss inputs must all be [B, T], got {shapes}")


@register("ppo_clip")
def ppo_clip(log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor,
             response_mask: torch.Tensor, config: PolicyLossConfig | None = None) -> tuple[torch.Tensor, Metrics]:
    """PPO clipped surrogate, asymmetric clip, dual clip for A < 0 (formula in the module docstring).

    log_prob, old_log_prob, advantages, response_mask: [B, T] -> (loss_per_token [B, T], metrics).
    Gradients flow through `log_prob` only where the unclipped term is active.
    """
    config = PolicyLossConfig() if config is None else config
    _check_shapes(log_prob=log_prob, old_log_prob=old_log_prob, advantages=advantages, response_mask=response_mask)
    log_ratio = (log_prob - old_log_prob).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)  # [B, T]
    ratio = log_ratio.exp()  # [B, T]
    unclipped = -advantages * ratio  # [B, T]
    clipped = -advantages * ratio.clamp(1.0 - config.clip_ratio_low, 1.0 + config.clip_ratio_high)  # [B, T]
    pessimistic = torch.maximum(unclipped, clipped)  # [B, T]
    dual_cap = -advantages * config.clip_ratio_c  # [B, T], > 0 where A < 0
    negative = advantages < 0  # [B, T]
    loss_per_token = torch.where(negative, torch.minimum(pessimistic, dual_cap), pessimistic)  # [B, T]
    loss_per_token = torch.where(response_mask.bool(), loss_per_token, torch.zeros_like(loss_per_token))

    with torch.no_grad():
        metrics = {
            "pg_clipfrac": _masked_mean((clipped > unclipped).float(), response_mask),
            "pg_clipfrac_lower": _masked_mean(((pessimistic > dual_cap) & negative).float(), response_mask),
            "ppo_kl": _masked_mean(-log_ratio, response_mask),
        }
    return loss_per_token, metrics


def policy_loss(log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor,
                response_mask: torch.Tensor, config: PolicyLossConfig | None = None, *,
                global_num_tokens: aggregation.Count | None = None,
                global_num_seqs: aggregation.Count | None = None) -> tuple[torch.Tensor, Metrics]:
    """The configured loss formula, then the configured aggregation.

    log_prob, old_log_prob, advantages, response_mask: [B, T] -> (scalar loss, metrics). The global counts are
    those of the optimizer step when it spans several micro-batches (see `cleaner.rl.aggregation`).
    """
    config = PolicyLossConfig() if config is None else config
    loss_per_token, metrics = get(config.policy_loss)(log_prob, old_log_prob, advantages, response_mask, config)
    loss = aggregation.aggregate(loss_per_token, response_mask, config.loss_agg_mode,
                                 global_num_tokens=global_num_tokens, global_num_seqs=global_num_seqs,
                                 loss_scale_factor=config.loss_scale_factor)
    return loss, metrics
