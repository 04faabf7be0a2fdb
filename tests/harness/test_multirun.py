"""A real multirun of the lab at a tiny size through submitit_local: one record per value, a rerun skips them all,
a finished run evaluates with SAAR off and on, and a sweep whose jobs are killed (SIGTERM) mid-way, then rerun,
ends with the records of an uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from harness.records import REPO

TINY = ["algo.steps=3", "algo.prompts_per_step=2", "algo.group_size=2", "algo.ppo_mini_batch_size=1",
        "algo.eval_problems=2", "saar.gamma=0.3,0.7"]
ENV = {**os.environ, "CLEANER_THREADS": "1", "PYTHONUNBUFFERED": "1"}  # a fixed thread count: equal float sums


def sweep(runs: Path, sweep_dir: Path) -> list[str]:
    return [sys.executable, "-m", "harness.sweep", "-m", *TINY, f"runs_root={runs}", f"hydra.sweep.dir={sweep_dir}"]


def records(runs: Path) -> dict[str, dict]:
    out = {}
    for run in sorted(runs.iterdir()):
        metrics = (run / "metrics.jsonl").read_text().splitlines() if (run / "metrics.jsonl").exists() else []
        out[run.name] = {
            "metrics": [json.loads(x) for x in metrics],
            "summary": json.loads((run / "summary.json").read_text()) if (run / "summary.json").exists() else None,
            "env": json.loads((run / "env.json").read_text()),
            "files": sorted(p.name for p in run.iterdir()),
        }
    return out


def without_timing(x):
    """Everything but wall-clock measurements (seconds, and the lookahead's share of the time)."""
    if isinstance(x, dict):
        return {k: without_timing(v) for k, v in x.items()
                if not k.endswith(("_s", "_s_this_invocation")) and k != "lookahead_time_share"}
    if isinstance(x, list):
        return [without_timing(v) for v in x]
    return x


def test_sweep_records_rerun_skips_and_a_killed_sweep_resumes_to_the_same_records(tmp_path):
    # 1. one record per value
    done = subprocess.run(sweep(tmp_path / "a", tmp_path / "sweep_a"), cwd=REPO, env=ENV, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    first = records(tmp_path / "a")
    assert len(first) == 2
    for rec in first.values():
        assert {"config.yaml", "env.json", "metrics.jsonl", "summary.json"} <= set(rec["files"])
        assert [m["step"] for m in rec["metrics"]] == [1, 2, 3]
        assert rec["summary"]["eval"]["trajectories"] == 2 and len(rec["env"]["invocations"]) == 1
    gammas = {yaml.safe_load((tmp_path / "a" / name / "config.yaml").read_text())["saar"]["gamma"] for name in first}
    assert gammas == {0.3, 0.7}
    assert "sweep summary" in done.stdout and done.stdout.count("saar.gamma=") >= 2

    # 2. a rerun skips them all: no new invocation, no new metrics line
    again = subprocess.run(sweep(tmp_path / "a", tmp_path / "sweep_a2"), cwd=REPO, env=ENV, capture_output=True,
                           text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert records(tmp_path / "a") == first
    logs = "".join(p.read_text() for p in (tmp_path / "sweep_a2").glob(".submitit/*/*_log.out"))
    assert logs.count("is finished; skipping it") == 2

    # 2b. held-out evaluation of one of those runs, SAAR off and on at test time; an unfinished run is refused
    evaluate = [sys.executable, "-m", "harness.eval", *TINY[:-1], "saar.gamma=0.3", f"runs_root={tmp_path / 'a'}"]
    ev = subprocess.run(evaluate, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert ev.returncode == 0, ev.stderr[-3000:]
    (result_path,) = (tmp_path / "a").glob("*/eval.json")
    result = json.loads(result_path.read_text())
    (lab,) = result["benchmarks"].values()
    off, on = lab["saar_off"], lab["saar_on"]
    assert off["trajectories"] == on["trajectories"] == 2 and off["rollbacks_triggered_per_traj"] == 0
    assert lab["accuracy_delta"] == on["accuracy"] - off["accuracy"] and "latency overhead" in ev.stdout
    assert lab["latency_overhead"] == on["wall_s"] / off["wall_s"] - 1
    refused = subprocess.run(evaluate + ["seed=99"], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert refused.returncode == 2 and "has not finished; train it first" in refused.stderr

    # 3. the same sweep elsewhere, its jobs killed once a step is recorded, then rerun
    proc = subprocess.Popen(sweep(tmp_path / "b", tmp_path / "sweep_b"), cwd=REPO, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while not any(p.read_text().strip() for p in (tmp_path / "b").glob("*/metrics.jsonl")):
        assert time.monotonic() < deadline and proc.poll() is None, "no step was recorded"
        time.sleep(0.2)
    for job in (tmp_path / "sweep_b" / ".submitit").iterdir():  # submitit_local: a job's id is its process id
        if job.name.isdigit():
            try:
                os.kill(int(job.name), signal.SIGTERM)
            except ProcessLookupError:
                pass
    assert proc.wait(timeout=300) != 0, "a sweep whose jobs were killed must not report success"
    killed = records(tmp_path / "b")
    assert any(r["summary"] is None for r in killed.values()), "no run was interrupted"
    resumed = subprocess.run(sweep(tmp_path / "b", tmp_path / "sweep_b2"), cwd=REPO, env=ENV, capture_output=True,
                             text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    final = records(tmp_path / "b")
    assert final.keys() == first.keys()
    for name, rec in final.items():
        assert [m["step"] for m in rec["metrics"]] == [1, 2, 3]  # no step lost or repeated
        for got, want in zip(without_timing(rec["metrics"]), without_timing(first[name]["metrics"])):
            assert got == want, {k: (got[k], want.get(k)) for k in got if got[k] != want.get(k)}
        assert without_timing(rec["summary"]) == without_timing(first[name]["summary"])
        if killed[name]["summary"] is None:
            assert [i["finished"] for i in rec["env"]["invocations"]] == [False, True]
