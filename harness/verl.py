"""cluster=verl: the paper's recipe through verl 0.9.1 (Ray, FSDP2, SGLang rollouts), with our agent loop, reward
function and sandbox plugged in through verl's own extension points (no fork, no patch):

    python -m harness.train preset=qwen3_4b data.train_path=FILE +data.eval_paths.aime24=FILE ... [dry_run=true]
    python -m harness.train preset=qwen3_4b ... test_time_saar=true     (evaluate the finished run, SAAR on)

On the GPU nodes, `slurm/*.sh` start Ray and make these calls. `cluster=verl_cpu` runs the same translation on this
machine's CPU, with the lab's model and tasks and the shims of `cleaner.verl_plugin.cpu` (docs/verl-cpu.md).

`overrides` is the translation: a pure function from a composed run config to verl's Hydra overrides
(`key=value` in Hydra's override grammar; Table 5's values come from the presets). `run` converts the data
(`harness.prepare_data`), writes the files verl reads into the run folder and runs `python -m
verl.trainer.main_ppo` with the overrides, or prints that command (`dry_run=true`). The run folder
`<runs_root>/<config hash>/` holds, besides the harness's record (config.yaml, env.json, summary.json):

    verl/agent_loop.yaml   the list for actor_rollout_ref.rollout.agent.agent_loop_config_path: our loop's name,
                           its class, and the rollout, sandbox and SAAR settings (SAAR's parameters travel here)
    verl/overrides.txt     the overrides, one per line, exactly as passed to verl
    verl/data/             the verl parquet files (harness.prepare_data; reused when the inputs are unchanged)
    verl/checkpoints/      trainer.default_local_dir; trainer.resume_mode=auto resumes from the newest one, so
                           rerunning the same command continues an interrupted run
    verl/metrics.jsonl     verl's file logger (an earlier invocation's file is kept as metrics.<k>.jsonl)
    verl/validation/       generations of the validations during training
    verl/rollouts/<k>/     our record of every trajectory of the k-th invocation (SAAR counters, weights version)
    verl/saar_metrics.jsonl  those records summed per step and split (`saar_by_step`)
    eval_saar_on/, eval_saar_off/   the same for test_time_saar=true/false: verl's val_only from the last checkpoint

Where verl 0.9.1 reads what (each found in its source; a key at the wrong place is silently ignored):
- reward function: `reward.custom_reward_function.{path,name}`. A top-level `custom_reward_function` is moved
  there only by verl's fully-async entry point; `main_ppo` never reads it.
- DAPO's overlong penalty: `reward.reward_manager.name=dapo` reads `reward.reward_kwargs.{overlong_buffer_cfg,
  max_resp_len}`, which verl's YAML lacks (added with `+`); the legacy `reward_model.reward_kwargs` is migrated
  only by the fully-async entry point.
- fp16 actor: the FSDP engine takes its parameter dtype from `fsdp_config.mixed_precision.param_dtype` (a field of
  verl's dataclass that its YAML lacks, added with `+`) and then scales the loss; `fsdp_config.dtype`, which the
  authors' scripts set, is read only by the Megatron engine. The rollout's dtype is `rollout.dtype`.
- gradient clipping: `actor.optim.clip_grad` (the engine does not read `actor.grad_clip`).
- run length: `trainer.total_training_steps`. 250 steps x 128 prompts are 32,000 prompts, 1.07 epochs of the 30K
  set; `trainer.total_epochs` is set to the step count, an upper bound, so the step count decides. (The authors'
  scripts set `total_epochs=1`, which ends after about 235 steps; see PAPER.md fault 9.)
- `actor_rollout_ref.rollout.multi_turn.*` is read by verl's own tool agent loop, not by ours (which takes its
  limits from the agent-loop YAML); the keys mirror the same values, so that loop would apply the same limits.
- the reward function picks its grader by `data_source`; the training set's sources (math_dapo, ...) reach it in
  `reward.custom_reward_function.reward_kwargs.data_sources` (from `harness.prepare_data`), which verl passes to
  the function as a keyword argument.
- validation: before training and after every `algo.eval_every` steps (else after the last one), at the
  evaluation's settings (`val_kwargs`; a benchmark's own sample count, `data.eval_samples`, travels in its rows'
  `__rollout_n__`, read by the V1 trainer). verl has one prompt limit, `data.max_prompt_length`, for training and
  validation: it is the evaluation's (4096), and training prompts over Table 5's 2560 are left out of the training
  file first (`drop_long_prompts`). The benchmarks with SAAR on and off at test time are `test_time_saar`'s job.
  Seeds: `data.seed`, `actor.data_loader_seed` and `rollout.seed` are the run's seed.
- checkpoints: `trainer.max_actor_ckpt_to_keep` = `verl.keep_checkpoints` (3; about 48 GB each for 4B with Adam).
- the metrics file's path travels to verl's trainer actor in Ray's job runtime environment
  (`ray_kwargs.ray_init.runtime_env.env_vars`), since an actor does not inherit the driver's environment.

Rollout importance sampling is off by default (`algo.rollout_is=""`: `algorithm.rollout_correction.rollout_is=null`,
`rollout_rs=null`, `bypass_mode=false`). verl's rollout correction reweights (IS) or rejects (RS) tokens by the ratio of the actor's
recomputed log-probs to the log-probs the engine reported while sampling. For a span SAAR spliced in, the engine's
log-probs were sampled in a context that still held the failed call, while the actor recomputes them on the
purified sequence; their ratio measures the splice's change of context, not the engine/trainer mismatch that the
correction is for, so IS would clip and RS would drop exactly the purified trajectories (the authors' scripts
carry, commented out, a rejection threshold of 1.001 that would reject nearly every spliced trajectory). With
`bypass_mode=false` PPO's ratio uses old log-probs that the actor recomputes on the final, purified sequence:
the paper's recompute step. With `algo.rollout_is=token|sequence` the agent loop first re-scores the spliced spans
under the purified context through the rollout server (`cleaner.verl_plugin.agent_loop.ServerScorer`), so the
ratio measures the engine/trainer mismatch again. Either way verl logs the rollout/actor gap (`rollout_corr/*`,
since `calculate_log_probs=true`).

Departures and limits: prompts are the project's (`cleaner.bench`), not the authors' wording (see
`harness.prepare_data`); the harness checks GPUs, SGLang and the checkpoint before it starts verl, but what
happens on the GPUs is verl's (nothing here has run on a GPU; verl's trainer has run here on the CPU).
"""

