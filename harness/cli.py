"""What the entry points share (`cli.main`): overrides checked against the schema (Hydra's own message for an
unknown key does not list the valid ones), sweep files found from any folder, every job of a sweep checked before
any starts (`check_sweep`), and a refused config or a missing prerequisite printed as one line with exit status 2
instead of a traceback. A sweep's job that fails does not stop the others: its error goes to its folder (`ERROR_FILE`)
and the summary table (`harness.progress`). Ctrl-C prints one line and exits with 130; a rerun of the same command
resumes. The schema registers itself when `harness.schema` is imported.

Nothing here imports a tensor library: `--help` and an unknown key answer in well under two seconds.
"""

from __future__ import annotations

import _thread
import dataclasses
import json
import re
import signal
import sys
import threading
import traceback
import typing
from pathlib import Path
from typing import Any, Callable, NoReturn

import hydra
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from omegaconf import DictConfig

from cleaner.sandbox.backends import SandboxUnavailable
from cleaner.trajectory import write_lines_atomic
from harness import records, schema
from harness.records import REPO

REFUSED = (schema.ConfigError, SandboxUnavailable)  # a config or a machine a run cannot start with: exit 2
ERROR_FILE = "error.txt"  # in a failed sweep job's Hydra folder: its exception, one line
Check = Callable[[DictConfig, bool], None]  # an entry point's check: (run config, sandbox runs here) -> None
CONF = REPO / "harness" / "conf"


def searchpath_override() -> str:
    """Makes `sweeps/` the config group `sweeps` (`+sweeps=gamma`), wherever the command runs from."""
    return f"hydra.searchpath=[file://{REPO}]"


def composed(config: str, overrides: list[str], hydra: bool = False) -> DictConfig:
    """`harness/conf/<config>.yaml` composed with `overrides` (and the sweeps' search path), outside a Hydra app;
    with `hydra`, Hydra's own keys too."""
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose(config, overrides=[*overrides, searchpath_override()], return_hydra_config=hydra)

_KEY = re.compile(r"^[A-Za-z_][\w.]*$")
_GROUPS = (*schema.GROUPS, "launcher", "preset")  # `group=option` arguments: Hydra checks the option


def unknown_key(key: str) -> str | None:
    """Why the dotted `key` is not in the run schema, naming the valid keys at that level; None if it is."""
    cls: Any = schema.RunSchema
    path: list[str] = []
    for part in key.split("."):
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
            return None  # inside a dict field (data.eval_paths.<name>, search.space.<key>): any key is valid
        fields = typing.get_type_hints(cls)
        if part not in fields:
            where = ".".join(path) or "the config"
            return f"unknown key {key!r}: {where} has no {part!r}; valid keys: {', '.join(fields)}"
        cls = fields[part]
        cls = next((a for a in typing.get_args(cls) if a is not type(None)), cls)  # Optional[X] -> X
        path.append(part)
    return None


def _sets_a_search(arg: str) -> bool:
    """Whether an argument gives the run a search: `search=...`, or a sweep file (`+sweeps=NAME`) that has one."""
    key, _, value = arg.lstrip("+~").partition("=")
    if key == "search":
        return True
    sweep = REPO / "sweeps" / f"{value}.yaml"
    return key == "sweeps" and sweep.exists() and "\nsearch:" in "\n" + sweep.read_text()


def check_overrides(argv: list[str]) -> None:
    """Exit with status 2 and one message if a `key=value` argument names a key the schema lacks. Group choices
    (`model=qwen3_4b`) and Hydra's own keys are left to Hydra, which lists the valid options itself."""
    searching = any(_sets_a_search(arg) for arg in argv)
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            continue
        key = arg.split("=", 1)[0]
        if key.startswith(("hydra.", "+", "~")) or not _KEY.match(key) or "." not in key and key in _GROUPS:
            continue
        problem = unknown_key(key)
        if not problem and key.startswith("search.") and not searching:  # `search` is None until a sweep sets it
            problem = f"{key} sets a search, which has no space yet: start from +sweeps=optuna (sweeps/optuna.yaml)"
        if problem:
            print(f"error: {problem}", file=sys.stderr, flush=True)
            sys.exit(2)


def one_line(e: BaseException) -> str:
    """An exception as one line, `Type: message`, whatever its type. A failed submitit job's exception carries its
    job's traceback: the job's own exception is the last lines of it, after the last indented (frame) line."""
    trace = str(e).split("-" * 22)[1] if str(e).count("-" * 22) >= 2 else ""
    tail: list[str] = []
    for line in reversed(trace.rstrip().splitlines()):
        if not line.strip() or line.startswith((" ", "\t")):
            break
        tail.insert(0, line.strip())
    return " ".join(tail) if tail else f"{type(e).__name__}: {' '.join(str(e).split())}"


def guarded(fn: Callable[..., Any], *args: Any) -> Any:
    """`fn(*args)`, with a refused config or a missing prerequisite turned into `error: <message>`, exit status 2."""
    try:
        return fn(*args)
    except REFUSED as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)


