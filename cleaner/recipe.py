"""The RL recipe, `AlgoConfig`: every knob of one GRPO/DAPO run with tools, declared once: the algorithm
(`cleaner.rl`'s estimators, losses and aggregations by name), the rollout's limits (`cleaner.rollout`), the held-out
evaluation.

The lab trainer (`cleaner.lab.trainer`) runs it as it is; the harness's `algo` config group mirrors it field for
field (`harness.schema`), and `harness.verl` translates the same fields into verl's keys. Its defaults are the
lab's (a 3.8 M-parameter model on two CPU cores); a paper value is quoted where the lab keeps it, and the paper's
presets (`harness/conf/algo/qwen3_4b.yaml`, ...) set the rest. The names are verl's and the paper's
(`ppo_mini_batch_size`, `adv_estimator`, `clip_ratio_high`), so a preset reads like the authors' scripts.

This module imports no tensor library: the harness reads the schema from it before parsing a command line. The
estimator and loss names are checked against their registries when a config is built.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cleaner.rollout.episode import RolloutConfig
from cleaner.saar import SaarConfig

SPLITS = ("test", "val")  # held-out splits of the lab's tasks (`cleaner.lab.tasks.SPLITS`); "train" is trained on
ROLLOUT_IS = ("", "token", "sequence")
CLUSTER_ONLY = ("max_prompt_tokens", "max_eval_prompt_tokens", "rollout_is")  # read by cluster=verl alone


@dataclass(frozen=True)
class AlgoConfig:
    """One RL run's recipe. Paper values are from its Table 5 (`harness/paper_results.yaml`, `hyperparameters`)."""

    steps: int = 10  # RL steps (the paper reports its results at 250 steps for 4B); 0: evaluate only
    prompts_per_step: int = 8  # prompts per RL step ("train_batch_size: 128")
    group_size: int = 8  # rollouts per prompt ("group_size: 16")
    # prompts per optimizer update ("ppo_mini_batch_size: 32"; 128 / 32 = 4 updates per step)
    ppo_mini_batch_size: int = 4
    # peak learning rate ("2e-6" for 4B, "1e-6" for 7B). The lab's preset sets the value its searches chose
    # (harness/conf/algo/lab.yaml); this default is the pilot's, which a 3.8 M model from scratch needs (5e-5 moved
    # nothing in 15 steps)
    lr: float = 1e-4
    lr_warmup_steps: int = 0  # linear warm-up to `lr` over these steps, then constant ("lr_warmup_steps: 20")
    max_grad_norm: float = 1.0  # gradient clipping by global norm (verl's default)
    adv_estimator: str = "grpo"  # a key of cleaner.rl.advantages.ADVANTAGES ("adv_estimator: grpo")
    norm_adv_by_std: bool = True  # GRPO divides by the group std; False gives Dr. GRPO's r - mean
    policy_loss: str = "ppo_clip"  # a key of cleaner.rl.losses.POLICY_LOSSES
    clip_ratio_low: float = 0.2  # ratio floor 1 - clip_ratio_low ("clip_ratio_low: 0.20")
    clip_ratio_high: float = 0.28  # ratio ceiling, DAPO clip-higher ("clip_ratio_high: 0.28")
    clip_ratio_c: float = 10.0  # dual clip ("clip_ratio_c: 10.0")
    loss_agg_mode: str = "token-mean"  # a key of cleaner.rl.aggregation.AGGREGATIONS ("token-mean")
    # DAPO's soft overlong punishment: the last this many tokens of the response budget ("overlong_buffer.len: 4096"
    # of 20480); 0: off
    overlong_buffer_tokens: int = 64
    overlong_penalty_factor: float = 1.0  # ("overlong_buffer.penalty_factor: 1.0")
    dynamic_sampling: bool = False  # DAPO: train only on groups whose rewards differ (the lab does not refill)
    temperature: float = 1.0  # training and held-out sampling temperature ("temperature: 1.0")
    top_p: float = 1.0  # training rollouts ("top_p: 1.0")
    eval_top_p: float = 1.0  # held-out rollouts ("eval top_p: 0.6"; the lab keeps 1.0, as its pilot)
    max_turns: int = 4  # assistant turns per trajectory ("max_turns: 16")
    max_response_tokens: int = 320  # tokens after the prompt ("max_response_length: 20480")
    max_prompt_tokens: int = 256  # cluster=verl: longer training prompts are left out ("max_prompt_length: 2560")
    max_eval_prompt_tokens: int = 256  # cluster=verl: the same for validation ("eval max_prompt_length: 4096")
    # cluster=verl: verl's rollout importance-sampling correction level ("token" | "sequence"; "" off, the paper's
    # setting); on, the spliced spans' rollout log-probs are re-scored under the purified context first
    rollout_is: str = ""
    max_tool_response_chars: int = 256  # tool output shown to the model, cut in the middle ("truncated to 256 chars")
    retries_count_against_limits: bool = False  # SAAR's retries count as turns and budget (the authors': no)
    # re-runs of a tool call after an infrastructure failure (the sandbox's, not the code's), where a re-run gets the
    # same state (`cleaner.rollout.tools`); one that persists ends the trajectory, which is then kept out of the
    # loss. Not in the paper (the authors show the model any sandbox output and train on it); 0: no re-run
    infra_retries: int = 2
    eval_every: int = 0  # steps between held-out evaluations; 0: only after the last step
    eval_problems: int = 200  # held-out problems per evaluation
    eval_samples: int = 1  # samples per held-out problem (Pass@1 is their mean)
    eval_split: str = "test"  # the lab's held-out problems: "test", or "val" to tune on (never the test split)

    def __post_init__(self) -> None:
        """Value checks, named as the run config names them (`algo.*`)."""
        if self.steps < 0:
            raise ValueError(f"algo.steps must be >= 0 (0: evaluate model.path, no training), got {self.steps}")
        for key in ("prompts_per_step", "group_size", "eval_problems", "eval_samples", "max_turns",
                    "max_response_tokens", "max_prompt_tokens", "max_eval_prompt_tokens", "max_tool_response_chars"):
            if getattr(self, key) < 1:
                raise ValueError(f"algo.{key} must be >= 1, got {getattr(self, key)}")
        if not (self.ppo_mini_batch_size >= 1 and self.prompts_per_step % self.ppo_mini_batch_size == 0):
            raise ValueError(f"algo.ppo_mini_batch_size={self.ppo_mini_batch_size} must be >= 1 and divide "
                             f"algo.prompts_per_step={self.prompts_per_step}")
        if not (self.lr > 0 and self.lr_warmup_steps >= 0 and self.eval_every >= 0 and self.max_grad_norm > 0):
            raise ValueError(f"algo.lr and algo.max_grad_norm must be > 0 and algo.lr_warmup_steps, algo.eval_every "
                             f">= 0; got {self.lr}, {self.max_grad_norm}, {self.lr_warmup_steps}, {self.eval_every}")
        if not (self.temperature > 0 and 0 < self.top_p <= 1 and 0 < self.eval_top_p <= 1):
            raise ValueError(f"algo.temperature must be > 0 and algo.top_p, algo.eval_top_p in (0, 1]; got "
                             f"{self.temperature}, {self.top_p}, {self.eval_top_p}")
        if self.infra_retries < 0:
            raise ValueError(f"algo.infra_retries must be >= 0, got {self.infra_retries}")
        if not (self.overlong_buffer_tokens >= 0 and self.overlong_penalty_factor >= 0):
            raise ValueError(f"algo.overlong_buffer_tokens and algo.overlong_penalty_factor must be >= 0, got "
                             f"{self.overlong_buffer_tokens}, {self.overlong_penalty_factor}")
        for key, valid in (("eval_split", SPLITS), ("rollout_is", ROLLOUT_IS)):
            if getattr(self, key) not in valid:
                raise ValueError(f"algo.{key}={getattr(self, key)!r}; valid: {', '.join(map(repr, valid))}")
        self.advantage_config()
        self.loss_config()

    @property
    def mini_batches(self) -> int:
        """Optimizer updates per RL step."""
        return self.prompts_per_step // self.ppo_mini_batch_size

    def advantage_config(self) -> Any:
        """`cleaner.rl.advantages.AdvantageConfig` of this recipe (which checks the estimator's name)."""
        from cleaner.rl.advantages import AdvantageConfig

        return AdvantageConfig(estimator=self.adv_estimator, norm_by_std=self.norm_adv_by_std)

    def loss_config(self) -> Any:
        """`cleaner.rl.losses.PolicyLossConfig` of this recipe (which checks the loss and aggregation names)."""
        from cleaner.rl.losses import PolicyLossConfig

        return PolicyLossConfig(policy_loss=self.policy_loss, clip_ratio_low=self.clip_ratio_low,
                                clip_ratio_high=self.clip_ratio_high, clip_ratio_c=self.clip_ratio_c,
                                loss_agg_mode=self.loss_agg_mode)

    def rollout_config(self, saar: SaarConfig, chat_format: str) -> RolloutConfig:
        """The rollout's limits in this recipe, with SAAR `saar` and the model's `chat_format`."""
        return RolloutConfig(max_turns=self.max_turns, max_response_tokens=self.max_response_tokens,
                             max_tool_response_chars=self.max_tool_response_chars,
                             retries_count_against_limits=self.retries_count_against_limits,
                             infra_retries=self.infra_retries, format=chat_format, saar=saar)
