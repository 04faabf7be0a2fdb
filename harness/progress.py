"""A sweep's progress and its summary table, as a Hydra callback in the launching process.

Each job's Hydra folder holds its overrides (`.hydra/overrides.yaml`), `run.json` once the job knows its record
(`cli.announce`) and `error.txt` if it failed (`cli.ERROR_FILE`). While the jobs run (`live: true`, `harness.sweep`), a
thread reads those and each record's `metrics.jsonl`: on a terminal it redraws one line per run; otherwise (a log
file, CI) it prints a plain line when a run starts, finishes or fails, and at most once a minute while its step
advances. At the end, one table of the runs' held-out results, where their records are, which runs were reused,
and how to make the report; exit status 1 if a job failed. Nothing here changes a record, and a record being
written (a partial last line) or corrupt is shown as such, never raised.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from rich.console import Console
from rich.live import Live
from rich.table import Table

from harness.records import record_problem, steps_done
from harness.cli import ERROR_FILE

LINE_EVERY_S = 60.0  # off a terminal: at most one progress line per run and minute while its step advances


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _last_metrics(run_dir: Path) -> dict[str, Any]:
    """The last complete metrics line of a record (one being written may end in a partial line)."""
    path = run_dir / "metrics.jsonl"
    for line in reversed(path.read_text().splitlines() if path.exists() else []):
        try:
            return json.loads(line)
        except ValueError:
            continue
    return {}


def sweep_runs(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per job folder: its overrides, record, state (`waiting`, `running`, `finished`, `reused`, `failed`,
    `corrupt`) and what its record says so far."""
    rows = []
    jobs = sorted((p for p in sweep_dir.iterdir() if p.name.isdigit()), key=lambda p: int(p.name)) \
        if sweep_dir.is_dir() else []
    for job in jobs:
        overrides_path = job / ".hydra" / "overrides.yaml"
        overrides = yaml.safe_load(overrides_path.read_text()) if overrides_path.exists() else []
        info = _json(job / "run.json") or {}
        error = (job / ERROR_FILE).read_text().strip() if (job / ERROR_FILE).exists() else None
        run_dir = Path(info["run_dir"]) if info else None
        summary = _json(run_dir / "summary.json") if run_dir and (run_dir / "summary.json").exists() else None
        last = _last_metrics(run_dir) if run_dir else {}
        state = "waiting" if run_dir is None else "running"
        if summary is not None:
            problem = record_problem(run_dir)
            state = f"corrupt: {problem}" if problem else "reused" if info.get("reused") else "finished"
        if error is not None:
            state = f"failed: {error}"
        rows.append({"job": int(job.name), "overrides": overrides, "run": run_dir.name if run_dir else "-",
                     "run_dir": run_dir, "step": steps_done(run_dir) if run_dir else 0, "steps": info.get("steps"),
                     "accuracy": last.get("accuracy"), "failures": last.get("final_failures_per_traj"),
                     "summary": summary, "state": state})
    return rows


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _varying(rows: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """(each row's overrides that not every row shares, as one string; the shared ones)."""
    shared = set.intersection(*(set(r["overrides"]) for r in rows)) if rows else set()
    own = [" ".join(o for o in r["overrides"] if o not in shared) or "(defaults)" for r in rows]
    return own, sorted(shared)


def progress_line(row: dict[str, Any], own: str) -> str:
    """One run's progress as a plain line (off a terminal)."""
    steps = "" if row["steps"] is None else f"step {row['step']}/{row['steps']}, "
    return (f"[sweep] job {row['job']} {own} (run {row['run']}): {steps}train acc {_fmt(row['accuracy'])}, tool "
            f"failures/traj {_fmt(row['failures'])}, {row['state']}")


def progress_table(rows: list[dict[str, Any]]) -> Table:
    own, shared = _varying(rows)
    table = Table(title="runs", title_justify="left", caption=f"all runs: {' '.join(shared)}" if shared else None,
                  caption_justify="left")
    for col in ("overrides", "run", "step", "train acc", "tool failures / traj", "state"):
        table.add_column(col)
    for r, overrides in zip(rows, own):
        table.add_row(overrides, r["run"], f"{r['step']}/{r['steps'] if r['steps'] is not None else '-'}",
                      _fmt(r["accuracy"]), _fmt(r["failures"]), r["state"])
    return table


def summary_table(rows: list[dict[str, Any]]) -> Table:
    own, shared = _varying(rows)
    table = Table(title="sweep summary: held-out, SAAR off at test time", title_justify="left",
                  caption=f"all runs: {' '.join(shared)}" if shared else None, caption_justify="left")
    for col in ("overrides", "run", "pass@1", "tool failures / traj", "samples", "state"):
        table.add_column(col)
    for r, overrides in zip(rows, own):
        ev = (r["summary"] or {}).get("eval") if r["state"] in ("finished", "reused") else None
        if ev is None:
            table.add_row(overrides, r["run"], "", "", "", r["state"])
            continue
        table.add_row(overrides, r["run"], f"{ev['accuracy']:.3f} +- {ev['accuracy_stderr']:.3f}",
                      _fmt(ev["final_failures_per_traj"]), str(ev["trajectories"]), r["state"])
    return table


def _shown(path: Path) -> str:
    """`path` relative to the working folder when it is under it (as a user typed it), else as it is."""
    return str(path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path)


def where_next(rows: list[dict[str, Any]]) -> list[str]:
    """Below the summary table, unwrapped: where the records are and the command that makes the report."""
    roots = sorted({_shown(r["run_dir"].parent) for r in rows if r["run_dir"] is not None})
    if not roots:
        return []
    return [f"records: {', '.join(roots)}/<run>/ (reused: finished before this sweep, not run again)",
            f"the paper's tables from them: python -m harness.report --runs {roots[0]}"]


class SweepProgress(Callback):
    def __init__(self, live: bool = True, refresh_s: float = 2.0) -> None:
        self.live = live
        self.refresh_s = refresh_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __getstate__(self) -> dict[str, Any]:  # the launcher pickles callbacks into each job; the thread stays
        return {"live": self.live, "refresh_s": self.refresh_s}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not self.live:
            return
        sweep_dir = Path(config.hydra.sweep.dir)
        console = Console(stderr=True)
        watch = self._redraw if console.is_terminal else self._lines
        self._thread = threading.Thread(target=watch, args=(sweep_dir, console), daemon=True)
        self._thread.start()

    def _redraw(self, sweep_dir: Path, console: Console) -> None:
        with Live(progress_table([]), console=console, auto_refresh=False, transient=True) as live:
            while not self._stop.wait(self.refresh_s):
                live.update(progress_table(sweep_runs(sweep_dir)), refresh=True)

    def _lines(self, sweep_dir: Path, console: Console) -> None:
        shown: dict[int, tuple[str, int, float]] = {}  # job -> (state, step, time) when its last line was printed
        stopping = False
        while not stopping:  # one last pass once the sweep ended, for the states it ended in
            stopping = self._stop.wait(self.refresh_s)
            rows = sweep_runs(sweep_dir)
            for row, own in zip(rows, _varying(rows)[0]):
                state, step, at = shown.get(row["job"], ("", -1, 0.0))
                now = time.monotonic()
                if row["state"] != state or row["step"] > step and now - at >= LINE_EVERY_S:
                    print(progress_line(row, own), file=sys.stderr, flush=True)
                    shown[row["job"]] = (row["state"], row["step"], now)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = sweep_runs(sweep_dir)
        Console(width=160).print(summary_table(rows))
        print("\n".join(where_next(rows)), flush=True)
        failed = [r for r in rows if r["state"].startswith("failed")]
        if failed:
            print(f"{len(failed)} of {len(rows)} runs failed (the table says why; each job's log is under "
                  f"{sweep_dir})", file=sys.stderr, flush=True)
            sys.exit(1)
