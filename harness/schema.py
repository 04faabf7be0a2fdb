"""The harness's one typed config schema: a dataclass per config group, registered in Hydra's ConfigStore. YAML
files under `harness/conf/` only set values; Hydra rejects a key that is not a field here.

`algo`, `saar` and `sandbox` mirror `cleaner.recipe.AlgoConfig`, `cleaner.saar.SaarConfig` and
`cleaner.sandbox.SandboxConfig` field for field (those are frozen, and Hydra cannot override a frozen dataclass), so
their fields and defaults are declared and documented once, in `cleaner`. The other groups are the harness's own.
`train_config` turns a composed config into the `cleaner` dataclasses the lab trainer takes; their
`__post_init__` checks are the value checks, so a bad value fails with the same message from Python, from YAML and
from the command line.

Paper values are quoted from its Table 5 (`harness/paper_results.yaml`, key `hyperparameters`). Nothing here
imports a tensor library: the entry points read this schema before they parse their arguments.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from cleaner.lab.config import SFT_RECIPES, TrainConfig
from cleaner.recipe import CLUSTER_ONLY, AlgoConfig
from cleaner.saar import SaarConfig
from cleaner.sandbox.config import SandboxConfig


class ConfigError(ValueError):
    """A config the harness refuses, with a message that names the key."""


def mutable_mirror(cls: type, name: str, extra: tuple[tuple[str, type, Any], ...] = ()) -> type:
    """A non-frozen dataclass with the fields, types and defaults of the frozen dataclass `cls` (a tuple field
    becomes a list, which is what YAML and OmegaConf hold), then the harness's own `extra` (name, type, default)."""
    hints = typing.get_type_hints(cls)
    fields: list[tuple[str, Any, Any]] = []
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        if typing.get_origin(kind) is tuple:
            kind, default = list[typing.get_args(kind)[0]], field(default_factory=lambda d=f.default: list(d))
        else:
            default = field(default=f.default)
        fields.append((f.name, kind, default))
    mirror = dataclasses.make_dataclass(name, [*fields, *((n, k, field(default=d)) for n, k, d in extra)])
    mirror.__module__ = __name__  # importable by name, so a pickled config (a submitit job's) can be loaded
    return mirror


AlgoSchema = mutable_mirror(AlgoConfig, "AlgoSchema", (("name", str, "lab"),))  # name: the recipe's, for tables
SaarSchema = mutable_mirror(SaarConfig, "SaarSchema")
SandboxSchema = mutable_mirror(SandboxConfig, "SandboxSchema")


@dataclass
class ModelSchema:
    name: str = "lab"  # the preset's name, for tables
    # initial checkpoint folder; ${lab_sft:<task set>}: the lab's SFT checkpoint of that task set (cached by hash;
    # ${lab_sft:}: of the set "lab")
    path: str = "${lab_sft:}"
    chat_format: str = "hermes"  # tool-call format, a key of cleaner.chat.FORMATS (Qwen: hermes <tool_call>)
    dtype: str = "float32"  # actor and rollout precision ("fp16 for actor and rollout"; the lab runs float32)
    # cluster=verl: the actor's attention kernel (transformers' attn_implementation; verl's default is
    # flash_attention_2, which needs the flash-attn package on the GPU nodes; the lab's model uses sdpa)
    attn_implementation: str = "sdpa"


@dataclass
class DataSchema:
    name: str = "lab"  # "lab": the procedural lab tasks (no files); other names read `train_path` / `eval_paths`
    # data=lab: which of the lab's task sets (cleaner.lab.tasks.TASK_SETS): "lab", the regression set whose SFT start
    # is near the ceiling, or "regime", the paper's regime (docs/lab.md); model=lab starts from its SFT checkpoint
    task_set: str = "lab"
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
    # What one run's job asks of a SLURM node (launcher=slurm); resources, not part of the run's name. The lab's
    # defaults: a 3.8 M-parameter model trains on 2 cores in minutes (a 40-step comparison run, about 15 minutes).
    cpus_per_task: int = 2  # CPUs of the job
    mem_gb: int = 8  # memory of the job, GB
    timeout_min: int = 180  # time limit of the job, minutes


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
    # seconds a Ray placement group of verl's may wait (PENDING) before the harness ends verl with what it asks
    # and what Ray has free (on a Ray cluster at RAY_ADDRESS; verl itself waits forever)
    placement_timeout_s: float = 600


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