from __future__ import annotations

import dataclasses

import contextlib
import importlib.util
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig

from cleaner import verl_plugin
from cleaner.trajectory import write_lines_atomic
from harness import prepare_data, ray_layout, records, schema

VERL_MAIN = "verl.trainer.main_ppo"
AGENT_LOOP_FILE = "agent_loop.yaml"
OVERRIDES_FILE = "overrides.txt"
METRICS_FILE = "metrics.jsonl"
LATEST = "latest_checkpointed_iteration.txt"  # verl's record of its newest checkpoint's step, in the checkpoints
PROJECT = "cleaner"  # trainer.project_name; the experiment is the run's config hash
ADVANTAGES = {"grpo": "grpo", "rloo": "rloo"}  # cleaner's estimator -> verl's algorithm.adv_estimator
POLICY_LOSSES = {"ppo_clip": "vanilla"}  # cleaner's loss -> verl's policy_loss.loss_mode (PPO clip, dual clip)
PARAM_DTYPES = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32"}  # model.dtype -> FSDP mixed precision
LAB_SOURCE = "lab"  # data_source of data=lab's rows
# our per-trajectory records (SAAR counters, weights version): rollouts/<invocation>/, one file per process
ROLLOUTS_DIR = "rollouts"
SAAR_FILE = "saar_metrics.jsonl"  # those records summed per step and split (saar_by_step)
# cluster=verl_cpu: Ray's logical CPUs. verl's TransferQueue, reward and agent-loop actors each reserve one for
# their placement, whatever the machine has; too few and they wait for each other forever
CPU_RAY_CPUS = 16

_PARSER = OverridesParser.create()


def job_dir(run_dir: Path, test_time_saar: bool | None) -> Path:
    """Where one verl invocation of the run keeps its files: `verl/` for training, `eval_saar_on|off/` for an
    evaluation at test time."""
    return run_dir / ("verl" if test_time_saar is None else f"eval_saar_{'on' if test_time_saar else 'off'}")


