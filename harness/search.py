"""An Optuna search over runs, launched through submitit:

    python -m harness.search +sweeps=optuna [search.trials=16] [search.parallel=4] [launcher=slurm] [key=value ...]

A small ask/tell driver on current Optuna (TPE sampler), rather than hydra-optuna-sweeper: that plugin pins
optuna<3 and sqlalchemy<2 and runs trials in synchronous batches (the slowest trial of a batch holds the next
batch back). Here `search.parallel` trials are in flight at all times: when one finishes, it is told and another is
asked for.

The study lives with the runs it records, in SQLite at `<runs_root>/optuna/<study>.db` (the jobs' logs beside it,
in `<study>.submitit/`); the driver's first line names it. A trial is an ordinary run record, named by its config
hash, so a killed driver loses nothing: rerun the same command and trials left RUNNING are marked failed and asked
again with the same parameters, which resumes their records (or skips them, if they had finished); finished trials
are not rerun. Trials count towards `search.trials` across restarts.

A resumed search continues rather than replays: the sampler is seeded from `search.sampler_seed` and the number of
trials already in the study (a fresh sampler with the bare seed would draw the points it drew before the kill;
restoring the sampler's saved state instead would need a save after every ask, and a kill between the two would
still replay a point). A search is thus reproducible given the points at which it was restarted, not across them. A point that repeats an
earlier trial's (finished or in flight), which a small discrete space makes likely, is not run: it is reported,
marked PRUNED (which TPE counts as a poor result there, steering it elsewhere) and not counted; once the trials
hold every point of an all-integer space, the search stops short of `search.trials`. Not protected: two drivers on
one study at once (each would fail the other's trials as left by a killed driver).
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from cleaner.stats import at_the_edge
from harness import cli, schema
from harness.train import check, run


def suggest(trial: Any, space: dict[str, Any]) -> dict[str, Any]:
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


def space_size(space: dict[str, Any]) -> float:
    """How many points the space holds: the product of its integer ranges; infinite with a float key."""
    return math.prod(spec["high"] - spec["low"] + 1 if spec["type"] == "int" else math.inf for spec in space.values())


def sampler_seed(seed: int, trials_before: int) -> int:
    """The TPE sampler's seed for a driver that finds `trials_before` trials in its study: a new stream per start,
    and not the stream another seed's search starts with (as `seed + trials_before` would be)."""
    import numpy as np

    return int(np.random.SeedSequence([seed, trials_before]).generate_state(1)[0])


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


class SearchFailed(RuntimeError):
    """Every trial failed: a bug or a machine to fix, not a search to go on with."""


def executor(launcher: dict[str, Any], folder: Path) -> Any:
    """A submitit executor with the launcher group's parameters (`hydra.launcher`, resolved; launcher=local or
    launcher=slurm)."""
    import submitit

    slurm = "slurm" in launcher["_target_"].lower()
    ex = submitit.AutoExecutor(folder=folder, cluster="slurm" if slurm else "local")
    common = {k: launcher[k] for k in ("timeout_min", "nodes", "tasks_per_node", "cpus_per_task", "gpus_per_node")
              if launcher.get(k) is not None}
    if slurm:
        common.update(slurm_partition=launcher.get("partition"), mem_gb=launcher.get("mem_gb"))
    ex.update_parameters(**{k: v for k, v in common.items() if v is not None})
    return ex


def check_space(cfg: DictConfig, space: dict[str, Any], sandbox_here: bool) -> None:
    """Every trial's config checked before the first starts, as a sweep's jobs are: the base config (with the
    sandbox, unless the trials run on SLURM nodes), then each key of the space at its bounds."""
    check(cfg, sandbox_here)
    for key, spec in space.items():
        for bound in ("low", "high"):
            try:
                check(trial_config(cfg, {key: spec[bound]}), False)
            except schema.ConfigError as e:
                raise schema.ConfigError(f"search.space.{key}.{bound}={spec[bound]}: {e}") from None


