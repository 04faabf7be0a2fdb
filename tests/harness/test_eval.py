"""harness.eval's choices that the end-to-end test (test_multirun) does not isolate."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import pytest

from cleaner.saar import SaarConfig
from harness.eval import compare, off_and_on, saar_at_test_time
from harness.records import REPO


def test_saar_on_at_test_time_applies_to_a_baseline_with_the_runs_parameters():
    baseline = SaarConfig(enabled=False, gamma=0.3, max_retries=2)
    on = saar_at_test_time(baseline, True)
    assert on == SaarConfig(enabled=True, gamma=0.3, max_retries=2)
    assert saar_at_test_time(on, True) == on and saar_at_test_time(on, False) == baseline


def test_saar_from_step_schedules_training_only(composed):
    """A run with saar.from_step is evaluated with SAAR on (or off) from the start, under the same record name and
    test-time setting as without it, so evaluations made before the key existed stay current. Breakages caught:
    `from_step` kept in `saar_at_test_time`, in `test_time_saar`'s record, in `evaluation_name`'s delta."""
    from harness.eval import test_time_saar
    from harness.records import evaluation_name

    assert saar_at_test_time(SaarConfig(from_step=5), True) == SaarConfig()
    assert test_time_saar(composed(["saar.from_step=5"])) == test_time_saar(composed())
    assert "from_step" not in test_time_saar(composed())
    assert evaluation_name(composed(["saar=baseline", "saar.from_step=5"])) == "eval"


def test_compare_reports_the_difference_and_the_overhead():
    side = {"problems": 8, "generated_tokens": 100, "retry_tokens": 0}
    result = compare({**side, "accuracy": 0.5, "wall_s": 40.0}, {**side, "accuracy": 0.625, "wall_s": 44.0})
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
    written = (run / "eval.json").stat().st_mtime_ns
    again = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and f"evaluation {run / 'eval.json'} is current; skipping it" in again.stdout
    assert (run / "eval.json").stat().st_mtime_ns == written
    assert json.loads((run / "env.json").read_text())["invocations"][-1]["finished"] is True
    # asked for more latency repeats, the same record is evaluated again, interleaved; the metrics do not move
    repeated = subprocess.run([*command, "latency_repeats=2"], cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=600)
    assert repeated.returncode == 0, repeated.stderr[-3000:]
    assert list(tmp_path.iterdir()) == [run] and "median of 2 interleaved repeats" in repeated.stdout
    result = json.loads((run / "eval.json").read_text())
    assert result["latency_repeats"] == 2 and len(result["benchmarks"]["lab"]["latency"]["wall_s_on"]) == 2
    def timeless(metrics):
        return {k: v for k, v in metrics.items() if k != "wall_s"}

    for side in ("saar_off", "saar_on"):
        assert timeless(result["benchmarks"]["lab"][side]) == timeless(lab[side])


def test_benchmarks_need_an_evaluation_only_config(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "harness.eval", "preset=smollm2", "algo.steps=1",
                           f"runs_root={tmp_path}"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and not list(tmp_path.iterdir())
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "error: data=bench_math evaluates model.path on data.eval_paths: set algo.steps=0 and at least one benchmark "
        "(got algo.steps=1,")


def test_a_model_served_by_sglang_is_evaluated_with_saar_off_and_on(tmp_path, json_server, bench_math_root):
    """`engine=sglang`: SmolLM2's prompts go as token ids to a fake `/generate` server, which writes a failing cell,
    then (after the error) its fix, then an answer. SAAR off keeps the failure; SAAR on splices the fix, so the
    final trajectories differ exactly as the paper's Table 4 setting needs."""
    from cleaner.models import load_tokenizer

    tok = load_tokenizer("smollm2")
    end = tok.convert_tokens_to_ids("<|im_end|>")

    def generate(body):
        context = tok.decode(body["input_ids"])
        if "print(10 // 2)" in context:  # the fix ran
            text = "So the answer is \\boxed{5}."
        elif "print(10 // 0)" in context:  # the failure and its error are in the context
            text = "Fix it.\n```python\nprint(10 // 2)\n```"
        else:
            text = "Compute it.\n```python\nprint(10 // 0)\n```"
        ids = tok.encode(text, add_special_tokens=False)[: body["sampling_params"]["max_new_tokens"] - 1] + [end]
        return {"output_ids": ids, "meta_info": {"output_token_logprobs": [[-0.25, i, None] for i in ids]}}

    server = json_server(generate)
    command = [sys.executable, "-m", "harness.eval", "preset=smollm2", "engine=sglang", f"engine.urls=[{server.url}]",
               "~data.eval_paths.aime24", "~data.eval_paths.aime25", "algo.eval_problems=2", "algo.eval_samples=1", f"runs_root={tmp_path}"]
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = tmp_path.iterdir()
    result = json.loads((run / "eval.json").read_text())["benchmarks"]
    assert list(result) == ["math500"]
    off, on = result["math500"]["saar_off"], result["math500"]["saar_on"]
    assert off["trajectories"] == on["trajectories"] == 2
    assert (off["first_attempt_failures_per_traj"], off["final_failures_per_traj"]) == (1.0, 1.0)
    assert (on["first_attempt_failures_per_traj"], on["final_failures_per_traj"]) == (1.0, 0.0)
    assert (off["rollbacks_recovered_per_traj"], on["rollbacks_recovered_per_traj"]) == (0.0, 1.0)
    assert on["splices_shallow"] + on["splices_deep"] == 2
    # warm-up (1 problem: 3 generations) + off (2 x 3) + on (2 x 3: the failure, its retry, the answer)
    assert len(server.requests) == 15
    assert {b["sampling_params"]["temperature"] for b in server.requests} == {0.7}


