"""Run records: one folder per run, `<runs_root>/<config hash>/`, holding

- `config.yaml`: the resolved config (all of it, the unhashed keys too);
- `env.json`: git commit and whether the tree was dirty, package versions, seed, hardware, and one entry per
  invocation with its wall time (a resumed run has several);
- `metrics.jsonl` and `summary.json`: written by the job (for the lab, `cleaner.lab.trainer`).

A record's files must read back (`record_problem`): one that does not (a truncated or hand-edited file) is not
finished, whatever its `summary.json` says. `run_record` moves such a folder into `<runs_root>/corrupt/` (nothing is
deleted), says so in one line, and trains the run again from its start; the report skips it, naming the file.

The hash is over the resolved config minus `schema.NOT_HASHED` (where results go, strictness, verbosity, resources,
where the servers run), taken as its difference from the schema's defaults (`hashed_part`); the
launcher lives under `hydra`, which is not part of the config, so a run launched locally or on SLURM is the same
run. It is the run's only name: the lab trainer, the sweeps, the search, `harness.eval`, verl's experiment name and
the report all use it. Same config, same folder: a folder with `summary.json` is finished and skipped; any other is
resumed by the job from its last checkpoint. Every file is replaced atomically (written beside, then renamed).
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import importlib.metadata
import json
import os
import platform
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable

import yaml
from omegaconf import DictConfig, OmegaConf

from cleaner.trajectory import write_lines_atomic
from harness.schema import GROUPS, NOT_HASHED, ConfigError, RunSchema

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("torch", "transformers", "tokenizers", "verl", "math-verify", "hydra-core", "hydra-submitit-launcher",
            "submitit", "optuna", "numpy", "cleaner-harness")


def schema_defaults() -> dict[str, Any]:
    """The run config every field left at its default in the schema (`harness.schema`): each group's dataclass
    defaults and the top-level fields' defaults, resolved."""
    groups = {name: OmegaConf.structured(cls) for name, cls in GROUPS.items()}
    top = {f.name: f.default for f in dataclasses.fields(RunSchema)
           if f.name not in GROUPS and f.default is not dataclasses.MISSING}
    return OmegaConf.to_container(OmegaConf.create({**groups, **top}), resolve=True)


def _delta(values: Any, defaults: Any) -> Any:
    """The parts of `values` that differ from `defaults` (nested dicts compared key by key; anything else whole);
    `_SAME` when nothing differs."""
    if isinstance(values, dict) and isinstance(defaults, dict):
        out = {k: _delta(v, defaults.get(k, _ABSENT)) for k, v in values.items()}
        return {k: v for k, v in out.items() if v is not _SAME} or _SAME
    return _SAME if values == defaults else values


_SAME, _ABSENT = object(), object()


def hashed_part(cfg: DictConfig) -> dict[str, Any]:
    """What names a run: the resolved config minus the keys that do not change results, as its difference from the
    schema's defaults (as dora does), so that a field added to the schema with a default that keeps the old
    behaviour renames no run. With SAAR off, SAAR's unused parameters are left out too, so every baseline of a
    gamma sweep is the same run. (Changing a default's value in the schema does change what an existing name
    means: that is a new recipe, and should get a new preset or option, not a new default.)"""
    data = OmegaConf.to_container(cfg, resolve=True)
    defaults = schema_defaults()
    if not data["saar"]["enabled"]:
        data["saar"] = {"enabled": False}
        defaults["saar"] = {}
    for key in NOT_HASHED:  # where results go, verbosity, resources, where the servers run
        *parents, last = key.split(".")
        node = data
        for parent in parents:
            node = node.get(parent, {})
        node.pop(last, None)
    part = _delta(data, defaults)
    return {} if part is _SAME else part


def config_hash(cfg: DictConfig) -> str:
    """12 hex digits of the SHA-256 of `hashed_part(cfg)`: the run's one name, its folder under `runs_root`."""
    return hashlib.sha256(json.dumps(hashed_part(cfg), sort_keys=True).encode()).hexdigest()[:12]


