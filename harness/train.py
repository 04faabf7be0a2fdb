"""One training run, recorded in `results/runs/<config hash>/`:

    python -m harness.train [preset=lab|qwen3_4b|qwen2_5_7b|demyagent] [saar=cleaner|baseline] [key=value ...]

A finished run (its folder holds `summary.json`) is skipped; an interrupted one resumes from its last checkpoint.
`-m` with comma-separated values runs one after another in this process; `python -m harness.sweep` launches them
through submitit instead. cluster=lab runs the single-process trainer (`cleaner.lab.trainer`) here; cluster=verl
(the paper presets) runs verl on GPUs through `harness.verl` (`dry_run=true` prints its command instead;
`test_time_saar=true|false` evaluates the finished run); cluster=verl_cpu runs the same verl translation on this
machine's CPU with the lab's model and tasks.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from hydra.utils import to_absolute_path
from omegaconf import DictConfig

from cleaner.sandbox import check_ready
from harness import cli, records, schema


def init_checkpoint(cfg: DictConfig, log: Any) -> Path:
    """The run's initial checkpoint; the lab's SFT checkpoint is trained (about 20 minutes on 2 cores) if missing."""
    from cleaner.lab.sft import train as train_sft  # torch: not before the command line is checked

    path = Path(to_absolute_path(cfg.model.path))
    if (path / "config.json").exists():
        return path
    recipe = schema.lab_sft_recipe(cfg.model.path)
    if recipe is not None:
        return train_sft(recipe, path.parent, log=log)
    raise schema.ConfigError(f"model.path={cfg.model.path} holds no checkpoint (no config.json there)")


def check_start(cfg: DictConfig, run_dir: Path) -> None:
    """A finished lab run started from the checkpoint `model.path` names now. The lab's SFT checkpoint is named by
    its recipe's hash and is the schema's default path, so a new SFT recipe keeps every run's name; without this
    check its old runs would be reused as if trained from the new checkpoint."""
    summary = run_dir / "summary.json"
    start = Path(cfg.model.path).name
    trained_from = json.loads(summary.read_text()).get("init", start) if summary.exists() else start
    if trained_from != start:
        raise schema.ConfigError(f"run {run_dir} was trained from the checkpoint {trained_from}, not {start} "
                                 f"(model.path={cfg.model.path}); move that folder away to train again")


def check(cfg: DictConfig, sandbox_here: bool = True) -> None:
    """Everything that refuses a run before it starts, as ConfigError or SandboxUnavailable (one line each): the
    values, the data files, what the cluster can run, a finished record from another checkpoint, and (unless a dry
    run, or `sandbox_here` is False: a sweep's driver whose jobs run on SLURM nodes) a sandbox that starts here.
    A sweep runs it in its driver for every job before any starts (`cli.check_sweep`); each run runs it again."""
    schema.validate(cfg)
    schema.check_paths(cfg)
    verl_cluster = cfg.cluster.kind in ("verl", "verl_cpu")
    if not verl_cluster and (cfg.dry_run or cfg.test_time_saar is not None):
        raise schema.ConfigError("dry_run and test_time_saar are for cluster=verl|verl_cpu; the lab evaluates a "
                                 "finished run with python -m harness.eval")
    if cfg.algo.steps == 0:
        raise schema.ConfigError("algo.steps=0 trains nothing: evaluate model.path with python -m harness.eval and "
                                 "the same overrides")
    if not verl_cluster:
        schema.lab_train_config(cfg)
        check_start(cfg, Path(cfg.runs_root) / records.config_hash(cfg))
    if sandbox_here and not cfg.dry_run:
        check_ready(schema.sandbox_config(cfg))


def run(cfg: DictConfig) -> dict[str, Any]:
    """Check, then run the job in its record folder; returns the run's summary."""
    check(cfg)
    verl_cluster = cfg.cluster.kind in ("verl", "verl_cpu")
    name = records.config_hash(cfg)
    log = (lambda s: None) if cfg.quiet else (lambda s: print(f"[{name}] {s}", flush=True))
    cli.announce(cfg, Path(cfg.runs_root) / name)
    if verl_cluster:
        # the plugin announces its loading at INFO, which Hydra's logging prints on stdout, or else on stderr:
        # stderr, so that stdout holds only what a dry run prints (the verl command)
        logging.getLogger("cleaner.verl_plugin").setLevel(logging.WARNING)
        from harness import verl  # imports verl's config code and the plugin (seconds), so only here

        if schema.lab_sft_recipe(cfg.model.path) is not None and not cfg.dry_run:
            init_checkpoint(cfg, log)
        return verl.run(cfg)
    train_cfg = schema.lab_train_config(cfg)

    def job(run_dir: Path) -> dict[str, Any]:
        from cleaner.lab.tasks import task_set
        from cleaner.lab.trainer import train_sync  # torch: not before the command line is checked

        return train_sync(train_cfg, init_checkpoint(cfg, log), run_dir, log=log, task=task_set(cfg.data.task_set),
                          loggers=tuple(cfg.loggers))

    return records.run_record(cfg, job, log=log)


if __name__ == "__main__":
    cli.main(run, "train", check=check)