def search(cfg: DictConfig, launcher: dict[str, Any], log=print) -> Any:
    import optuna

    spec = cfg.search
    if spec is None or not spec.space:
        raise schema.ConfigError("search.space is empty; start from +sweeps=optuna")
    if spec.direction not in ("maximize", "minimize"):
        raise schema.ConfigError(f"search.direction={spec.direction!r}; valid: maximize, minimize")
    for key in ("trials", "parallel"):
        if spec[key] < 1:
            raise schema.ConfigError(f"search.{key} must be at least 1, got {spec[key]}")
    space = OmegaConf.to_container(spec.space)
    check_space(cfg, space, sandbox_here="slurm" not in launcher["_target_"].lower())
    root = Path(cfg.runs_root).resolve() / "optuna"
    root.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(study_name=spec.study, storage=f"sqlite:///{root / spec.study}.db",
                                direction=spec.direction, load_if_exists=True)
    before = study.get_trials(deepcopy=False)
    seed = sampler_seed(spec.sampler_seed, len(before))
    study.sampler = optuna.samplers.TPESampler(seed=seed)
    ex = executor(launcher, root / f"{spec.study}.submitit")
    log(f"study {spec.study} in {root / spec.study}.db (job logs beside it, in {ex.folder.name}/): "
        f"{len(before)} trials so far; TPE seed {seed}")
    for t in before:
        if t.state == optuna.trial.TrialState.RUNNING:
            log(f"trial {t.number} was left running by a killed driver: failing it and asking its parameters again")
            study.enqueue_trial(t.params)  # before failing it: a kill in between cannot lose its parameters
            study.tell(t.number, state=optuna.trial.TrialState.FAIL)
    running: dict[int, Any] = {}  # trial number -> submitit job
    failed = 0
    exhausted = False

    def finished() -> int:
        return len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))

    while not exhausted and finished() + len(running) < spec.trials or running:
        while not exhausted and len(running) < spec.parallel and finished() + len(running) < spec.trials:
            trial = study.ask()
            params = suggest(trial, space)
            tried = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,
                                                                         optuna.trial.TrialState.RUNNING))
                     if t.number != trial.number]  # finished or in flight
            earlier = next((t for t in tried if t.params == params), None)
            if earlier is not None:  # not run, not counted; TPE takes a pruned trial for a poor one
                log(f"trial {trial.number}: {params} repeats trial {earlier.number}: pruned, not run")
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                distinct = {tuple(sorted(t.params.items())) for t in tried}
                exhausted = len(distinct) >= space_size(space)
                if exhausted:
                    log(f"the trials hold all {len(distinct)} points of the search space: "
                        f"stopping at {finished() + len(running)} of {spec.trials} trials")
                continue
            trial_cfg = trial_config(cfg, params)
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
                log(f"trial {number} failed: {cli.one_line(e)}")
                study.tell(number, state=optuna.trial.TrialState.FAIL)
                failed += 1
                if failed >= spec.trials:  # every trial failing is a bug to fix, not a search to go on with
                    raise SearchFailed(f"{failed} trials failed, the last with {cli.one_line(e)}; the jobs' logs "
                                       f"are in {ex.folder}") from None
                continue
            study.tell(number, value)
            log(f"trial {number}: {spec.metric} = {value:.4f}")
        time.sleep(1.0)
    best = study.best_trial
    log(f"best trial {best.number}: {spec.metric} = {best.value:.4f} with {best.params}")
    tried = [t.params for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))]
    for key, edge in at_the_edge(best.params, tried).items():
        values = [params[key] for params in tried]
        log(f"the best {key} = {best.params[key]:g} is the {edge} value tried ({min(values):g} to {max(values):g}): "
            f"not inside the explored range; widen search.space.{key} past it, raise search.trials and rerun the "
            "same command (the study keeps its trials)")
    return study


def main(argv: list[str]) -> None:
    if {"-h", "--help"} & set(argv):
        print("\n\n".join(__doc__.split("\n\n")[:2]) + "\n\nSearch spaces: sweeps/optuna.yaml, sweeps/tune_lr.yaml; "
              "docs/search.md.")
        return
    cli.check_overrides(argv)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the driver's own lines say what Optuna's would
    cfg = cli.composed("sweep", argv, hydra=True)
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    with open_dict(cfg):
        del cfg["hydra"]
    try:
        cli.guarded(search, cfg, launcher)
    except SearchFailed as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
    except KeyboardInterrupt:
        cli.interrupted(None)


if __name__ == "__main__":
    main(sys.argv[1:])