def evaluation_name(cfg: DictConfig) -> str:
    """The name of an evaluation record in its run's folder (`harness.eval`): `eval` when SAAR's parameters at test
    time are those the run's name covers (a CLEANER run's own; a baseline's at the schema's defaults, the paper's),
    else `eval-<8 hex>`, named by the parameters that differ. A baseline's name leaves SAAR's parameters out (they do
    not change its training), but SAAR at test time uses them: two gammas, two records (not `from_step`, which only
    schedules training)."""
    if cfg.saar.enabled:
        return "eval"
    defaults = schema_defaults()["saar"]
    delta = {k: v for k, v in OmegaConf.to_container(cfg.saar, resolve=True).items()
             if k not in ("enabled", "from_step") and v != defaults[k]}
    return f"eval-{hashlib.sha256(json.dumps(delta, sort_keys=True).encode()).hexdigest()[:8]}" if delta else "eval"


OUTPUTS = ("results/runs", "results/tuning", "results/report")  # what runs write (the SFT checkpoint is an input)


def git_state(repo: Path | None = None) -> dict[str, Any]:
    """The checkout's commit and its uncommitted changes (tracked files only, except the committed records, studies
    and reports that runs write: `OUTPUTS`), or nulls outside a git checkout."""
    repo = repo or REPO

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout

    try:
        return {"commit": git("rev-parse", "HEAD").strip(),
                "dirty": git("status", "--porcelain", "--untracked-files=no", "--", ".",
                             *(f":!{path}" for path in OUTPUTS)).splitlines()}
    except (subprocess.CalledProcessError, FileNotFoundError):
        return {"commit": None, "dirty": []}


def checked_git_state(cfg: DictConfig) -> dict[str, Any]:
    """`git_state()`; with `strict=true`, a ConfigError naming the uncommitted files unless there are none."""
    git = git_state()
    if cfg.strict and git["dirty"]:
        raise ConfigError("strict=true needs a committed tree, but these files have uncommitted changes: "
                          + ", ".join(line[3:] for line in git["dirty"]))
    return git


def environment(seed: int) -> dict[str, Any]:
    import torch

    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "git": git_state(),
        "packages": versions,
        "python": platform.python_version(),
        "seed": seed,
        "hardware": {"machine": platform.machine(), "system": platform.system(), "cpus": os.cpu_count(),
                     "processor": platform.processor() or None,
                     "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]},
    }


def _mapping(path: Path) -> dict[str, Any]:
    """A YAML or JSON file's mapping; ValueError naming the file if it is not one."""
    try:
        value = (yaml.safe_load if path.suffix == ".yaml" else json.loads)(path.read_text())
    except (ValueError, yaml.YAMLError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not readable ({str(e).splitlines()[0]})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path}: not a mapping")
    return value


def _json_lines(path: Path, finished: bool) -> list[dict[str, Any]]:
    """The JSON objects of a `.jsonl` file, one per line. An unfinished record may end in a partial line (a write
    cut by a kill), which is left out; any other line that does not parse raises ValueError naming it."""
    lines = path.read_text().splitlines()
    rows = []
    for number, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
        except ValueError:
            if not finished and number == len(lines):
                break
            raise ValueError(f"{path}: line {number} is not JSON") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}: line {number} is not a JSON object")
        rows.append(row)
    return rows


def record_problem(run_dir: Path) -> str | None:
    """Why the record in `run_dir` cannot be trusted, naming the file, or None. Its YAML and JSON files must parse
    to mappings; `metrics.jsonl`, where there is one, must hold its steps in increasing order, up to the last one once
    the run finished (`summary.json` names how many)."""
    summary_path, metrics = run_dir / "summary.json", run_dir / "metrics.jsonl"
    finished = summary_path.exists()
    try:
        for path in [run_dir / name for name in ("config.yaml", "env.json", "summary.json")] + \
                sorted(run_dir.glob("eval*.json")):
            if path.exists():
                _mapping(path)
        steps = [row.get("step") for row in _json_lines(metrics, finished)] if metrics.exists() else []
    except ValueError as e:
        return str(e)
    total = json.loads(summary_path.read_text()).get("steps") if finished else None
    if metrics.exists() and not (all(isinstance(x, int) and x >= 1 for x in steps) and steps == sorted(set(steps))
                                 and (total is None or (steps[-1] if steps else 0) == total)):
        return f"{metrics}: steps {_span(steps)}" + ("" if total is None else f", but the run finished {total} steps")
    return None