# keys that do not change a run's results (dotted keys inside a group): left out of its hash (`harness.records`)
NOT_HASHED = ("runs_root", "strict", "quiet", "loggers", "search", "verl", "dry_run", "test_time_saar",
              "latency_repeats", "engine.urls", "cluster.cpus_per_task", "cluster.mem_gb", "cluster.timeout_min")

GROUPS: dict[str, type] = {"model": ModelSchema, "algo": AlgoSchema, "saar": SaarSchema, "data": DataSchema,
                           "engine": EngineSchema, "sandbox": SandboxSchema, "cluster": ClusterSchema}


def lab_sft_path(task_set: str = "lab") -> str:
    """Where the lab's SFT checkpoint of a task set's recipe (`cleaner.lab.config.SFT_RECIPES`) lives (trained on
    first use), relative to the repo."""
    if task_set not in SFT_RECIPES:
        raise ConfigError(f"${{lab_sft:{task_set}}}: unknown lab task set; valid: {', '.join(SFT_RECIPES)}")
    return f"results/lab/sft/{SFT_RECIPES[task_set].hash()}"


def lab_sft_recipe(path: str) -> Any:
    """The SFT recipe whose checkpoint folder is `path` (as `lab_sft_path` gives it), or None."""
    return next((recipe for name, recipe in SFT_RECIPES.items() if lab_sft_path(name) == path), None)


def register() -> None:
    """Register the schema as `run` (the first entry of every primary config's defaults), the `${lab_sft:<task
    set>}` resolver, which resolves to `lab_sft_path(<task set>)`, so a run's recorded config names the exact SFT
    checkpoint,
    `${pid:}`, this process's id (in Hydra's folder names: two sweeps started in the same second get two), and
    `${nonzero:x}`, x or null (a SLURM job without GPUs asks for none: `--gpus-per-node=0` fails where GPUs are not
    a configured resource)."""
    ConfigStore.instance().store(name="run", node=RunSchema)
    OmegaConf.register_new_resolver("lab_sft", lab_sft_path, replace=True)
    OmegaConf.register_new_resolver("nonzero", lambda x: x or None, replace=True)
    OmegaConf.register_new_resolver("pid", os.getpid, replace=True, use_cache=True)


register()  # at import: every process that composes or resolves a run config (entry point, submitit job) has both


def _built(make: Any, **kwargs: Any) -> Any:
    """`make(**kwargs)`, with cleaner's own value checks (whose messages name the key) raised as ConfigError."""
    try:
        return make(**kwargs)
    except (ValueError, KeyError) as e:
        raise ConfigError(str(e.args[0]) if e.args else str(e)) from e  # a KeyError's str() adds quotes


