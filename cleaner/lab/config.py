"""The lab's configs, apart from the trainers and without a tensor library, so that the harness can read and check
them before it starts any work: `SftConfig`, the cold-start SFT recipe (`cleaner.lab.sft`), whose hash names its
checkpoint folder (`results/lab/sft/<hash>/`, the `${lab_sft:}` resolver), and `TrainConfig`, one RL run of the
lab trainer (`cleaner.lab.trainer`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field

from cleaner.recipe import AlgoConfig
from cleaner.rollout.episode import RolloutConfig
from cleaner.saar import SaarConfig
from cleaner.sandbox.config import SandboxConfig


@dataclass(frozen=True)
class SftConfig:
    num_examples: int = 20000  # trajectories in the SFT set (distinct training problems)
    bug_rate: float = 0.3  # share of trajectories whose first call fails and is fixed
    steps: int = 1000  # optimizer steps; held-out digit loss is ~0.006 by 1000 steps at lr 7.5e-4 (docs/lab.md)
    batch_size: int = 32
    lr: float = 7.5e-4  # peak learning rate, after linear warm-up, then cosine decay to 10% (1.5e-3 is too high here)
    warmup_steps: int = 50
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 768
    max_tool_response_chars: int = 256  # as in the rollout (paper: 256)
    seed: int = 0
    data_version: int = 1  # bump when the SFT data or the tokenizer's corpus changes, so the cache is not reused
    # -- added after the first committed checkpoint: left out of the hash at their defaults (ADDED_FIELDS) --
    task_set: str = "lab"  # the problems and their SFT trajectories: a key of cleaner.lab.tasks.TASK_SETS
    # task set "regime" only (cleaner.lab.sft_data.build_regime_records); "lab" has just `bug_rate`:
    second_failure_rate: float = 0.0  # share of failed first calls whose next call fails again, with another bug
    give_up_rate: float = 0.0  # share of trajectories with a failed call that answer a guess instead of a fix
    near_miss_rate: float = 0.0  # share of trajectories whose program is a near miss (runs, answers wrong)

    ADDED_FIELDS = ("task_set", "second_failure_rate", "give_up_rate", "near_miss_rate")

    def __post_init__(self) -> None:
        for key in ("bug_rate", "second_failure_rate", "give_up_rate", "near_miss_rate"):
            if not 0 <= getattr(self, key) <= 1:
                raise ValueError(f"SftConfig.{key} must be in [0, 1], got {getattr(self, key)}")
        if self.task_set == "lab" and (self.second_failure_rate or self.give_up_rate or self.near_miss_rate):
            raise ValueError("SftConfig: second_failure_rate, give_up_rate and near_miss_rate are for task_set "
                             "'regime'; the 'lab' set's SFT data has only bug_rate")

    def hash(self) -> str:
        """12 hex digits naming the checkpoint folder. A field of ADDED_FIELDS at its default is left out, so a
        config that sets none of them keeps the name it had before they existed (results/lab/sft/6e159435701d)."""
        fields = {k: v for k, v in dataclasses.asdict(self).items()
                  if not (k in self.ADDED_FIELDS and v == getattr(SftConfig, k))}
        blob = json.dumps(fields, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


# The SFT recipe of each task set: its checkpoint is results/lab/sft/<hash>/ (`${lab_sft:<task set>}`).
# "regime": rates chosen to put the SFT start in the paper's regime (docs/lab.md, results/lab/regime_sft_eval.json).
SFT_RECIPES = {
    "lab": SftConfig(),
    "regime": SftConfig(task_set="regime", num_examples=20000, steps=1000, bug_rate=0.6, second_failure_rate=0.3,
                        give_up_rate=0.2, near_miss_rate=0.25),
}


@dataclass(frozen=True)
class TrainConfig:
    """One RL run of the lab: the recipe, SAAR (on: CLEANER; off: the baseline), the tool's sandbox, the chat format
    and the run seed. Baseline and CLEANER differ only in `saar`."""

    algo: AlgoConfig = field(default_factory=AlgoConfig)
    saar: SaarConfig = field(default_factory=SaarConfig)
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)  # the tool's limits ("4 s per execution")
    chat_format: str = "hermes"  # tool-call format, a key of cleaner.chat.FORMATS (the lab model speaks hermes)
    seed: int = 0  # problems drawn per step, sampling, SAAR's p draws, mini-batch order

    @property
    def rollout(self) -> RolloutConfig:
        return self.algo.rollout_config(self.saar, self.chat_format)