def steps_done(run_dir: Path) -> int:
    """How many steps of the run in `run_dir` have their metrics line (0 for none, or no record)."""
    metrics = run_dir / "metrics.jsonl"
    try:
        return len(_json_lines(metrics, finished=False)) if metrics.exists() else 0
    except ValueError:
        return 0


def _span(steps: list[Any]) -> str:
    return "none" if not steps else f"{steps[0]}..{steps[-1]} in {len(steps)} lines"


def set_aside(run_dir: Path) -> Path:
    """Move a corrupt record to `<runs_root>/corrupt/<name>-<time>/`, where nothing reads it as a run."""
    target = run_dir.parent / "corrupt" / f"{run_dir.name}-{time.strftime('%Y%m%dT%H%M%S')}"
    target.parent.mkdir(exist_ok=True)
    run_dir.rename(target)
    return target


def _write_json(path: Path, data: Any) -> None:
    write_lines_atomic(path, iter([json.dumps(data, indent=1, default=str)]))


class Terminated(SystemExit):
    """SIGTERM inside a run (`scancel`, `kill`): leave, so a rerun resumes from the last checkpoint. submitit
    ignores SIGTERM in its jobs (it waits for SLURM's timeout signal instead); a run record wants it to stop."""


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated(128 + signum)


def run_record(cfg: DictConfig, job: Callable[[Path], dict[str, Any]], log: Callable[[str], None] = print
               ) -> dict[str, Any]:
    """Run `job(run_dir)` in the run's folder, unless the folder says the run is finished; returns the summary.
    One process at a time holds a run's folder (an flock on `lock`): a second one waits, then finds it finished."""
    run_dir = Path(cfg.runs_root) / config_hash(cfg)
    git = checked_git_state(cfg)
    while True:
        run_dir.mkdir(parents=True, exist_ok=True)
        with open(run_dir / "lock", "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log(f"run {run_dir} is running in another process; waiting for it")
                fcntl.flock(lock, fcntl.LOCK_EX)
            except OSError as e:  # ENOLCK, EOPNOTSUPP, EINVAL: a filesystem without flock (Lustre without -o flock)
                raise ConfigError(f"runs_root={cfg.runs_root} is on a filesystem without file locks (flock: "
                                  f"{e.strerror}), which keep two processes out of one run's folder; put runs_root "
                                  "on one that has them (a local or NFSv4 disk, Lustre mounted with -o flock)") from None
            if not _still_there(lock, run_dir / "lock"):
                continue  # the folder was set aside while this process waited: take the new one
            problem = record_problem(run_dir)
            if problem is None:
                return _locked_run(cfg, run_dir, git, job, log)
            moved = set_aside(run_dir)
            log(f"run {run_dir}: its record is corrupt ({problem}); moved to {moved}; training it again from the start")


def _still_there(lock: Any, path: Path) -> bool:
    """Whether the open file `lock` is still the file at `path`."""
    try:
        return os.stat(path).st_ino == os.fstat(lock.fileno()).st_ino
    except FileNotFoundError:
        return False


def _locked_run(cfg: DictConfig, run_dir: Path, git: dict[str, Any], job: Callable[[Path], dict[str, Any]],
                log: Callable[[str], None]) -> dict[str, Any]:
    summary_path = run_dir / "summary.json"
    if summary_path.exists():
        log(f"run {run_dir} is finished; skipping it")
        return json.loads(summary_path.read_text())
    write_lines_atomic(run_dir / "config.yaml", iter([OmegaConf.to_yaml(cfg, resolve=True)]))
    env_path = run_dir / "env.json"
    env = json.loads(env_path.read_text()) if env_path.exists() else {**environment(cfg.seed), "invocations": []}
    env["invocations"].append({"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "commit": git["commit"],
                               "dirty": bool(git["dirty"]), "wall_s": None, "finished": False})
    _write_json(env_path, env)
    main_thread = threading.current_thread() is threading.main_thread()  # only it may set signal handlers
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    start = time.perf_counter()
    try:
        summary = job(run_dir)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
        env["invocations"][-1]["wall_s"] = round(time.perf_counter() - start, 3)
        env["invocations"][-1]["finished"] = summary_path.exists()
        env["wall_s"] = sum(i["wall_s"] or 0 for i in env["invocations"])
        _write_json(env_path, env)
    return summary
