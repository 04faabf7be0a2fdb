"""Outcome advantages: one scalar reward per response, compared within its group, broadcast to its tokens.

Registry (`ADVANTAGES`), each `fn(rewards, group_ids, response_mask, config) -> advantages`:
- `grpo` (paper default, "GRPO advantages"): (r - mean_g) / (std_g + eps), or r - mean_g when
  `norm_by_std=False` (Dr. GRPO). std_g is the unbiased sample std (divides by n - 1), as verl's
  `compute_grpo_outcome_advantage` (it calls `torch.std`). eps = 1e-6, added to the std, as verl.
- `rloo`: leave-one-out baseline, r_i - mean of the other n - 1 rewards of the group, = (r_i - mean_g) n / (n - 1).
  It uses no option of the config (verl's rloo has none either).

Departure from verl, both estimators: a group of size 1 gets advantage 0 (there is no other sample to compare
with). verl's loop GRPO falls back to mean 0, std 1 for a singleton, which hands it its raw reward r / (1 + eps)
as advantage; verl's loop RLOO leaves r unchanged (its vectorised RLOO gives 0, like here). With the paper's
group_size 16 no group is a singleton unless the caller filtered rows out of a group.

Not protected against: rewards that are NaN or inf (they propagate to the whole group).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from cleaner.registry import Registry

from cleaner.rl.groups import GroupIds, group_index


@dataclass(frozen=True)
class AdvantageConfig:
    """Advantage settings. Defaults are the paper's ("GRPO advantages", Table 5 `adv_estimator: grpo`)."""

    estimator: str = "grpo"  # a key of cleaner.rl.advantages.ADVANTAGES
    norm_by_std: bool = True  # grpo: divide by the group std (GRPO); False gives Dr. GRPO's r - mean
    eps: float = 1e-6  # grpo: added to the group std before dividing, as verl's `epsilon`

    def __post_init__(self) -> None:
        get(self.estimator)
        if not self.eps > 0.0:
            raise ValueError(f"advantage eps must be > 0 (a group of equal rewards has std 0), got {self.eps}")


AdvantageFn = Callable[[torch.Tensor, GroupIds, torch.Tensor, AdvantageConfig], torch.Tensor]
ADVANTAGES = Registry("advantage estimator")
register = ADVANTAGES.register
get = ADVANTAGES.__getitem__


def compute_advantages(rewards: torch.Tensor, group_ids: GroupIds, response_mask: torch.Tensor,
                       config: AdvantageConfig | None = None) -> torch.Tensor:
    """rewards [B], group_ids [B], response_mask [B, T] -> advantages [B, T] by `config.estimator`
    (default config: the paper's GRPO)."""
    config = AdvantageConfig() if config is None else config
    return get(config.estimator)(rewards, group_ids, response_mask, config)


def _group_stats(rewards: torch.Tensor, group_ids: GroupIds,
                 response_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Checks inputs; returns (index [B] on the rewards' device, count [G], mean [G]) in the rewards' dtype."""
    if rewards.dim() != 1 or not rewards.is_floating_point():
        raise ValueError(f"rewards must be a 1-D float tensor [B], got shape {tuple(rewards.shape)} {rewards.dtype}")
    if response_mask.dim() != 2 or response_mask.shape[0] != rewards.shape[0]:
        raise ValueError(f"response_mask must be [B, T] with B = {rewards.shape[0]}, "
                         f"got {tuple(response_mask.shape)}")
    index, num_groups = group_index(group_ids, rewards.shape[0])
    index = index.to(rewards.device)
    zeros = rewards.new_zeros(num_groups)
    count = zeros.index_add(0, index, torch.ones_like(rewards))  # [G]
    mean = zeros.index_add(0, index, rewards) / count  # [G]; every group has >= 1 member
    return index, count, mean


def _to_tokens(per_response: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    # per_response [B], response_mask [B, T] -> [B, T], zero where the mask is 0
    return per_response.unsqueeze(-1) * response_mask.to(per_response.dtype)


@register("grpo")
def grpo(rewards: torch.Tensor, group_ids: GroupIds, response_mask: torch.Tensor,
         config: AdvantageConfig | None = None) -> torch.Tensor:
    """Group-normalised advantages (GRPO; Dr. GRPO with `norm_by_std=False`).

    rewards [B] float, group_ids [B], response_mask [B, T] -> advantages [B, T].
    std: unbiased (n - 1), as verl. A group whose rewards are all equal gets 0. A singleton group gets 0
    (verl: its raw reward; see the module docstring).
    """
    config = AdvantageConfig() if config is None else config
    index, count, mean = _group_stats(rewards, group_ids, response_mask)
    centred = rewards - mean[index]  # [B]
    if config.norm_by_std:
        sq_dev = rewards.new_zeros(count.shape[0]).index_add(0, index, centred * centred)  # [G]
        std = (sq_dev / (count - 1).clamp_min(1)).sqrt()  # [G], unbiased
        centred = centred / (std[index] + config.eps)
    # A singleton is its own mean, so its deviation is exactly 0: no special case needed.
    return _to_tokens(centred, response_mask)


@register("rloo")
def rloo(rewards: torch.Tensor, group_ids: GroupIds, response_mask: torch.Tensor,
         config: AdvantageConfig | None = None) -> torch.Tensor:
    """Leave-one-out advantages: r_i - mean_{j != i, j in g} r_j.

    rewards [B] float, group_ids [B], response_mask [B, T] -> advantages [B, T]. A singleton group gets 0.
    """
    index, count, mean = _group_stats(rewards, group_ids, response_mask)
    n = count[index]  # [B]
    per_response = (rewards - mean[index]) * n / (n - 1).clamp_min(1)  # [B]; a singleton: 0 * 1 / 1 = 0
    return _to_tokens(per_response, response_mask)
