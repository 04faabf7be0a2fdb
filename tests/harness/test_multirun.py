"""A real multirun of the lab at a tiny size through submitit_local: one record per value, a rerun skips them all,
a finished run evaluates with SAAR off and on, and a sweep whose jobs are killed (SIGTERM) mid-way, then rerun,
ends with the records of an uninterrupted one."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
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


@pytest.mark.parametrize("disposition, held", [("default_int_handler", True), ("SIG_IGN", False)])
def test_a_sweep_driver_takes_ctrl_c_over_unless_it_was_started_ignoring_it(disposition, held):
    """With SIGINT ignored from the start (a background job of a script) Python's Ctrl-C machinery is off, and the
    driver leaves SIGINT as it found it rather than block it for a waiter that could never interrupt anything."""
    code = (f"import signal, threading\nsignal.signal(signal.SIGINT, signal.{disposition})\n"
            "from harness import cli\ncli.hold_interrupts()\n"
            "print(signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, []), threading.active_count())")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=ENV, capture_output=True, text=True,
                          timeout=120)
    assert done.stdout.split() == (["True", "2"] if held else ["False", "1"]), done.stderr


def test_a_sweep_off_a_terminal_reports_progress_and_reuse_and_leaves_the_committed_report_alone(tmp_path):
    """What a user sees of a real sweep whose output goes to a file, then the report, a corrupt record, a baseline
    evaluated at two gammas and Ctrl-C. Breakage checked, item by item: nothing was printed between Hydra's lines
    and the table (the live display needs a terminal); a bare report switched to the committed records' folder and
    rewrote results/report; a truncated metrics.jsonl counted as finished forever; the second gamma returned the
    first's numbers; Ctrl-C printed 60-80 lines of tracebacks."""
    project = tmp_path / "project"  # a user's working folder: the committed report, the lab's SFT checkpoint
    shutil.copytree(REPO / "results" / "report", project / "results" / "report")
    (project / "results" / "lab").symlink_to(REPO / "results" / "lab")
    runs = project / "results" / "runs"
    tiny = [*TINY[:-1], "algo.steps=2", f"runs_root={runs}"]
    command = [sys.executable, "-m", "harness.sweep", "-m", *tiny, "saar=baseline,cleaner"]
    with open(tmp_path / "out.txt", "w") as out, open(tmp_path / "err.txt", "w") as err:  # not a terminal
        done = subprocess.run([*command, f"hydra.sweep.dir={tmp_path / 'sweep1'}"], cwd=REPO, env=ENV, stdout=out,
                              stderr=err, timeout=900)
    stdout, stderr = (tmp_path / "out.txt").read_text(), (tmp_path / "err.txt").read_text()
    assert done.returncode == 0, stderr[-3000:]
    progress = [line for line in stderr.splitlines() if line.startswith("[sweep] job ")]
    for job in ("0", "1"):  # a line when each run starts and when it finishes
        assert any(line.startswith(f"[sweep] job {job} ") and line.endswith(", running") for line in progress)
        assert any(line.startswith(f"[sweep] job {job} ") and line.endswith(", finished") for line in progress)
    assert f"records: {runs}/<run>/" in stdout and f"python -m harness.report --runs {runs}" in stdout
    names = sorted(p.name for p in runs.iterdir())
    assert len(names) == 2

    # the bare report: the runs' folder in, a git-ignored folder out; the committed report untouched
    committed = {p: p.read_bytes() for p in (project / "results" / "report").rglob("*") if p.is_file()}
    report = subprocess.run([sys.executable, "-m", "harness.report"], cwd=project, capture_output=True, text=True,
                            timeout=600, env={**ENV, "PYTHONPATH": str(REPO)})
    assert report.returncode == 0, report.stderr
    assert {p: p.read_bytes() for p in (project / "results" / "report").rglob("*") if p.is_file()} == committed
    assert all(name in (runs / "report" / "tables.md").read_text() for name in names)

    # a corrupt record is trained again (set aside, not deleted); the intact one is reused, and the table says so
    victim = runs / names[0] / "metrics.jsonl"
    victim.write_text(victim.read_text()[:-30])
    again = subprocess.run([*command, f"hydra.sweep.dir={tmp_path / 'sweep2'}"], cwd=REPO, env=ENV,
                           capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    rows = {line.split("│")[2].strip(): line for line in again.stdout.splitlines() if line.count("│") >= 7}
    assert rows[names[0]].rstrip(" │").endswith("finished") and rows[names[1]].rstrip(" │").endswith("reused")
    assert [m["step"] for m in map(json.loads, victim.read_text().splitlines())] == [1, 2]
    [aside] = (runs / "corrupt").iterdir()
    assert aside.name.startswith(names[0]) and not (aside / "metrics.jsonl").read_text().endswith("\n")
    logs = "".join(p.read_text() for p in (tmp_path / "sweep2").glob(".submitit/*/*_log.out"))
    assert f"its record is corrupt ({runs / names[0] / 'metrics.jsonl'}: line 2 is not JSON)" in logs

    # the baseline, trained once, evaluated with SAAR at test time at two gammas: two records, not one
    for gamma in ("0.3", "0.7"):
        ev = subprocess.run([sys.executable, "-m", "harness.eval", *tiny, "saar=baseline", f"saar.gamma={gamma}"],
                            cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
        assert ev.returncode == 0, ev.stderr[-3000:]
    [baseline] = [n for n in names if not yaml.safe_load((runs / n / "config.yaml").read_text())["saar"]["enabled"]]
    evaluations = sorted((runs / baseline).glob("eval*.json"))
    assert len(evaluations) == 2 and all(p.name.startswith("eval-") for p in evaluations)
    assert {json.loads(p.read_text())["saar_at_test_time"]["gamma"] for p in evaluations} == {0.3, 0.7}
    assert len(sorted((runs / baseline).glob("samples-*.jsonl"))) == 2

    # Ctrl-C (SIGINT to the whole process group, as a terminal sends it): one line, exit 130
    # started as a terminal's shell starts a command, with SIGINT at its default: where these tests run as a
    # background job of a script, SIGINT is ignored here, and a command started with it ignored keeps ignoring it
    longer = [c.replace("algo.steps=2", "algo.steps=30") for c in command]
    outer = signal.signal(signal.SIGINT, signal.default_int_handler)  # the child gets SIG_DFL at its exec
    try:
        proc = subprocess.Popen([*longer, f"hydra.sweep.dir={tmp_path / 'sweep3'}"], cwd=REPO, env=ENV,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    finally:
        signal.signal(signal.SIGINT, outer)
    deadline = time.monotonic() + 600
    while sum(1 for p in runs.glob("*/metrics.jsonl") if p.read_text().strip()) < 3:  # one step of a new run
        assert time.monotonic() < deadline and proc.poll() is None, "no step was recorded"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)
    stderr = proc.communicate(timeout=300)[1]
    assert proc.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr and stderr.strip().splitlines()[-1].startswith(
        "interrupted; rerun the same command to resume")