def hydra_value(value: Any, key: str) -> str:
    """`value` in Hydra's override grammar: plain when Hydra reads it back as the same value, else double-quoted."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(hydra_value(v, key) for v in value) + "]"
    if isinstance(value, dict):
        for k in value:
            if not (isinstance(k, str) and _reads_back(f"k={{{k}:0}}", {k: 0})):
                raise schema.ConfigError(f"{key}: the key {k!r} cannot travel to verl in an override")
        return "{" + ",".join(f"{k}:{hydra_value(v, key)}" for k, v in value.items()) + "}"
    text = str(value)
    if any(c in text for c in '"\\\'') or "${" in text:
        raise schema.ConfigError(f"{key}={text!r}: quotes, backslashes and ${{ cannot travel to verl in an override")
    return text if _reads_back(f"k={text}", text) else f'"{text}"'


def _reads_back(override: str, value: Any) -> bool:
    """Whether Hydra parses `override` to `value`."""
    try:
        return _PARSER.parse_override(override).value() == value
    except HydraException:  # not valid unquoted: the caller quotes it
        return False


def _override(key: str, value: Any) -> str:
    return f"{key}={hydra_value(value, key)}"


def agent_loop_entries(cfg: DictConfig, test_time_saar: bool | None) -> list[dict]:
    """The agent-loop YAML's content: the plugin's entry for our loop with this run's rollout and sandbox settings;
    SAAR as trained, or switched as asked when evaluating at test time (a baseline evaluated with SAAR on gets the
    paper's SAAR parameters; `from_step`, a training schedule, does not apply at test time)."""
    rollout = schema.rollout_config(cfg)
    if test_time_saar is not None:
        rollout = replace(rollout, saar=replace(rollout.saar, enabled=test_time_saar, from_step=0))
    sandbox = replace(schema.sandbox_config(cfg), workers=sandbox_workers(cfg, job_cpus()))
    return verl_plugin.agent_loop_config(rollout, sandbox)


def sandbox_for_rewards(cfg: DictConfig) -> dict[str, Any]:
    """The run's sandbox settings for the reward function's code tests (`reward_kwargs.sandbox`; it sizes its own
    one-worker pool), as the agent loop gets them (`cpu_time_s` resolved)."""
    settings = dataclasses.asdict(schema.sandbox_config(cfg))
    settings.pop("workers")
    return settings


def sandbox_workers(cfg: DictConfig, cpus: int) -> int:
    """Sandbox cells at a time in each of verl's agent-loop workers: `sandbox.workers` when set, else the job's
    `cpus` shared by the `verl.agent_workers` workers of a node, between 1 and `verl.max_sandbox_workers` (each cell
    is a process, and every agent-loop worker runs its own pool)."""
    if cfg.sandbox.workers is not None:
        return int(cfg.sandbox.workers)
    return max(1, min(cfg.verl.max_sandbox_workers, cpus // cfg.verl.agent_workers))


def job_cpus() -> int:
    """The CPUs this job may use: SLURM's allocation per task when under SLURM, else the machine's."""
    return int(os.environ.get("SLURM_CPUS_PER_TASK") or os.cpu_count() or 1)


def environment(cfg: DictConfig, job: Path, rollout_log: Path) -> dict[str, str]:
    """Environment variables verl's driver and every Ray worker need: verl's metrics file and trackers, our
    per-trajectory rollout log (`cleaner.verl_plugin.agent_loop.log_trajectory`), and on cluster=verl_cpu the CPU
    shims."""
    env = {"VERL_FILE_LOGGER_PATH": str(job / METRICS_FILE), "CLEANER_ROLLOUT_LOG_DIR": str(rollout_log),
           # verl's trackers (cfg.loggers) into the job's folder; W&B offline, as the lab's (`wandb sync` uploads)
           "TENSORBOARD_DIR": str(job / "tensorboard"), "WANDB_DIR": str(job), "WANDB_MODE": "offline"}
    if cfg.cluster.kind == "verl_cpu":
        from cleaner.verl_plugin import cpu

        env.update(cpu.ENV)
    return env


def overrides(cfg: DictConfig, run_dir: Path, data: prepare_data.PreparedData, rollout_log: Path) -> list[str]:
    """verl's overrides for the run config `cfg` whose folder is the absolute `run_dir`, training on `data.train`
    and validating on `data.evals` (verl parquet), our rollout records going to `rollout_log`. `cfg.test_time_saar`
    set: an evaluation of the run's last checkpoint (verl's val_only) instead. Raises ConfigError naming a key verl
    cannot honour."""
    algo, cluster, res = cfg.algo, cfg.cluster, cfg.verl
    on_cpu = cluster.kind == "verl_cpu"
    train_file, eval_files = data.train, data.evals
    evaluating = cfg.test_time_saar is not None
    job = job_dir(run_dir, cfg.test_time_saar)
    checks = (("cluster.kind", cluster.kind, ("verl", "verl_cpu")),
              ("engine.kind", cfg.engine.kind, ("transformers",) if on_cpu else ("sglang",)),
              ("algo.adv_estimator", algo.adv_estimator, tuple(ADVANTAGES)),
              ("algo.policy_loss", algo.policy_loss, tuple(POLICY_LOSSES)))
    for key, value, valid in checks:
        if value not in valid:
            raise schema.ConfigError(f"{key}={value!r}: cluster={cluster.kind} supports {', '.join(valid)}")
    if cluster.gpus_per_node < 1 or cluster.gpus_per_node % res.rollout_tp:
        raise schema.ConfigError(f"cluster.gpus_per_node={cluster.gpus_per_node} must be >= 1 and a multiple of "
                                 f"verl.rollout_tp={res.rollout_tp}")
    if algo.steps < 1:
        raise schema.ConfigError(f"algo.steps={algo.steps}: cluster=verl trains for at least one step; a finished run "
                                 "is evaluated with test_time_saar=true|false")
    if evaluating and not eval_files:
        raise schema.ConfigError("test_time_saar evaluates on data.eval_paths, which is empty")
    response_tokens = algo.max_response_tokens
    validates = bool(eval_files)
    checkpoints = job_dir(run_dir, None) / "checkpoints"
    name = records.config_hash(cfg) + ("" if not evaluating else "-" + job.name.replace("_", "-"))
    reward_path, reward_name = verl_plugin.reward_function()
    if on_cpu:
        from cleaner.verl_plugin import cpu

    rollout_name = cpu.ROLLOUT_NAME if on_cpu else "sglang"
    actor, rollout, trainer = "actor_rollout_ref.actor", "actor_rollout_ref.rollout", "trainer"
    pairs: list[tuple[str, Any]] = [
        # algorithm: GRPO advantages, no KL; DAPO without dynamic sampling (Table 5)
        ("algorithm.adv_estimator", ADVANTAGES[algo.adv_estimator]),
        ("algorithm.norm_adv_by_std_in_grpo", algo.norm_adv_by_std),
        ("algorithm.use_kl_in_reward", False),
        ("algorithm.filter_groups.enable", algo.dynamic_sampling),
        # rollout correction (module docstring): off by default; on, our loop re-scores the spliced spans first
        ("algorithm.rollout_correction.rollout_is", algo.rollout_is or None),
        ("algorithm.rollout_correction.rollout_rs", None),
        ("algorithm.rollout_correction.bypass_mode", False),
        # data: verl parquet (prompt chat list, agent_name selects our loop). One prompt limit serves training and
        # validation, so it is the evaluation's (Table 5: 4096); training prompts over 2560 tokens were left out
        # when the training file was written (prepare_files)
        ("data.train_files", [str(train_file)]),
        # verl builds a validation set even when it never validates: the training file stands in, unused
        ("data.val_files", [str(p) for p in eval_files.values()] if validates else [str(train_file)]),
        ("data.train_batch_size", algo.prompts_per_step),
        ("data.max_prompt_length", algo.max_eval_prompt_tokens),
        ("data.max_response_length", response_tokens),
        ("data.filter_overlong_prompts", True),
        ("data.truncation", "error"),
        ("data.return_raw_chat", True),
        ("data.shuffle", True),
        ("data.seed", cfg.seed),
        # the policy: FSDP2, Table 5's optimizer and PPO-clip settings
        ("actor_rollout_ref.model.path", str(Path(cfg.model.path).expanduser().resolve())),
        ("actor_rollout_ref.model.use_remove_padding", not on_cpu),  # needs flash-attn's varlen kernels
        ("actor_rollout_ref.model.enable_gradient_checkpointing", True),
        ("+actor_rollout_ref.model.override_config.attn_implementation", cfg.model.attn_implementation),
        (f"{actor}.strategy", "fsdp2"),
        (f"{actor}.optim.lr", algo.lr),
        (f"{actor}.optim.lr_warmup_steps", algo.lr_warmup_steps),
        (f"{actor}.optim.lr_scheduler_type", "constant"),
        (f"{actor}.optim.clip_grad", algo.max_grad_norm),
        (f"{actor}.ppo_mini_batch_size", algo.ppo_mini_batch_size),
        (f"{actor}.ppo_epochs", 1),
        (f"{actor}.use_dynamic_bsz", True),
        (f"{actor}.ppo_max_token_len_per_gpu", algo.max_eval_prompt_tokens + response_tokens),
        (f"{actor}.clip_ratio_low", algo.clip_ratio_low),
        (f"{actor}.clip_ratio_high", algo.clip_ratio_high),
        (f"{actor}.clip_ratio_c", algo.clip_ratio_c),
        (f"{actor}.loss_agg_mode", algo.loss_agg_mode),
        (f"{actor}.policy_loss.loss_mode", POLICY_LOSSES[algo.policy_loss]),
        (f"{actor}.entropy_coeff", 0),
        (f"{actor}.use_kl_loss", False),
        (f"{actor}.data_loader_seed", cfg.seed),
        (f"{actor}.fsdp_config.param_offload", res.offload and not on_cpu),
        (f"{actor}.fsdp_config.optimizer_offload", res.offload and not on_cpu),
        (f"+{actor}.fsdp_config.mixed_precision.param_dtype", PARAM_DTYPES[cfg.model.dtype]),
        # rollouts: SGLang (on the CPU, the transformers server), our agent loop (its YAML holds the rollout,
        # sandbox and SAAR settings)
        (f"{rollout}.name", rollout_name),
        (f"{rollout}.mode", "async"),
        (f"{rollout}.dtype", cfg.model.dtype),
        (f"{rollout}.tensor_model_parallel_size", res.rollout_tp),
        (f"{rollout}.gpu_memory_utilization", res.gpu_memory_utilization),
        (f"{rollout}.n", algo.group_size),
        (f"{rollout}.temperature", algo.temperature),
        (f"{rollout}.top_p", algo.top_p),
        (f"{rollout}.top_k", -1),
        (f"{rollout}.seed", cfg.seed),
        (f"{rollout}.calculate_log_probs", True),
        (f"{rollout}.val_kwargs.do_sample", True),
        (f"{rollout}.val_kwargs.temperature", algo.temperature),
        (f"{rollout}.val_kwargs.top_p", algo.eval_top_p),
        (f"{rollout}.val_kwargs.top_k", -1),
        (f"{rollout}.val_kwargs.n", algo.eval_samples),
        (f"{rollout}.multi_turn.enable", True),
        (f"{rollout}.multi_turn.max_assistant_turns", algo.max_turns),
        (f"{rollout}.multi_turn.max_tool_response_length", algo.max_tool_response_chars),
        (f"{rollout}.multi_turn.tool_response_truncate_side", "middle"),
        (f"{rollout}.agent.num_workers", res.agent_workers),
        (f"{rollout}.agent.default_agent_loop", verl_plugin.AGENT_NAME),
        (f"{rollout}.agent.agent_loop_config_path", str(job / AGENT_LOOP_FILE)),
        # reward: our outcome reward {-1, +1} plus DAPO's soft overlong penalty (Table 5)
        ("reward.custom_reward_function.path", reward_path),
        ("reward.custom_reward_function.name", reward_name),
        ("+reward.custom_reward_function.reward_kwargs.data_sources", data.kinds),  # its grader per data_source
        ("+reward.custom_reward_function.reward_kwargs.sandbox", sandbox_for_rewards(cfg)),
        ("reward.reward_manager.name", "dapo"),
        ("+reward.reward_kwargs.overlong_buffer_cfg.enable", algo.overlong_buffer_tokens > 0),
        ("+reward.reward_kwargs.overlong_buffer_cfg.len", algo.overlong_buffer_tokens),
        ("+reward.reward_kwargs.overlong_buffer_cfg.penalty_factor", algo.overlong_penalty_factor),
        ("+reward.reward_kwargs.overlong_buffer_cfg.log", False),
        ("+reward.reward_kwargs.max_resp_len", response_tokens),
        # trainer: layout, length, checkpoints in the run folder (resume), validation, logging
        (f"{trainer}.nnodes", cluster.nodes),
        (f"{trainer}.n_gpus_per_node", cluster.gpus_per_node),
        (f"{trainer}.total_training_steps", algo.steps),
        (f"{trainer}.total_epochs", algo.steps),
        (f"{trainer}.save_freq", res.save_every),
        (f"{trainer}.max_actor_ckpt_to_keep", res.keep_checkpoints or None),
        (f"{trainer}.default_local_dir", str(checkpoints)),
        # validation before training and every algo.eval_every steps (else after the last one), at the evaluation's
        # settings (val_kwargs above; a benchmark's own sample count travels in its rows' __rollout_n__)
        (f"{trainer}.test_freq", (algo.eval_every or algo.steps) if validates else -1),
        # a run resumed from a validated step does not validate it again before training (verl saves a step's
        # checkpoint before it validates that step, so a job killed in between validates it on resuming)
        (f"{trainer}.val_before_train", validates and (evaluating or not resumes_validated(job, checkpoints))),
        (f"{trainer}.validation_data_dir", str(job / "validation")),
        (f"{trainer}.log_val_generations", 0),
        (f"{trainer}.project_name", PROJECT),
        (f"{trainer}.experiment_name", name),
        (f"{trainer}.logger", ["console", "file", *cfg.loggers]),  # "file": verl/metrics.jsonl, which we read
        *((f"+ray_kwargs.ray_init.runtime_env.env_vars.{k}", v) for k, v in environment(cfg, job, rollout_log).items()),
        ("hydra.run.dir", str(job / "hydra")),
    ]
    if on_cpu:  # the CPU shims (cleaner.verl_plugin.cpu): logical GPUs and the fewest Ray workers that do the job
        pairs += [(f"{trainer}.device", "cpu"),
                  ("+ray_kwargs.ray_init.num_gpus", cluster.gpus_per_node),
                  ("+ray_kwargs.ray_init.num_cpus", CPU_RAY_CPUS),  # logical: Ray's placement, not cores
                  ("transfer_queue.backend.SimpleStorage.num_data_storage_units", 1),
                  ("reward.num_workers", 1),
                  ("data.dataloader_num_workers", 0)]
    if evaluating:  # verl's val_only: load the last checkpoint, validate once (before training), stop
        pairs += [(f"{trainer}.resume_mode", "resume_path"),
                  (f"{trainer}.resume_from_path", str(checkpoints / f"global_step_{algo.steps}")),
                  (f"{trainer}.val_only", True)]
    else:
        pairs += [(f"{trainer}.resume_mode", "auto")]
    return [_override(k, v) for k, v in pairs]


def command(ovr: list[str]) -> list[str]:
    """The verl command line for the overrides, with this interpreter."""
    return [sys.executable, "-m", VERL_MAIN, *ovr]


def shell_text(cmd: list[str]) -> str:
    """`cmd` as a shell command: the program and module on the first line, then one shell-quoted override per line,
    lines joined by ` \\`."""
    head = " ".join(shlex.quote(c) for c in cmd[:3])
    return " \\\n    ".join([head, *(shlex.quote(c) for c in cmd[3:])])


def check_machine(cfg: DictConfig) -> None:
    """What a real (not dry) run needs here, checked before anything starts; ConfigError names what is missing."""
    import torch

    ray_layout.check_cluster(cfg)  # the CPUs verl's placement will ask of each node (it would wait forever)
    model = Path(cfg.model.path).expanduser()
    no_model = f"model.path={cfg.model.path} holds no checkpoint (no config.json there); set it to the checkpoint"
    if cfg.cluster.kind == "verl_cpu":
        if not (model / "config.json").is_file():
            raise schema.ConfigError(no_model)
        return
    ray_address = os.environ.get("RAY_ADDRESS")
    gpus, nodes = cfg.cluster.gpus_per_node, cfg.cluster.nodes
    hint = "run it on the GPU nodes (sbatch slurm/train_4b.sh), or add dry_run=true to print the verl command"
    if nodes > 1 and not ray_address:
        raise schema.ConfigError(f"cluster.nodes={nodes} needs a running Ray cluster, but RAY_ADDRESS is unset; "
                                 f"the scripts in slurm/ start one and set it; {hint}")
    if not ray_address and torch.cuda.device_count() < gpus:
        raise schema.ConfigError(f"cluster=verl needs GPUs: cluster.gpus_per_node={gpus}, but this machine has "
                                 f"{torch.cuda.device_count()} CUDA devices and no Ray cluster is named "
                                 f"(RAY_ADDRESS); {hint}")
    if importlib.util.find_spec("sglang") is None:
        raise schema.ConfigError("cluster=verl rolls out with SGLang (engine=sglang), which is not installed here: "
                                 f"install verl[sglang]==0.9.1 on the GPU nodes; {hint}")
    if not (model / "config.json").is_file():
        raise schema.ConfigError(f"{no_model} (the RA-SFT checkpoint on the shared filesystem)")


def _last_metrics(path: Path) -> dict[str, Any] | None:
    lines = path.read_text().splitlines() if path.exists() else []
    return json.loads(lines[-1]) if lines else None


def _totals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The sums of `saar_by_step` rows over steps."""
    out: dict[str, Any] = {}
    for row in rows:
        for name, value in row.items():
            if name not in ("global_steps", "split"):
                out[name] = out.get(name, 0) + value
    return out


def _write_json(path: Path, data: Any) -> None:
    write_lines_atomic(path, iter([json.dumps(data, indent=1)]))


def lab_data(cfg: DictConfig, out_dir: Path) -> prepare_data.PreparedData:
    """data=lab as verl parquet: `algo.steps x algo.prompts_per_step` training problems and `algo.eval_problems`
    held-out ones of the lab's task set `data.task_set`, drawn with the run's seed, with the lab trainer's prompts;
    graded as math (their answers are integers in a box)."""
    from cleaner.lab.tasks import prompts, task_set

    problems = task_set(cfg.data.task_set).problems
    name = "lab" if cfg.data.task_set == "lab" else f"lab_{cfg.data.task_set}"
    algo = cfg.algo
    files = {}
    for split, count in (("train", algo.steps * algo.prompts_per_step), (algo.eval_split, algo.eval_problems)):
        drawn = problems(split, count, seed=cfg.seed)
        rows = [{"data_source": LAB_SOURCE, "prompt": messages, "ability": "math",
                 "reward_model": {"style": "rule", "ground_truth": str(p.answer)},
                 "extra_info": {"index": i, "id": p.id, "kind": "math", "split": split, "func_name": None,
                                "starter_code": None, "upstream": None},
                 "agent_name": verl_plugin.AGENT_NAME}
                for i, (p, (_, messages)) in enumerate(zip(drawn, prompts(drawn)))]
        files[split] = out_dir / f"{name}.{split}.seed{cfg.seed}.n{count}.parquet"
        if not files[split].exists():
            out_dir.mkdir(parents=True, exist_ok=True)
            tmp = files[split].with_suffix(".tmp")
            pq.write_table(pa.Table.from_pylist(rows, schema=prepare_data.SCHEMA), tmp)
            tmp.replace(files[split])
    return prepare_data.PreparedData(files["train"], {"lab": files[algo.eval_split]}, {LAB_SOURCE: "math"}, {})


def drop_long_prompts(train: Path, model_path: str, limit: int) -> tuple[Path, int]:
    """The training file without prompts longer than `limit` tokens as our agent loop renders them (verl has one
    prompt limit for training and validation, set to the evaluation's); (file, rows left out). The result sits
    beside `train`, named by the limit and the tokenizer, and is reused."""
    from transformers import AutoTokenizer

    from cleaner import chat

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    out = train.with_name(f"{train.stem}.max{limit}.{Path(model_path).name}.parquet")
    table = pq.read_table(train)
    keep = [len(chat.prompt_span(tokenizer, [dict(m) for m in prompt])) <= limit
            for prompt in table.column("prompt").to_pylist()]
    if not out.exists():
        tmp = out.with_suffix(".tmp")
        pq.write_table(table.filter(pa.array(keep)), tmp)
        tmp.replace(out)
    return out, keep.count(False)


def with_samples(path: Path, samples: int) -> Path:
    """A copy of the benchmark file `path` whose rows ask for `samples` rollouts each (`__rollout_n__`, which
    verl 0.9.1's V1 validation reads per row; its legacy trainer takes `val_kwargs.n` for all), beside it."""
    out = path.with_name(f"{path.stem}.n{samples}.parquet")
    if not out.exists():
        table = pq.read_table(path)
        tmp = out.with_suffix(".tmp")
        pq.write_table(table.append_column("__rollout_n__", pa.array([samples] * table.num_rows, pa.int64())), tmp)
        tmp.replace(out)
    return out


def prepare_files(cfg: DictConfig, run_dir: Path,
                  test_time_saar: bool | None) -> tuple[list[str], Path, dict[str, str]]:
    """Convert the data, write the agent-loop YAML and the overrides into the job's folder and open this
    invocation's rollout log (`rollouts/<k>/`); (overrides, folder, the environment verl runs with)."""
    job = job_dir(run_dir, test_time_saar)
    data_dir = job_dir(run_dir, None) / "data"
    if cfg.data.name == "lab":
        data = lab_data(cfg, data_dir)
    else:
        data = prepare_data.prepare_config_data(cfg.data, data_dir, cfg.model.chat_format)
    for why, n in data.left_out.items():
        print(f"data.train_path: left out {n} rows ({why})", file=sys.stderr, flush=True)
    if (Path(cfg.model.path) / "config.json").exists():
        train, dropped = drop_long_prompts(data.train, cfg.model.path, cfg.algo.max_prompt_tokens)
        data = replace(data, train=train)
        if dropped:
            print(f"data.train_path: left out {dropped} prompts longer than algo.max_prompt_tokens="
                  f"{cfg.algo.max_prompt_tokens}", file=sys.stderr, flush=True)
    else:  # a dry run without the checkpoint here: verl's own filter applies the evaluation's limit
        print(f"model.path={cfg.model.path} is not here: training prompts are not checked against "
              f"algo.max_prompt_tokens", file=sys.stderr, flush=True)
    data = replace(data, evals={name: with_samples(path, cfg.data.eval_samples.get(name, cfg.algo.eval_samples))
                                for name, path in data.evals.items()})
    logs = job / ROLLOUTS_DIR
    rollout_log = logs / str(1 + sum(p.is_dir() for p in logs.glob("*")))
    rollout_log.mkdir(parents=True)
    ovr = overrides(cfg, run_dir, data, rollout_log)
    entries = yaml.safe_dump(agent_loop_entries(cfg, test_time_saar), sort_keys=False)
    write_lines_atomic(job / AGENT_LOOP_FILE, iter([entries.rstrip("\n")]))
    write_lines_atomic(job / OVERRIDES_FILE, iter(ovr))
    return ovr, job, environment(cfg, job, rollout_log)


def saar_by_step(logs: Path) -> list[dict[str, Any]]:
    """Our per-trajectory records (`rollouts/<invocation>/`) summed per (global step, split): trajectories, finish
    reasons, and each SAAR and infrastructure counter (those by kind as `name/kind`), in step order. A step that a
    killed invocation began and the next one redid is counted once, from the later invocation."""
    invocations: dict[tuple[int, str], int] = {}
    records = []
    for folder in sorted((p for p in logs.glob("*") if p.is_dir()), key=lambda p: int(p.name)):
        for path in sorted(folder.glob("rollouts.*.jsonl")):
            for line in path.read_text().splitlines():
                record = json.loads(line)
                key = (-1 if record["global_steps"] is None else record["global_steps"], record["split"])
                invocations[key] = int(folder.name)
                records.append((int(folder.name), key, record))
    rows: dict[tuple[int, str], dict[str, Any]] = {}
    for invocation, key, record in records:
        if invocation == invocations[key]:
            row = rows.setdefault(key, {"global_steps": key[0], "split": key[1], "trajectories": 0})
            row["trajectories"] += 1
            row[f"finish_{record['finish_reason']}"] = row.get(f"finish_{record['finish_reason']}", 0) + 1
            for name, value in record["saar_stats"].items():  # counts by kind (a dict) as `name/kind`
                for key_, count in ({f"{name}/{k}": v for k, v in value.items()} if isinstance(value, dict)
                                    else {name: value}).items():
                    if isinstance(count, (int, float)):
                        row[key_] = row.get(key_, 0) + count
    return [rows[k] for k in sorted(rows)]


def end_session(sid: int) -> None:
    """SIGKILL what is left of the process session `sid` (Linux: read from /proc)."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if os.getsid(int(entry)) == sid:
                    os.kill(int(entry), signal.SIGKILL)


def resumes_validated(job: Path, checkpoints: Path) -> bool:
    """Whether verl will resume at a step whose validation its metrics files (`METRICS_FILE` and an earlier
    invocation's `metrics.<k>.jsonl`: one JSON line per log call, `{"step": n, "data": {...}}`) already hold."""
    if not (checkpoints / LATEST).exists():
        return False
    step = int((checkpoints / LATEST).read_text())
    for path in [job / METRICS_FILE, *job.glob("metrics.*.jsonl")]:
        for line in path.read_text().splitlines() if path.exists() else []:
            try:
                row = json.loads(line)
            except ValueError:  # a line cut by the kill
                continue
            if row.get("step") == step and any(k.startswith("val-") for k in row.get("data", {})):
                return True
    return False


def prune_checkpoints(checkpoints: Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` of verl's `global_step_<n>` folders (none with keep 0, verl's "keep all"),
    never the one `latest_checkpointed_iteration.txt` names; the deleted folders, oldest first. verl counts the
    checkpoints it keeps in memory, so those of an earlier invocation (a requeued or resubmitted job) are never
    deleted by it: this runs before each invocation."""
    steps = sorted((int(p.name.removeprefix("global_step_")), p) for p in checkpoints.glob("global_step_*")
                   if p.is_dir() and p.name.removeprefix("global_step_").isdigit())
    latest = (checkpoints / LATEST).read_text().strip() if (checkpoints / LATEST).exists() else None
    doomed = [p for n, p in steps[:-keep] if str(n) != latest] if keep >= 1 else []
    for p in doomed:
        shutil.rmtree(p)
    return doomed


def _launch(cmd: list[str], job: Path, env: dict[str, str], placement_timeout_s: float) -> float:
    """Run verl in `job` with `env` added to this environment, keeping an earlier invocation's metrics file; its
    wall seconds. A failure exits with a message: rerunning the same command resumes. On a Ray cluster
    (RAY_ADDRESS), a placement group of verl's PENDING for `placement_timeout_s` ends it
    (`ray_layout.PlacementWatch`)."""
    metrics = job / METRICS_FILE
    if metrics.exists():
        k = 1 + sum(1 for _ in job.glob("metrics.*.jsonl"))
        metrics.rename(job / f"metrics.{k}.jsonl")
    start = time.perf_counter()
    # its own session: Ray's processes leave verl's process group, but not the session, so whatever ends this
    # call (verl's exit, a signal, an error) ends all of them, and no Ray cluster outlives its run
    environ = {**os.environ, **env}  # before the watch joins Ray, which sets PYTHONBREAKPOINT here
    address = environ.get("RAY_ADDRESS")  # verl's driver joins that Ray and places its groups there
    watch = ray_layout.PlacementWatch(address, placement_timeout_s) if address else None
    proc = subprocess.Popen(cmd, cwd=job, env=environ, start_new_session=True)
    try:
        if watch:
            watch.start(lambda: end_session(proc.pid))
        status = proc.wait()
    finally:
        stuck = watch and watch.stop()
        end_session(proc.pid)
    if stuck:
        raise SystemExit(f"error: {stuck}")
    if status:
        raise SystemExit(f"error: verl exited with status {status}; its output is above and in {job}; rerunning the "
                         "same command resumes from the last checkpoint")
    return time.perf_counter() - start


def run(cfg: DictConfig) -> dict[str, Any]:
    """One cluster=verl job for a validated config: train (resuming), or evaluate at test time, or print (dry run)."""
    run_dir = (Path(cfg.runs_root) / records.config_hash(cfg)).resolve()
    saar = cfg.test_time_saar
    if not cfg.dry_run:
        check_machine(cfg)
    if saar is not None and not cfg.dry_run and not (run_dir / "summary.json").exists():
        raise schema.ConfigError(f"test_time_saar={str(saar).lower()}: run {run_dir} has not finished training; "
                                 "train it first with the same overrides, without test_time_saar")
    if cfg.dry_run:
        ovr, job, _ = prepare_files(cfg, run_dir, saar)
        print(shell_text(command(ovr)), flush=True)
        print(f"dry run: verl's files are in {job}; nothing was started", file=sys.stderr, flush=True)
        return {"dry_run": True, "overrides": ovr}
    if saar is not None:
        return _evaluate(cfg, run_dir, saar)

    def train(run_dir: Path) -> dict[str, Any]:
        ovr, folder, env = prepare_files(cfg, run_dir.resolve(), None)
        checkpoints = folder / "checkpoints"
        for old in prune_checkpoints(checkpoints, cfg.verl.keep_checkpoints):
            print(f"removed {old}: verl.keep_checkpoints={cfg.verl.keep_checkpoints}", flush=True)
        _launch(command(ovr), folder, env, cfg.verl.placement_timeout_s)
        step = int((checkpoints / LATEST).read_text())
        if step < cfg.algo.steps:
            raise SystemExit(f"error: verl stopped at step {step} of {cfg.algo.steps}; rerun to resume")
        saar = saar_by_step(folder / ROLLOUTS_DIR)
        write_lines_atomic(folder / SAAR_FILE, (json.dumps(row, sort_keys=True) for row in saar))
        summary = {"cluster": cfg.cluster.kind, "steps": step, "checkpoint": str(checkpoints / f"global_step_{step}"),
                   "final_metrics": _last_metrics(folder / METRICS_FILE),
                   "saar": _totals([row for row in saar if row["split"] == "train"])}
        _write_json(run_dir / "summary.json", summary)
        return summary

    return records.run_record(cfg, train, log=(lambda s: None) if cfg.quiet else print)


def _evaluate(cfg: DictConfig, run_dir: Path, saar: bool) -> dict[str, Any]:
    """verl's val_only from the finished run's last checkpoint, SAAR at test time as asked; skipped when done."""
    out = job_dir(run_dir, saar) / "summary.json"
    if out.exists():
        return json.loads(out.read_text())
    ovr, folder, env = prepare_files(cfg, run_dir, saar)
    wall_s = _launch(command(ovr), folder, env, cfg.verl.placement_timeout_s)
    summary = {"test_time_saar": saar, "checkpoint": str(run_dir / "verl" / "checkpoints"
                                                         / f"global_step_{cfg.algo.steps}"),
               "wall_s": round(wall_s, 1), "metrics": _last_metrics(folder / METRICS_FILE),
               "saar": _totals(saar_by_step(folder / ROLLOUTS_DIR))}
    _write_json(out, summary)
    return summary
