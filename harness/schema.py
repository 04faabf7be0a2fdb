"""The harness's one typed config schema: a dataclass per config group, registered in Hydra's ConfigStore. YAML
files under `harness/conf/` only set values; Hydra rejects a key that is not a field here.

`saar` and `sandbox` mirror `cleaner.saar.SaarConfig` and `cleaner.sandbox.SandboxConfig` field for field (those
are frozen, and Hydra cannot override a frozen dataclass), so their fields are documented once, in `cleaner`. The
other groups are the harness's own. `lab_train_config` turns a composed config into the `cleaner` dataclasses the
lab trainer takes; their `__post_init__` checks are the value checks, so a bad value fails with the same message
from Python, from YAML and from the command line.

Paper values are quoted from its Table 5 (`shared/reference/paper_results.yaml`, key `hyperparameters`).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from cleaner.data import DATASETS, DataError, resolve_path
from cleaner.tracking import BACKENDS
from cleaner.lab.sft import SftConfig
from cleaner.rl.advantages import AdvantageConfig
from cleaner.rl.losses import PolicyLossConfig
from cleaner.lab.trainer import TrainConfig
from cleaner.rollout.episode import RolloutConfig
from cleaner.saar import SaarConfig
from cleaner.sandbox import SandboxConfig


class ConfigError(ValueError):
    """A config the harness refuses, with a message that names the key."""


def mutable_mirror(cls: type, name: str) -> type:
    """A non-frozen dataclass with the fields, types and defaults of the frozen dataclass `cls` (a tuple field
    becomes a list, which is what YAML and OmegaConf hold)."""
    hints = typing.get_type_hints(cls)
    fields = []
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        if typing.get_origin(kind) is tuple:
            kind, default = list[typing.get_args(kind)[0]], field(default_factory=lambda d=f.default: list(d))
        else:
            default = field(default=f.default)
        fields.append((f.name, kind, default))
    mirror = dataclasses.make_dataclass(name, fields)
    mirror.__module__ = __name__  # importable by name, so a pickled config (a submitit job's) can be loaded
    return mirror


SaarSchema = mutable_mirror(SaarConfig, "SaarSchema")
SandboxSchema = mutable_mirror(SandboxConfig, "SandboxSchema")


@dataclass
class ModelSchema:
    name: str = "lab"  # the preset's name, for tables
    path: str = "${lab_sft:}"  # initial checkpoint folder; ${lab_sft:}: the lab's SFT checkpoint (cached by hash)
    chat_format: str = "hermes"  # tool-call format, a key of cleaner.chat.FORMATS (Qwen: hermes <tool_call>)
    dtype: str = "float32"  # actor and rollout precision ("fp16 for actor and rollout"; the lab runs float32)
    # cluster=verl: the actor's attention kernel (transformers' attn_implementation; verl's default is
    # flash_attention_2, which needs the flash-attn package on the GPU nodes; the lab's model uses sdpa)
    attn_implementation: str = "sdpa"


LAB = TrainConfig()  # the lab trainer's defaults: the algo group's defaults are read from it, never copied


@dataclass
class AlgoSchema:
    name: str = "lab"  # the recipe's name, for tables
    steps: int = LAB.steps  # RL steps (the paper reports its results at 250 steps for 4B)
    prompts_per_step: int = LAB.prompts_per_step  # prompts per RL step ("train_batch_size: 128")
    group_size: int = LAB.group_size  # rollouts per prompt ("group_size: 16")
    # prompts per optimizer update ("ppo_mini_batch_size: 32"; 128 / 32 = 4 updates)
    ppo_mini_batch_size: int = LAB.prompts_per_step // LAB.mini_batches
    lr: float = LAB.lr  # peak learning rate ("2e-6" for 4B, "1e-6" for 7B; the lab's 3.8 M model needs far more)
    lr_warmup_steps: int = LAB.lr_warmup_steps  # linear warm-up, then constant ("lr_warmup_steps: 20")
    max_grad_norm: float = LAB.max_grad_norm  # gradient clipping by global norm (verl's default, 1.0)
    adv_estimator: str = LAB.advantage.estimator  # a key of cleaner.rl.advantages.ADVANTAGES ("adv_estimator: grpo")
    norm_adv_by_std: bool = LAB.advantage.norm_by_std  # GRPO divides by the group std; False gives Dr. GRPO
    policy_loss: str = LAB.loss.policy_loss  # a key of cleaner.rl.losses.POLICY_LOSSES
    clip_ratio_low: float = LAB.loss.clip_ratio_low  # ("clip_ratio_low: 0.20")
    clip_ratio_high: float = LAB.loss.clip_ratio_high  # DAPO clip-higher ("clip_ratio_high: 0.28")
    clip_ratio_c: float = LAB.loss.clip_ratio_c  # dual clip ("clip_ratio_c: 10.0")
    loss_agg_mode: str = LAB.loss.loss_agg_mode  # a key of cleaner.rl.aggregation.AGGREGATIONS ("token-mean")
    # DAPO soft overlong punishment window ("overlong_buffer.len: 4096")
    overlong_buffer_tokens: int = LAB.overlong_buffer_tokens
    overlong_penalty_factor: float = LAB.overlong_penalty_factor  # ("overlong_buffer.penalty_factor: 1.0")
    dynamic_sampling: bool = LAB.dynamic_sampling  # DAPO: train only on groups whose rewards differ
    temperature: float = LAB.temperature  # training and held-out sampling temperature ("temperature: 1.0")
    top_p: float = LAB.top_p  # training rollouts ("top_p: 1.0")
    eval_top_p: float = LAB.eval_top_p  # held-out rollouts ("eval top_p: 0.6"; the lab keeps 1.0)
    max_turns: int = LAB.rollout.max_turns  # assistant turns per trajectory ("max_turns: 16")
    max_response_tokens: int = LAB.rollout.max_response_tokens  # tokens after the prompt ("max_response_length: 20480")
    max_prompt_tokens: int = 256  # cluster=verl: longer training prompts are left out ("max_prompt_length: 2560")
    max_eval_prompt_tokens: int = 256  # cluster=verl: the same for validation ("eval max_prompt_length: 4096")
    # cluster=verl: verl's rollout importance-sampling correction level ("token" | "sequence"; "" off, the
    # paper's setting); on, the spliced spans' rollout log-probs are re-scored under the purified context first
    rollout_is: str = ""
    # tool output shown to the model, middle-cut ("truncated to 256 chars")
    max_tool_response_chars: int = LAB.rollout.max_tool_response_chars
    # SAAR retries count as turns and budget (the authors': no)
    retries_count_against_limits: bool = LAB.rollout.retries_count_against_limits
    eval_every: int = LAB.eval_every  # steps between held-out evaluations; 0: only after the last step
    eval_problems: int = LAB.eval_problems  # held-out problems per evaluation
    eval_samples: int = LAB.eval_samples  # samples per held-out problem (pass@1 is their mean)
    eval_split: str = LAB.eval_split  # the lab's held-out problems: "test", or "val" to tune on (never the test split)


@dataclass
class DataSchema:
    name: str = "lab"  # "lab": the procedural lab tasks (no files); other names read `train_path` / `eval_paths`
    train_path: str = ""  # training set file (parquet or jsonl); unused by "lab"
    eval_paths: dict[str, str] = field(default_factory=dict)  # benchmark name -> file; unused by "lab"
    # cluster=verl: benchmark name -> samples per problem, instead of algo.eval_samples (the authors sample
    # LiveCodeBench 10 times and the others 16)
    eval_samples: dict[str, int] = field(default_factory=dict)


@dataclass
class EngineSchema:
    kind: str = "transformers"  # "transformers" (in-process, KV cache) | "sglang" (HTTP servers)
    # sglang: base URLs of servers already serving model.path, for harness.eval (cluster=verl starts its own);
    # a trajectory sticks to one. Not part of the run's name.
    urls: list[str] = field(default_factory=list)


@dataclass
class ClusterSchema:
    # "lab": the single-process trainer of cleaner.lab.trainer, on CPU | "verl": verl 0.9.1 with SGLang on GPUs |
    # "verl_cpu": the same verl translation on this machine's CPU (a transformers rollout server, logical GPUs)
    kind: str = "lab"
    nodes: int = 1  # machines per run
    gpus_per_node: int = 0  # accelerators per machine (verl_cpu: logical GPUs, one trainer process each)


@dataclass
class VerlSchema:
    """cluster=verl's resource settings: they change speed and memory, not results, so they stay out of the run's
    hash (the layout, cluster.nodes x cluster.gpus_per_node, is in it: verl's checkpoints are sharded by it)."""

    rollout_tp: int = 1  # GPUs per SGLang rollout replica, tensor parallel (the authors' scripts: 1)
    gpu_memory_utilization: float = 0.8  # share of GPU memory SGLang may hold (the authors' scripts: 0.80)
    offload: bool = True  # FSDP parameter and optimizer offload to CPU (the authors' scripts: on, for 4 GPUs)
    save_every: int = 10  # RL steps between checkpoints, so a resumed run redoes at most this many (the authors': 10)
    keep_checkpoints: int = 3  # newest checkpoints kept (about 48 GB each for 4B with optimizer state); 0 keeps all
    agent_workers: int = 8  # verl's agent-loop workers (rollout.agent.num_workers); each runs its own sandbox pool
    # sandbox cells at a time per agent-loop worker when sandbox.workers is unset: the job's CPUs
    # (SLURM_CPUS_PER_TASK, else all) shared by the agent-loop workers, at most this many
    max_sandbox_workers: int = 16


@dataclass
class SearchSchema:
    study: str = "search"  # the study's name; its storage is <runs_root>/optuna/<study>.db (SQLite)
    trials: int = 8  # trials to complete, counting those finished before a resume
    parallel: int = 2  # trials running at the same time
    metric: str = "eval.accuracy"  # a dotted key of the run's summary.json
    direction: str = "maximize"  # "maximize" | "minimize"
    sampler_seed: int = 0  # seeds Optuna's TPE sampler, with the number of trials already in the study
    # dotted config key -> {type: float | int, low, high, log (optional)}
    space: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class RunSchema:
    model: ModelSchema = MISSING
    algo: AlgoSchema = MISSING
    saar: SaarSchema = MISSING
    data: DataSchema = MISSING
    engine: EngineSchema = MISSING
    sandbox: SandboxSchema = MISSING
    cluster: ClusterSchema = MISSING
    seed: int = 0  # run seed: problems drawn per step, sampling, SAAR's p draws
    # -- not part of the run's identity (left out of its hash) --
    runs_root: str = "results/runs"  # run records go to <runs_root>/<config hash>/
    strict: bool = False  # refuse to start from a git tree with uncommitted changes (strict reproducibility)
    quiet: bool = False  # no per-step progress lines
    # experiment trackers, besides the run's metrics.jsonl: "tensorboard" | "wandb" (offline); the lab's
    # cleaner.tracking, verl's trainer.logger on the cluster path
    loggers: list[str] = field(default_factory=lambda: ["tensorboard"])
    search: SearchSchema | None = None  # an Optuna search over runs (python -m harness.search); None for one run
    verl: VerlSchema = field(default_factory=VerlSchema)  # cluster=verl: resources (harness/verl.py)
    dry_run: bool = False  # cluster=verl: write the run's verl files and print the verl command; start nothing
    latency_repeats: int = 1  # harness.eval: runs per side, interleaved off, on, off, on, ... (SAAR's latency)
    # cluster=verl: evaluate the finished run's last checkpoint with SAAR on (true) or off (false) at test time
    # (verl val_only, results in <run>/eval_saar_on|off/) instead of training; None: train
    test_time_saar: bool | None = None


NOT_HASHED = ("runs_root", "strict", "quiet", "loggers", "search", "verl", "dry_run", "test_time_saar",
              "latency_repeats")

GROUPS: dict[str, type] = {"model": ModelSchema, "algo": AlgoSchema, "saar": SaarSchema, "data": DataSchema,
                           "engine": EngineSchema, "sandbox": SandboxSchema, "cluster": ClusterSchema}


def lab_sft_path() -> str:
    """Where the lab's SFT checkpoint of the default SftConfig lives (trained on first use), relative to the repo."""
    return f"results/lab/sft/{SftConfig().hash()}"


def register() -> None:
    """Register the schema as `run` (the first entry of every primary config's defaults) and the `${lab_sft:}`
    resolver, which resolves to `lab_sft_path()`, so a run's recorded config names the exact SFT checkpoint."""
    ConfigStore.instance().store(name="run", node=RunSchema)
    OmegaConf.register_new_resolver("lab_sft", lab_sft_path, replace=True)


register()  # at import: every process that composes or resolves a run config (entry point, submitit job) has both


def _built(make: Any, **kwargs: Any) -> Any:
    """`make(**kwargs)`, with cleaner's own value checks (whose messages name the key) raised as ConfigError."""
    try:
        return make(**kwargs)
    except (ValueError, KeyError) as e:
        raise ConfigError(str(e).strip("'\"")) from e


def validate(cfg: DictConfig) -> None:
    """Check every value of a composed run config, whatever its cluster; raises ConfigError naming the key."""
    algo = cfg.algo
    if not (algo.ppo_mini_batch_size >= 1 and algo.prompts_per_step % algo.ppo_mini_batch_size == 0):
        raise ConfigError(f"algo.ppo_mini_batch_size={algo.ppo_mini_batch_size} must be >= 1 and divide "
                          f"algo.prompts_per_step={algo.prompts_per_step}")
    if cfg.latency_repeats < 1:
        raise ConfigError(f"latency_repeats must be >= 1, got {cfg.latency_repeats}")
    for key, allowed in (("engine.kind", ("transformers", "sglang")), ("cluster.kind", ("lab", "verl", "verl_cpu")),
                         ("model.dtype", ("float32", "bfloat16", "float16")), ("algo.eval_split", ("test", "val"))):
        if OmegaConf.select(cfg, key) not in allowed:
            raise ConfigError(f"{key}={OmegaConf.select(cfg, key)!r}; valid: {', '.join(allowed)}")
    v = cfg.verl
    if not (min(cfg.cluster.nodes, v.rollout_tp, v.save_every, v.agent_workers, v.max_sandbox_workers) >= 1
            and v.keep_checkpoints >= 0 and 0 < v.gpu_memory_utilization <= 1):
        raise ConfigError(f"cluster.nodes, verl.rollout_tp, verl.save_every, verl.agent_workers, "
                          f"verl.max_sandbox_workers must be >= 1, verl.keep_checkpoints >= 0, "
                          f"verl.gpu_memory_utilization in (0, 1]; got {cfg.cluster.nodes}, {v.rollout_tp}, "
                          f"{v.save_every}, {v.agent_workers}, {v.max_sandbox_workers}, {v.keep_checkpoints}, "
                          f"{v.gpu_memory_utilization}")
    unknown = sorted(set(cfg.loggers) - set(BACKENDS))
    if unknown:
        raise ConfigError(f"loggers: unknown {', '.join(unknown)}; valid: {', '.join(sorted(BACKENDS))}")
    for name, samples in cfg.data.eval_samples.items():  # a benchmark without a path here is unused, not wrong
        if name not in DATASETS or not (isinstance(samples, int) and samples >= 1):
            raise ConfigError(f"data.eval_samples.{name}={samples}: must be >= 1 and name a benchmark "
                              f"({', '.join(DATASETS)})")
    train_config(cfg)  # the library's own checks: SandboxConfig, SaarConfig, RolloutConfig, ..., TrainConfig


def sandbox_config(cfg: DictConfig) -> SandboxConfig:
    return _built(SandboxConfig, **OmegaConf.to_container(cfg.sandbox))


def lab_parts(cfg: DictConfig) -> tuple[RolloutConfig, AdvantageConfig, PolicyLossConfig]:
    algo = cfg.algo
    saar = _built(SaarConfig, **OmegaConf.to_container(cfg.saar))
    rollout = _built(RolloutConfig, max_turns=algo.max_turns, max_response_tokens=algo.max_response_tokens,
                     max_tool_response_chars=algo.max_tool_response_chars,
                     retries_count_against_limits=algo.retries_count_against_limits, format=cfg.model.chat_format,
                     saar=saar)
    advantage = _built(AdvantageConfig, estimator=algo.adv_estimator, norm_by_std=algo.norm_adv_by_std)
    loss = _built(PolicyLossConfig, policy_loss=algo.policy_loss, clip_ratio_low=algo.clip_ratio_low,
                  clip_ratio_high=algo.clip_ratio_high, clip_ratio_c=algo.clip_ratio_c,
                  loss_agg_mode=algo.loss_agg_mode)
    return rollout, advantage, loss


def lab_train_config(cfg: DictConfig) -> TrainConfig:
    """The lab trainer's config for a composed run config; raises ConfigError naming a key the lab cannot honour."""
    validate(cfg)
    for key, lab_value in (("cluster.kind", "lab"), ("engine.kind", "transformers"), ("model.dtype", "float32"),
                           ("data.name", "lab")):
        if OmegaConf.select(cfg, key) != lab_value:
            raise ConfigError(f"{key}={OmegaConf.select(cfg, key)!r}: the lab trainer (cluster=lab) needs "
                              f"{key}={lab_value}")
    return train_config(cfg)


def train_config(cfg: DictConfig) -> TrainConfig:
    """The algo, saar and sandbox groups as the lab trainer's config (built on every path, for its checks). The
    algo group keeps verl's and the paper's key names (`ppo_mini_batch_size`, `adv_estimator`, ...), which users
    override and presets set, so its keys are mapped here, once, onto the library's nested configs."""
    rollout, advantage, loss = lab_parts(cfg)
    algo = cfg.algo
    return _built(
        TrainConfig, steps=algo.steps, prompts_per_step=algo.prompts_per_step, group_size=algo.group_size, lr=algo.lr,
        lr_warmup_steps=algo.lr_warmup_steps, mini_batches=algo.prompts_per_step // algo.ppo_mini_batch_size,
        max_grad_norm=algo.max_grad_norm, temperature=algo.temperature, top_p=algo.top_p, eval_top_p=algo.eval_top_p,
        rollout=rollout, advantage=advantage, loss=loss, overlong_buffer_tokens=algo.overlong_buffer_tokens,
        overlong_penalty_factor=algo.overlong_penalty_factor, dynamic_sampling=algo.dynamic_sampling,
        sandbox=sandbox_config(cfg), eval_every=algo.eval_every,
        eval_problems=algo.eval_problems, eval_samples=algo.eval_samples, eval_split=algo.eval_split, seed=cfg.seed)


def check_paths(cfg: DictConfig) -> None:
    """Data files named by the config exist (the lab needs none)."""
    if cfg.data.name == "lab":
        return
    if cfg.data.train_path or cfg.algo.steps > 0:
        if not cfg.data.train_path:
            raise ConfigError(f"data.train_path is empty: data={cfg.data.name} needs a file (parquet or jsonl)")
        if not Path(cfg.data.train_path).exists():
            raise ConfigError(f"data.train_path={cfg.data.train_path} does not exist")
    for name, path in cfg.data.eval_paths.items():
        try:  # an empty path: the data set's file under the data root (cleaner.data.resolve_path)
            resolved = resolve_path(name, path or None)
        except (DataError, ValueError) as e:
            raise ConfigError(f"data.eval_paths.{name}: {e}") from e
        if not resolved.exists():
            raise ConfigError(f"data.eval_paths.{name}={resolved} does not exist")
