"""The sweep's live progress and its summary table, as a Hydra callback in the launching process.

Each job writes `run.json` (its record folder and overrides) into its Hydra output folder; while the jobs run, a
thread reads those and each record's `metrics.jsonl`, and redraws one line per run. At the end, one table of the
runs' held-out results. Nothing here changes a record.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from rich.console import Console
from rich.live import Live
from rich.table import Table


def sweep_runs(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per job that has started: its overrides, record folder, and what the record says so far."""
    rows = []
    for info_path in sorted(sweep_dir.glob("*/run.json"), key=lambda p: int(p.parent.name)
                            if p.parent.name.isdigit() else 0):
        info = json.loads(info_path.read_text())
        run_dir = Path(info["run_dir"])
        metrics = run_dir / "metrics.jsonl"
        lines = metrics.read_text().splitlines() if metrics.exists() else []
        last = json.loads(lines[-1]) if lines else {}
        summary_path = run_dir / "summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
        rows.append({"overrides": info["overrides"], "run": run_dir.name,
                     "step": last.get("step", 0), "steps": info["steps"], "accuracy": last.get("accuracy"),
                     "failures": last.get("final_failures_per_traj"), "summary": summary})
    return rows


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _varying(rows: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """(each row's overrides that not every row shares, as one string; the shared ones)."""
    shared = set.intersection(*(set(r["overrides"]) for r in rows)) if rows else set()
    own = [" ".join(o for o in r["overrides"] if o not in shared) or "(defaults)" for r in rows]
    return own, sorted(shared)


def progress_table(rows: list[dict[str, Any]]) -> Table:
    own, shared = _varying(rows)
    table = Table(title="runs", title_justify="left", caption=f"all runs: {' '.join(shared)}" if shared else None,
                  caption_justify="left")
    for col in ("overrides", "run", "step", "train acc", "tool failures / traj", "state"):
        table.add_column(col)
    for r, overrides in zip(rows, own):
        table.add_row(overrides, r["run"], f"{r['step']}/{r['steps']}", _fmt(r["accuracy"]),
                      _fmt(r["failures"]), "finished" if r["summary"] else "running")
    return table


def summary_table(rows: list[dict[str, Any]]) -> Table:
    own, shared = _varying(rows)
    table = Table(title="sweep summary: held-out, SAAR off at test time", title_justify="left",
                  caption=f"all runs: {' '.join(shared)}" if shared else None, caption_justify="left")
    for col in ("overrides", "run", "pass@1", "tool failures / traj", "samples"):
        table.add_column(col)
    for r, overrides in zip(rows, own):
        ev = (r["summary"] or {}).get("eval")
        if ev is None:
            table.add_row(overrides, r["run"], "not finished", "", "")
            continue
        table.add_row(overrides, r["run"], f"{ev['accuracy']:.3f} +- {ev['accuracy_stderr']:.3f}",
                      _fmt(ev["final_failures_per_traj"]), str(ev["trajectories"]))
    return table


class SweepProgress(Callback):
    def __init__(self, refresh_s: float = 2.0) -> None:
        self.refresh_s = refresh_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __getstate__(self) -> dict[str, Any]:  # the launcher pickles callbacks into each job; the thread stays
        return {"refresh_s": self.refresh_s}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        console = Console(stderr=True)

        def redraw() -> None:
            with Live(progress_table([]), console=console, auto_refresh=False, transient=True) as live:
                while not self._stop.wait(self.refresh_s):
                    live.update(progress_table(sweep_runs(sweep_dir)), refresh=True)

        self._thread = threading.Thread(target=redraw, daemon=True)
        self._thread.start()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        Console().print(summary_table(sweep_runs(Path(config.hydra.sweep.dir))))
