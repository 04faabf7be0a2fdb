"""DAPO's reward shaping and dynamic sampling, as pure functions.

Rewards. The paper's reward is outcome only, +1 correct / -1 wrong, plus DAPO's soft overlong punishment
("overlong buffer 4096", penalty factor 1.0, max_response_length 20480). The penalty is 0 up to
max_response_tokens - buffer_len tokens, then falls linearly to -penalty_factor at max_response_tokens, as
verl's DAPO reward manager. With it a shaped reward lies in [-1 - penalty_factor, 1], no longer in {-1, +1}.
Length is what verl measures: every response token after the prompt, tool observations included in a
multi-turn rollout; the caller decides what to count.

Dynamic sampling. DAPO drops groups whose responses all got the same reward (their GRPO advantages are all 0) and
samples more prompts until the batch again holds the target number of groups. The paper's runs (and DemyAgent's
recipe, `dynamic_sampling: off`) do not use it; it is here for ablation. `groups_with_signal` marks the rows to
keep. The lab trainer trains on the kept groups without sampling more (a step may train on fewer groups); on the
cluster path `algo.dynamic_sampling` turns on verl's own `algorithm.filter_groups`, which refills. Departures from
verl's DAPO recipe:
- a singleton group counts as without signal (the recipe keeps it); its advantage is 0 here, see
  `cleaner.rl.advantages`;
- the recipe filters on a chosen metric (its script uses accuracy, not the shaped reward); here the caller
  passes whatever values to filter on; pass the outcome scores to match DAPO, since the overlong penalty can
  make a group of all-wrong answers look varied.
"""

from __future__ import annotations

import torch

from cleaner.rl.groups import GroupIds, group_index


def outcome_reward(correct: bool) -> float:
    """+1.0 for a correct final answer, -1.0 otherwise (paper: reward in {-1, +1})."""
    return 1.0 if correct else -1.0


def overlong_penalty(response_lengths: torch.Tensor, max_response_tokens: int, buffer_len: int,
                     penalty_factor: float) -> torch.Tensor:
    """DAPO soft overlong punishment, in reward units.

    response_lengths [B] (tokens) -> penalty [B] float32 in [-penalty_factor, 0]:
    min(0, -(L - (max_response_tokens - buffer_len)) / buffer_len * penalty_factor), as verl's DAPO reward manager.
    A length above max_response_tokens is a caller bug (rollouts stop at the limit) and raises ValueError; verl
    would extrapolate the line past -penalty_factor.
    """
    if not 0 < buffer_len <= max_response_tokens:
        raise ValueError(f"need 0 < buffer_len <= max_response_tokens, got buffer_len={buffer_len}, "
                         f"max_response_tokens={max_response_tokens}")
    if not penalty_factor >= 0:
        raise ValueError(f"penalty_factor must be >= 0, got {penalty_factor}")
    lengths = torch.as_tensor(response_lengths)
    if lengths.dim() != 1:
        raise ValueError(f"response_lengths must be 1-D [B], got shape {tuple(lengths.shape)}")
    out_of_range = (lengths < 0) | (lengths > max_response_tokens)
    if out_of_range.any():
        raise ValueError(f"response lengths must be in [0, {max_response_tokens}] tokens, got "
                         f"{lengths[out_of_range].tolist()}")
    expected_tokens = max_response_tokens - buffer_len
    exceed_tokens = lengths.to(torch.float64) - expected_tokens  # [B]
    penalty = (-exceed_tokens / buffer_len * penalty_factor).clamp(max=0.0) + 0.0  # + 0.0 turns -0.0 into 0.0
    return penalty.to(torch.float32)


def shaped_rewards(correct: torch.Tensor, response_lengths: torch.Tensor, max_response_tokens: int,
                   buffer_len: int, penalty_factor: float) -> torch.Tensor:
    """Outcome reward plus overlong penalty. correct [B] bool, response_lengths [B] tokens -> rewards [B] float32.

    penalty_factor=0 switches the penalty off (verl: `overlong_buffer.enable=False`).
    """
    correct = torch.as_tensor(correct)
    if correct.dtype != torch.bool or correct.dim() != 1:
        raise ValueError(f"correct must be a 1-D bool tensor [B], got {correct.dtype} {tuple(correct.shape)}")
    outcome = torch.where(correct, 1.0, -1.0).to(torch.float32)  # [B], outcome_reward per element
    return outcome + overlong_penalty(response_lengths, max_response_tokens, buffer_len, penalty_factor)


def groups_with_signal(rewards: torch.Tensor, group_ids: GroupIds) -> torch.Tensor:
    """rewards [B], group_ids [B] -> keep [B] bool: True for responses whose group's rewards are not all equal
    (exact comparison). Singleton groups are dropped (see the module docstring)."""
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D [B], got shape {tuple(rewards.shape)}")
    index, num_groups = group_index(group_ids, rewards.shape[0])
    index = index.to(rewards.device)
    values = rewards.to(torch.float64)
    high = torch.full((num_groups,), -torch.inf, dtype=torch.float64, device=rewards.device)
    high = high.scatter_reduce(0, index, values, reduce="amax")  # [G]
    low = torch.full((num_groups,), torch.inf, dtype=torch.float64, device=rewards.device)
    low = low.scatter_reduce(0, index, values, reduce="amin")  # [G]
    return (high != low)[index]