def announce(cfg: DictConfig, run_dir: Path) -> None:
    """In a sweep's job, where the job's record is (`run.json` in its Hydra folder), for the progress lines and the
    summary table; whether the run had finished before with an intact record (`reused`; a corrupt one is trained
    again)."""
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        out = Path(HydraConfig.get().runtime.output_dir)
        reused = (run_dir / "summary.json").exists() and records.record_problem(run_dir) is None
        found = {"run_dir": str(run_dir.resolve()), "steps": cfg.algo.steps, "reused": reused}
        write_lines_atomic(out / "run.json", iter([json.dumps(found)]))


def interrupted(cfg: DictConfig | None) -> NoReturn:
    """Ctrl-C: one line saying how far the run got and how to resume, exit status 130."""
    where = ""
    if cfg is not None:
        done = records.steps_done(Path(cfg.runs_root) / records.config_hash(cfg))
        where = f" after step {done} of {cfg.algo.steps}" if cfg.algo.steps else ""
    print(f"interrupted{where}; rerun the same command to resume (finished runs are skipped, the others resume from "
          "their last checkpoint)", file=sys.stderr, flush=True)
    sys.exit(130)


def hold_interrupts() -> None:
    """In a sweep's driver: Ctrl-C, which the terminal sends to every process of the sweep, reaches only the driver
    (this thread, then KeyboardInterrupt in the main one) and the jobs (`main` unblocks it there), not submitit's
    job controllers between them, which would each print a traceback. SIGINT blocked here stays blocked in the
    processes started from here. A driver started with SIGINT ignored (`command &` in a script) keeps ignoring it,
    as its jobs do: Python installs no handler then, and `interrupt_main` would do nothing."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGINT])

    def wait() -> None:
        signal.sigwait([signal.SIGINT])
        _thread.interrupt_main()

    threading.Thread(target=wait, daemon=True, name="ctrl-c").start()


def check_sweep(config: str, argv: list[str], check: Check) -> None:
    """`-m`: every job of the sweep composed as Hydra's basic sweeper will (the grid of `key=a,b` and of a sweep
    file's `hydra.sweeper.params`) and checked here, before any is launched or queued. The first refused job is
    named in one line, exit status 2. The sandbox is checked here unless the jobs run on SLURM nodes (they check
    their own when they start)."""
    hydra_args = [a for a in argv if a.startswith("hydra.")]
    task_args = [a for a in argv if not a.startswith(("-", "hydra."))]
    parse = OverridesParser.create().parse_overrides
    fixed = [o.input_line for o in parse(task_args) if not o.is_sweep_override()]
    with initialize_config_dir(str(CONF), version_base="1.3"):
        master = compose(config, overrides=[*hydra_args, *fixed, searchpath_override()], return_hydra_config=True)
        params = [f"{k}={v}" for k, v in (master.hydra.sweeper.params or {}).items()]
        [jobs] = BasicSweeper.split_arguments(parse([*params, *task_args]), None)
        here = "slurm" not in master.hydra.launcher._target_.lower()
        for number, overrides in enumerate(jobs, 1):
            try:
                check(compose(config, overrides=[*overrides, searchpath_override()]), here)
            except REFUSED as e:
                print(f"error: job {number} of {len(jobs)} ({' '.join(overrides)}): {e} (no job was started)",
                      file=sys.stderr, flush=True)
                sys.exit(2)


def main(run: Callable[[DictConfig], Any], job: str, config: str = "train",
         check: Check = lambda cfg, sandbox_here: None) -> Any:
    """The command line of an entry point: `if __name__ == "__main__": cli.main(run, "train", check=check)`. Checks
    the arguments, composes `harness/conf/<config>.yaml` with them (`+sweeps=NAME` reads `sweeps/NAME.yaml`) and
    calls `run(cfg)` once per run; with `-m`, `check` first runs on every job's config (`check_sweep`). `job` names
    Hydra's job (its log file, submitit's job name). A sweep's job that raises prints its traceback to its log,
    writes the exception as one line to its folder (`ERROR_FILE`) and returns None, so that the other jobs go on
    and the summary table says which failed and why (`harness.progress`, which then exits with status 1)."""
    argv = sys.argv[1:]
    check_overrides(argv)
    if "-m" in argv or "--multirun" in argv:
        check_sweep(config, argv, check)
        hold_interrupts()
    # beside the user's overrides (Hydra's parser takes one run of them: a flag between two runs is refused)
    at = next((i + 1 for i, a in enumerate(sys.argv) if i and "=" in a and not a.startswith("-")), len(sys.argv))
    sys.argv[at:at] = [searchpath_override(), f"hydra.job.name={job}"]

    def task(cfg: DictConfig) -> Any:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])  # a sweep's job: Ctrl-C stops it (hold_interrupts)
        try:
            return guarded(run, cfg)
        except KeyboardInterrupt:
            interrupted(cfg)
        except Exception as e:
            if HydraConfig.get().mode != RunMode.MULTIRUN:
                raise
            traceback.print_exc()
            (Path(HydraConfig.get().runtime.output_dir) / ERROR_FILE).write_text(one_line(e) + "\n")
            return None

    try:
        return hydra.main(config_path=str(CONF), config_name=config, version_base="1.3")(task)()
    except KeyboardInterrupt:
        interrupted(None)
