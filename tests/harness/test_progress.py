"""The sweep's progress rows and summary table, read from fixture records: shared overrides go to the caption,
each row shows what differs, unfinished runs say so."""

from __future__ import annotations

import json

from rich.console import Console

from harness.progress import progress_table, summary_table, sweep_runs


def write_job(sweep, job, run_dir, overrides, steps, lines, summary=None):
    (sweep / str(job)).mkdir(parents=True)
    (sweep / str(job) / "run.json").write_text(json.dumps({"run_dir": str(run_dir), "overrides": overrides,
                                                            "steps": steps}))
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    if summary is not None:
        (run_dir / "summary.json").write_text(json.dumps(summary))


def render(table) -> str:
    console = Console(width=200, record=True)
    console.print(table)
    return console.export_text()


def test_rows_and_tables_from_records(tmp_path):
    sweep, runs = tmp_path / "sweep", tmp_path / "runs"
    ev = {"accuracy": 0.75, "accuracy_stderr": 0.125, "final_failures_per_traj": 0.2, "trajectories": 8}
    write_job(sweep, 0, runs / "aaa", ["saar.gamma=0.3", "algo.steps=2"], 2,
              [{"step": 1, "accuracy": 0.5, "final_failures_per_traj": 0.25},
               {"step": 2, "accuracy": 0.625, "final_failures_per_traj": 0.125}], {"eval": ev})
    write_job(sweep, 1, runs / "bbb", ["saar.gamma=0.7", "algo.steps=2"], 2,
              [{"step": 1, "accuracy": 0.375, "final_failures_per_traj": 0.5}])
    rows = sweep_runs(sweep)
    assert [(r["run"], r["step"], r["steps"], r["accuracy"]) for r in rows] == [("aaa", 2, 2, 0.625),
                                                                                ("bbb", 1, 2, 0.375)]
    progress = render(progress_table(rows))
    assert "saar.gamma=0.3" in progress and "2/2" in progress and "finished" in progress
    assert "1/2" in progress and "running" in progress
    assert progress.strip().splitlines()[-1].strip() == "all runs: algo.steps=2"
    summary = render(summary_table(rows))
    assert "0.750 +- 0.125" in summary and "0.200" in summary and "not finished" in summary
    assert summary.strip().splitlines()[-1].strip() == "all runs: algo.steps=2"