def test_sglang_needs_servers_and_benchmarks(tmp_path):
    command = [sys.executable, "-m", "harness.eval", "engine=sglang", f"runs_root={tmp_path}"]
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: engine=sglang evaluates model.path on benchmarks (algo.steps=0, data.eval_paths) through the servers "
        "of engine.urls, which must not be empty (got data=lab, engine.urls=[])")


def test_latency_over_interleaved_repeats_by_hand():
    """Three repeats: overheads 10%, 5%, 10% (median 10%); the on side took 1.0, 0.6, 1.1 s more (mean 0.9 s);
    seconds per problem are the median walls over 4 problems."""
    off = {"accuracy": 0.5, "wall_s": 10.0, "problems": 4, "generated_tokens": 100, "retry_tokens": 0}
    on = {"accuracy": 0.75, "wall_s": 11.0, "problems": 4, "generated_tokens": 130, "retry_tokens": 30}
    result = compare(off, on, {False: [10.0, 12.0, 11.0], True: [11.0, 12.6, 12.1]})
    latency = result["latency"]
    assert result["accuracy_delta"] == 0.25 and result["latency_overhead"] == pytest.approx(0.10)
    assert latency["overheads"] == pytest.approx([0.10, 0.05, 0.10])
    assert latency["extra_seconds"]["mean"] == pytest.approx(0.9) and latency["extra_seconds"]["n"] == 3
    assert (latency["seconds_per_problem_off"], latency["seconds_per_problem_on"]) == (11.0 / 4, pytest.approx(12.1 / 4))
    assert (latency["extra_tokens"], latency["retry_tokens_on"]) == (30, 30)
    # mean 0.0833, stderr 0.0167, t_0.975 on 2 degrees of freedom 4.303: 0.0833 -+ 0.0717
    assert latency["overhead_mean_interval95"] == pytest.approx([0.0116, 0.1550], abs=1e-4)


def test_the_sides_run_interleaved_and_the_metrics_are_the_first_runs():
    calls = []

    async def side(on):
        calls.append(on)
        return ({"accuracy": 0.5, "wall_s": float(len(calls)), "problems": 1, "generated_tokens": 1,
                 "retry_tokens": 0, "run": len(calls)}, [])

    result, samples = asyncio.run(off_and_on(side, 3))
    assert calls == [False, True] * 3
    assert (result["saar_off"]["run"], result["saar_on"]["run"]) == (1, 2)
    assert result["latency"]["wall_s_off"] == [1.0, 3.0, 5.0] and result["latency"]["wall_s_on"] == [2.0, 4.0, 6.0]
