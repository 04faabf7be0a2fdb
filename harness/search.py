"""An Optuna search over runs, launched through submitit:

    python -m harness.search +sweeps=optuna [search.trials=16] [search.parallel=4] [launcher=slurm] [key=value ...]

A small ask/tell driver on current Optuna (TPE sampler), rather than hydra-optuna-sweeper: that plugin pins
optuna<3 and sqlalchemy<2 and runs trials in synchronous batches (the slowest trial of a batch holds the next
batch back). Here `search.parallel` trials are in flight at all times: when one finishes, it is told and another is
asked for.

The study lives in SQLite at `<runs_root>/../optuna/<study>.db`. A trial is an ordinary run record, named by its
config hash, so a killed driver loses nothing: rerun the same command and trials left RUNNING are marked failed and
asked again with the same parameters, which resumes their records (or skips them, if they had finished); finished
trials are not rerun. Trials count towards `search.trials` across restarts.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import submitit
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf, open_dict

from harness import cli, schema
from harness.train import run


def suggest(trial: optuna.Trial, space: dict[str, Any]) -> dict[str, Any]:
    """One value per dotted key of the search space."""
    params = {}
    for key, spec in space.items():
        if spec["type"] == "float":
            params[key] = trial.suggest_float(key, spec["low"], spec["high"], log=spec.get("log", False))
        elif spec["type"] == "int":
            params[key] = trial.suggest_int(key, spec["low"], spec["high"], log=spec.get("log", False))
        else:
            raise schema.ConfigError(f"search.space.{key}.type={spec['type']!r}; valid: float, int")
    return params


def trial_config(base: DictConfig, params: dict[str, Any]) -> DictConfig:
    cfg = base.copy()
    with open_dict(cfg):
        for key, value in params.items():
            OmegaConf.update(cfg, key, value)
        cfg.search = None
    return cfg


def metric(summary: dict[str, Any], dotted: str) -> float:
    value: Any = summary
    for part in dotted.split("."):
        value = value[part]
    return float(value)


def job_error(e: Exception) -> str:
    """The line of a failed submitit job's traceback that names the original error (`pkg.SomeError: ...`)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return next((line for line in reversed(lines) if re.match(r"^[\w.]+(Error|Exception|Exit)\b", line)),
                f"{type(e).__name__}: {lines[-1] if lines else ''}")


def executor(launcher: dict[str, Any], folder: Path) -> submitit.Executor:
    """A submitit executor with the launcher group's parameters (`hydra.launcher`, resolved; launcher=local or
    launcher=slurm)."""
    slurm = "slurm" in launcher["_target_"].lower()
    ex = submitit.AutoExecutor(folder=folder, cluster="slurm" if slurm else "local")
    common = {k: launcher[k] for k in ("timeout_min", "nodes", "tasks_per_node", "cpus_per_task", "gpus_per_node")
              if launcher.get(k) is not None}
    if slurm:
        common.update(slurm_partition=launcher.get("partition"), mem_gb=launcher.get("mem_gb"))
    ex.update_parameters(**{k: v for k, v in common.items() if v is not None})
    return ex


def search(cfg: DictConfig, launcher: dict[str, Any], log=print) -> optuna.Study:
    spec = cfg.search
    if spec is None or not spec.space:
        raise schema.ConfigError("search.space is empty; start from +sweeps=optuna")
    if spec.direction not in ("maximize", "minimize"):
        raise schema.ConfigError(f"search.direction={spec.direction!r}; valid: maximize, minimize")
    schema.validate(cfg)
    root = Path(cfg.runs_root).resolve().parent / "optuna"
    root.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(study_name=spec.study, storage=f"sqlite:///{root / spec.study}.db",
                                direction=spec.direction, load_if_exists=True,
                                sampler=optuna.samplers.TPESampler(seed=spec.sampler_seed))
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        log(f"trial {t.number} was left running by a killed driver: failing it and asking its parameters again")
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
        study.enqueue_trial(t.params)
    ex = executor(launcher, root / f"{spec.study}.submitit")
    running: dict[int, submitit.Job] = {}
    failed = 0

    def finished() -> int:
        return len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))

    while finished() + len(running) < spec.trials or running:
        while len(running) < spec.parallel and finished() + len(running) < spec.trials:
            trial = study.ask()
            trial_cfg = trial_config(cfg, suggest(trial, OmegaConf.to_container(spec.space)))
            schema.validate(trial_cfg)
            running[trial.number] = ex.submit(run, trial_cfg)
            log(f"trial {trial.number}: {trial.params} -> job {running[trial.number].job_id}")
        for number, job in list(running.items()):
            if not job.done():
                continue
            del running[number]
            try:
                value = metric(job.result(), spec.metric)
            except Exception as e:  # the trial's job failed: recorded as a failed trial, the search goes on
                log(f"trial {number} failed: {job_error(e)}")
                study.tell(number, state=optuna.trial.TrialState.FAIL)
                failed += 1
                if failed >= spec.trials:  # every trial failing is a bug to fix, not a search to go on with
                    raise RuntimeError(f"{failed} trials failed; the jobs' logs are in {ex.folder}") from e
                continue
            study.tell(number, value)
            log(f"trial {number}: {spec.metric} = {value:.4f}")
        time.sleep(1.0)
    best = study.best_trial
    log(f"best trial {best.number}: {spec.metric} = {best.value:.4f} with {best.params}")
    return study


def main(argv: list[str]) -> None:
    cli.check_overrides(argv)
    schema.register()
    with initialize_config_dir(str(cli.CONF), version_base="1.3"):
        cfg = compose("sweep", overrides=[*argv, cli.searchpath_override()], return_hydra_config=True)
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    with open_dict(cfg):
        del cfg["hydra"]
    cli.guarded(search, cfg, launcher)


if __name__ == "__main__":
    main(sys.argv[1:])
