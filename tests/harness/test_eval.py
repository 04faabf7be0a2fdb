"""harness.eval's choices that the end-to-end test (test_multirun) does not isolate."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from cleaner.rollout.episode import RolloutConfig
from cleaner.saar import SaarConfig
from harness.eval import compare, with_saar
from harness.records import REPO


def test_saar_on_at_test_time_applies_to_a_baseline_with_the_runs_parameters():
    baseline = RolloutConfig(max_turns=3, saar=SaarConfig(enabled=False, gamma=0.3, max_retries=2))
    on = with_saar(baseline)
    assert on.saar == SaarConfig(enabled=True, gamma=0.3, max_retries=2) and on.max_turns == 3
    assert with_saar(on) == on


def test_compare_reports_the_difference_and_the_overhead():
    result = compare({"accuracy": 0.5, "wall_s": 40.0}, {"accuracy": 0.625, "wall_s": 44.0})
    assert result["accuracy_delta"] == 0.125 and abs(result["latency_overhead"] - 0.1) < 1e-12


def test_an_evaluation_only_record_is_written_once_and_then_skipped(tmp_path):
    """algo.steps=0 evaluates model.path itself (here the lab's SFT checkpoint on 2 held-out problems): eval.json,
    samples.jsonl and a summary.json that marks the record finished; the same command again runs nothing."""
    command = [sys.executable, "-m", "harness.eval", "algo.steps=0", "algo.eval_problems=2", f"runs_root={tmp_path}"]
    env = {**os.environ, "CLEANER_THREADS": "1"}
    first = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    (run,) = tmp_path.iterdir()
    assert json.loads((run / "summary.json").read_text()) == {"steps": 0, "evaluation": "eval.json"}
    lab = json.loads((run / "eval.json").read_text())["benchmarks"]["lab"]
    assert lab["saar_off"]["trajectories"] == lab["saar_on"]["trajectories"] == 2
    assert "latency overhead" in first.stdout
    again = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "is finished; skipping it" in again.stdout + again.stderr
    assert json.loads((run / "env.json").read_text())["invocations"][-1]["finished"] is True


def test_benchmarks_need_an_evaluation_only_config(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "harness.eval", "preset=smollm2", "algo.steps=1",
                           f"runs_root={tmp_path}"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and not list(tmp_path.iterdir())
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "error: data=bench_math evaluates model.path on data.eval_paths: set algo.steps=0 and at least one benchmark "
        "(got algo.steps=1,")
