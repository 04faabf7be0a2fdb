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

    def hash(self) -> str:
        blob = json.dumps(dataclasses.asdict(self), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


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
