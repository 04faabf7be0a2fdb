"""The sweep's progress rows and summary table, read from fixture job folders laid out as Hydra and `cli.announce`
write them: shared overrides go to the caption, each row shows what differs and its state."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from rich.console import Console

from harness.cli import ERROR_FILE
from harness.progress import progress_line, progress_table, summary_table, sweep_runs, where_next


def write_job(sweep, job, run_dir, overrides, steps, lines, summary=None, reused=False):
    (sweep / str(job) / ".hydra").mkdir(parents=True)
    (sweep / str(job) / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if run_dir is None:
        return
    (sweep / str(job) / "run.json").write_text(json.dumps({"run_dir": str(run_dir), "steps": steps,
                                                            "reused": reused}))
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    if summary is not None:
        (run_dir / "summary.json").write_text(json.dumps(summary))


def render(table) -> str:
    console = Console(width=400, record=True)
    console.print(table)
    return console.export_text()


def test_rows_and_tables_from_records(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sweep, runs = Path("sweep"), Path("runs")
    ev = {"accuracy": 0.75, "accuracy_stderr": 0.125, "final_failures_per_traj": 0.2, "trajectories": 8}
    write_job(sweep, 0, runs / "aaa", ["saar.gamma=0.3", "algo.steps=2"], 2,
              [{"step": 1, "accuracy": 0.5, "final_failures_per_traj": 0.25},
               {"step": 2, "accuracy": 0.625, "final_failures_per_traj": 0.125}], {"steps": 2, "eval": ev})
    write_job(sweep, 1, runs / "bbb", ["saar.gamma=0.7", "algo.steps=2"], 2,
              [{"step": 1, "accuracy": 0.375, "final_failures_per_traj": 0.5}])
    rows = sweep_runs(sweep)
    assert [(r["run"], r["step"], r["steps"], r["accuracy"], r["state"]) for r in rows] == [
        ("aaa", 2, 2, 0.625, "finished"), ("bbb", 1, 2, 0.375, "running")]
    progress = render(progress_table(rows))
    assert "saar.gamma=0.3" in progress and "2/2" in progress and "finished" in progress
    assert "1/2" in progress and "running" in progress
    assert progress.strip().splitlines()[-1].strip() == "all runs: algo.steps=2"
    summary = render(summary_table(rows))
    assert "0.750 +- 0.125" in summary and "0.200" in summary and "running" in summary
    assert where_next(rows) == ["records: runs/<run>/ (reused: finished before this sweep, not run again)",
                                "the paper's tables from them: python -m harness.report --runs runs"]
    assert progress_line(rows[1], "saar.gamma=0.7") == (
        "[sweep] job 1 saar.gamma=0.7 (run bbb): step 1/2, train acc 0.375, tool failures/traj 0.500, running")


def test_each_state_is_read_from_the_job_folder(tmp_path):
    """waiting (no record yet), reused (finished before the sweep), failed (the job's error line), corrupt (a
    finished record whose metrics stop short of its summary): each row says which, with the reason."""
    sweep, runs = tmp_path / "sweep", tmp_path / "runs"
    step = [{"step": 1, "accuracy": 0.5, "final_failures_per_traj": 0.0}]
    write_job(sweep, 0, None, ["seed=0"], 1, [])
    write_job(sweep, 1, runs / "r1", ["seed=1"], 1, step, {"steps": 1}, reused=True)
    write_job(sweep, 2, runs / "r2", ["seed=2"], 1, [])
    (sweep / "2" / ERROR_FILE).write_text("error: the sandbox is not ready\n")
    write_job(sweep, 3, runs / "r3", ["seed=3"], 2, step, {"steps": 2})
    states = [r["state"] for r in sweep_runs(sweep)]
    assert states[:3] == ["waiting", "reused", "failed: error: the sandbox is not ready"]
    assert states[3] == f"corrupt: {runs / 'r3' / 'metrics.jsonl'}: steps 1..1 in 1 lines, but the run finished 2 steps"
