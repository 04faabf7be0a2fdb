"""RL algorithms as pure tensor functions: group advantages, policy losses, loss aggregation, DAPO helpers.

Each ablation axis is a registry (a dict filled by a decorator; an unknown key raises ValueError listing the
valid ones): `ADVANTAGES`, `POLICY_LOSSES`, `AGGREGATIONS`. Defaults are the paper's recipe: GRPO advantages,
PPO clip 0.2/0.28 with dual clip 10, token-mean aggregation, no KL; rewards +1/-1 with DAPO's overlong penalty.
The lab's single-process trainer over them is `cleaner.lab.trainer`; verl's is the cluster's.
"""

from cleaner.rl.advantages import ADVANTAGES, AdvantageConfig, compute_advantages, grpo, rloo
from cleaner.rl.aggregation import AGGREGATIONS, aggregate
from cleaner.rl.dapo import groups_with_signal, outcome_reward, overlong_penalty, shaped_rewards
from cleaner.rl.groups import GroupIds, group_index
from cleaner.rl.losses import POLICY_LOSSES, PolicyLossConfig, policy_loss, ppo_clip

__all__ = [
    "ADVANTAGES",
    "AGGREGATIONS",
    "POLICY_LOSSES",
    "AdvantageConfig",
    "GroupIds",
    "PolicyLossConfig",
    "aggregate",
    "compute_advantages",
    "group_index",
    "groups_with_signal",
    "grpo",
    "outcome_reward",
    "overlong_penalty",
    "policy_loss",
    "ppo_clip",
    "rloo",
    "shaped_rewards",
]