def validate(cfg: DictConfig) -> None:
    """Check every value of a composed run config, whatever its cluster; raises ConfigError naming the key."""
    from cleaner.data import DATASETS
    from cleaner.lab.tasks import TASK_SETS
    from cleaner.tracking import BACKENDS

    if cfg.latency_repeats < 1:
        raise ConfigError(f"latency_repeats must be >= 1, got {cfg.latency_repeats}")
    if cfg.data.task_set not in TASK_SETS:
        raise ConfigError(f"data.task_set={cfg.data.task_set!r}; valid: {', '.join(TASK_SETS)}")
    for key, allowed in (("engine.kind", ("transformers", "sglang")), ("cluster.kind", ("lab", "verl", "verl_cpu")),
                         ("model.dtype", ("float32", "bfloat16", "float16"))):
        if OmegaConf.select(cfg, key) not in allowed:
            raise ConfigError(f"{key}={OmegaConf.select(cfg, key)!r}; valid: {', '.join(allowed)}")
    c, v = cfg.cluster, cfg.verl
    if not (min(c.nodes, c.cpus_per_task, c.mem_gb, c.timeout_min) >= 1 and c.gpus_per_node >= 0):
        raise ConfigError(f"cluster.nodes, cluster.cpus_per_task, cluster.mem_gb, cluster.timeout_min must be >= 1 "
                          f"and cluster.gpus_per_node >= 0; got {c.nodes}, {c.cpus_per_task}, {c.mem_gb}, "
                          f"{c.timeout_min}, {c.gpus_per_node}")
    if not (min(v.rollout_tp, v.save_every, v.agent_workers, v.max_sandbox_workers) >= 1
            and v.keep_checkpoints >= 0 and 0 < v.gpu_memory_utilization <= 1 and v.placement_timeout_s > 0):
        raise ConfigError(f"verl.rollout_tp, verl.save_every, verl.agent_workers, verl.max_sandbox_workers must be "
                          f">= 1, verl.keep_checkpoints >= 0, verl.gpu_memory_utilization in (0, 1], "
                          f"verl.placement_timeout_s > 0; got {v.rollout_tp}, {v.save_every}, {v.agent_workers}, "
                          f"{v.max_sandbox_workers}, {v.keep_checkpoints}, {v.gpu_memory_utilization}, "
                          f"{v.placement_timeout_s}")
    unknown = sorted(set(cfg.loggers) - set(BACKENDS))
    if unknown:
        raise ConfigError(f"loggers: unknown {', '.join(unknown)}; valid: {', '.join(sorted(BACKENDS))}")
    for name, samples in cfg.data.eval_samples.items():  # a benchmark without a path here is unused, not wrong
        if name not in DATASETS or not (isinstance(samples, int) and samples >= 1):
            raise ConfigError(f"data.eval_samples.{name}={samples}: must be >= 1 and name a benchmark "
                              f"({', '.join(DATASETS)})")
    sandbox_config(cfg)  # the library's own checks: SandboxConfig, then AlgoConfig, SaarConfig and the chat format
    rollout_config(cfg)


def sandbox_config(cfg: DictConfig) -> SandboxConfig:
    return _built(SandboxConfig, **OmegaConf.to_container(cfg.sandbox))


def algo_config(cfg: DictConfig) -> AlgoConfig:
    algo = OmegaConf.to_container(cfg.algo)
    algo.pop("name")
    return _built(AlgoConfig, **algo)


def saar_config(cfg: DictConfig) -> SaarConfig:
    return _built(SaarConfig, **OmegaConf.to_container(cfg.saar))


def rollout_config(cfg: DictConfig) -> Any:
    """The rollout's `cleaner.rollout.episode.RolloutConfig`: the algo group's limits, SAAR, the chat format."""
    return _built(algo_config(cfg).rollout_config, saar=saar_config(cfg), chat_format=cfg.model.chat_format)


def train_config(cfg: DictConfig) -> TrainConfig:
    """The lab trainer's `TrainConfig`: the algo, saar and sandbox groups as they are, the chat format and the seed."""
    return _built(TrainConfig, algo=algo_config(cfg), saar=saar_config(cfg), sandbox=sandbox_config(cfg),
                  chat_format=cfg.model.chat_format, seed=cfg.seed)


def lab_train_config(cfg: DictConfig) -> TrainConfig:
    """The lab trainer's config for a composed run config; raises ConfigError naming a key the lab cannot honour."""
    validate(cfg)
    for key, lab_value in (("cluster.kind", "lab"), ("engine.kind", "transformers"), ("model.dtype", "float32"),
                           ("data.name", "lab")):
        if OmegaConf.select(cfg, key) != lab_value:
            raise ConfigError(f"{key}={OmegaConf.select(cfg, key)!r}: the lab trainer (cluster=lab) needs "
                              f"{key}={lab_value}")
    for key in CLUSTER_ONLY:
        if cfg.algo[key] != getattr(AlgoConfig, key):
            raise ConfigError(f"algo.{key}={cfg.algo[key]!r} is read by cluster=verl only; the lab trainer "
                              f"(cluster=lab) would ignore it")
    return train_config(cfg)


def check_paths(cfg: DictConfig) -> None:
    """Data files named by the config exist (the lab needs none)."""
    from cleaner.data import DataError, resolve_path

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
