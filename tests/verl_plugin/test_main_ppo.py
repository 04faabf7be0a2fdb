"""verl 0.9.1's own trainer, end to end, on the CPU: `python -m harness.train cluster=verl_cpu` runs
`python -m verl.trainer.main_ppo` (the V1 trainer, its `AgentLoopWorkerTQ`, TransferQueue, reward-loop workers,
FSDP2 actor, checkpoints) with `CleanerAgentLoop`, our reward function, SAAR and the harness's translation, on the
lab's model and tasks (sampling at T = 1.2, so rewards differ within groups and calls fail).

What is asserted comes from verl's own files (its metrics log, its checkpoints) and from our per-trajectory log,
which records the version and digest of the rollout server's weights with every trajectory:
- CLEANER, 3 steps, checkpoint every 2, rollout importance sampling on, the cluster presets' sandbox (numpy and
  sympy preloaded): killed (SIGKILL, the whole process group)
  while step 3 runs, after the step-2 checkpoint; rerun, it resumes at step 3 from that checkpoint: finite losses,
  nonzero gradient norms, new weights at every step, splices, spliced log-probs re-scored to the trainer's.
- The baseline (SAAR off), 1 step, then evaluated with SAAR on at test time (verl's val_only from its checkpoint).
- CLEANER with `saar.from_step=1`, 2 steps: SAAR off in step 1, on in step 2, as verl's `global_steps` says.

Breakages checked (each turns a test red): `CleanerAgentLoop` without the server's weight versions (the V1 step-1
crash), a rollout server that ignores weight updates, `resume_mode=disable`, the re-scoring skipped, test-time SAAR
ignored for a baseline.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
COMMON = ["cluster=verl_cpu", "algo.prompts_per_step=4", "algo.group_size=4", "algo.ppo_mini_batch_size=4",
          "algo.eval_problems=4", "algo.temperature=1.2", "verl.agent_workers=1", "verl.max_sandbox_workers=2",
          "sandbox=paper", "quiet=true"]  # the cluster presets' sandbox: numpy and sympy preloaded
CLEANER = [*COMMON, "algo.steps=3", "algo.eval_every=2", "verl.save_every=2", "algo.rollout_is=token"]
BASELINE = [*COMMON, "saar=baseline", "algo.steps=1"]
TIMEOUT_S = 600


def harness(args: list[str], runs: Path, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "harness.train", *args, f"runs_root={runs}"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env={**os.environ, "RAY_DEDUP_LOGS": "0"}, **popen)


def kill_all(pid: int) -> None:
    """SIGKILL `pid` and every process of its sessions and its descendants' sessions (the harness runs verl in a
    session of its own; Ray's processes have process groups of their own): the machine going down."""
    sessions = {os.getsid(pid)} | {os.getsid(p.pid) for p in psutil.Process(pid).children(recursive=True)}
    for other in psutil.pids():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if os.getsid(other) in sessions:
                os.kill(other, signal.SIGKILL)


def finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=TIMEOUT_S)
    assert proc.returncode == 0, out[-6000:]
    return out


def run_dir(runs: Path) -> Path:
    [folder] = [p for p in runs.iterdir() if (p / "config.yaml").exists()]
    return folder


def records(folder: Path) -> list[dict]:
    return [json.loads(line) for path in sorted(folder.glob("rollouts.*.jsonl")) for line in path.open()]


def steps(*files: Path) -> dict[int, dict]:
    """verl's file logger, one line per `log` call (a step's training metrics, its validation's), merged by step
    over `files` in order."""
    out: dict[int, dict] = {}
    for path in files:
        for line in path.open():
            record = json.loads(line)
            out.setdefault(record["step"], {}).update(record["data"])
    return out


@pytest.fixture(scope="module")
def cleaner_run(tmp_path_factory):
    """The CLEANER run: started, killed during step 3, rerun to the end. (run folder, the first invocation's
    rollout records, the rerun's output); the rerun's records are in verl/rollouts/2."""
    runs = tmp_path_factory.mktemp("runs")
    proc = harness(CLEANER, runs)
    deadline = time.monotonic() + TIMEOUT_S
    while not (runs.exists() and any(r["global_steps"] == 3 and r["split"] == "train"
                                     for d in runs.glob("*/verl/rollouts/1") for r in records(d))):
        assert proc.poll() is None, proc.stdout.read()[-6000:]
        assert time.monotonic() < deadline, "step 3 never started"
        time.sleep(1)
    kill_all(proc.pid)
    proc.wait()
    folder = run_dir(runs)
    assert (folder / "verl/checkpoints/global_step_2/actor").is_dir()
    assert not (folder / "summary.json").exists()
    out = finish(harness(CLEANER, runs))
    return folder, records(folder / "verl/rollouts/1"), out


def test_cleaner_trains_with_verl_v1_and_its_losses_are_real(cleaner_run):
    folder, first, _ = cleaner_run
    metrics = steps(folder / "verl/metrics.1.jsonl", folder / "verl/metrics.jsonl")
    train = [r for r in first + records(folder / "verl/rollouts/2") if r["split"] == "train"]
    assert not [r for r in train if r["finish_reason"] == "infra_error"]  # the sandbox held: nothing left out
    for step in (1, 2, 3):
        m = metrics[step]
        # a step whose every group has one reward has no advantage to follow (T = 1.2 makes that rare, not
        # impossible): its gradient is zero by GRPO, not by a fault
        advantage = m["critic/advantages/max"] != 0 or m["critic/advantages/min"] != 0
        assert math.isfinite(m["actor/pg_loss"]) and (m["actor/grad_norm"] > 0 or not advantage), (step, m)
        assert m["training/off_policy/trajectory_staleness/max"] == 0  # the V1 trainer read our weight versions
    assert any(metrics[step]["actor/grad_norm"] > 0 for step in (1, 2, 3))
    assert "val-core/lab/acc/mean@1" in metrics[0] and "val-core/lab/acc/mean@1" in metrics[2]


def test_the_agent_loop_and_the_reward_run_the_presets_sandbox(cleaner_run):
    """numpy and sympy are imported by every sandbox worker verl's processes start (a module that did not import
    would have stopped the pool, and the run): the agent loop's and the reward's settings name them."""
    import yaml

    folder, _, _ = cleaner_run
    [entry] = yaml.safe_load((folder / "verl/agent_loop.yaml").read_text())
    assert entry["sandbox"]["preload_modules"] == ["numpy", "sympy"]
    reward = [o for o in (folder / "verl/overrides.txt").read_text().splitlines() if "reward_kwargs.sandbox=" in o]
    assert len(reward) == 1 and "preload_modules:[numpy,sympy]" in reward[0]


def test_the_rollout_server_gets_new_weights_after_every_step(cleaner_run):
    folder, first, _ = cleaner_run
    train = [r for r in first + records(folder / "verl/rollouts/2") if r["split"] == "train"]
    by_step = {s: {(tuple(r["weights"]), r["weights_digest"]) for r in train if r["global_steps"] == s}
               for s in (1, 2, 3)}
    assert [len(v) for v in by_step.values()] == [1, 1, 1], by_step  # one version per step: synchronous training
    versions = [next(iter(by_step[s])) for s in (1, 2, 3)]
    assert [v[0] for v in versions] == [(0, 0), (1, 1), (2, 2)]  # the weights of the step before
    assert len({v[1] for v in versions}) == 3  # and each step's weights differ from the last


def test_a_killed_run_resumes_from_its_checkpoint_at_the_next_step(cleaner_run):
    folder, first, out = cleaner_run
    rerun = records(folder / "verl/rollouts/2")
    assert {r["global_steps"] for r in rerun if r["split"] == "train"} == {3}  # steps 1 and 2 were not redone
    assert set(steps(folder / "verl/metrics.jsonl")) == {3}  # step 2 was validated before the kill: not again
    killed_step3 = {r["weights_digest"] for r in first if r["global_steps"] == 3 and r["split"] == "train"}
    resumed_step3 = {r["weights_digest"] for r in rerun if r["global_steps"] == 3 and r["split"] == "train"}
    assert killed_step3 == resumed_step3  # the checkpoint's weights, exactly
    assert json.loads((folder / "summary.json").read_text())["steps"] == 3
    assert (folder / "verl/checkpoints/latest_checkpointed_iteration.txt").read_text().strip() == "3"


def test_saar_splices_and_the_spliced_log_probs_are_rescored(cleaner_run):
    folder, first, _ = cleaner_run
    saar = [json.loads(line) for line in (folder / "verl/saar_metrics.jsonl").open()]
    assert [(row["global_steps"], row["split"], row["trajectories"]) for row in saar] == [
        (0, "test", 4), (1, "train", 16), (2, "test", 4), (2, "train", 16), (3, "test", 4), (3, "train", 16)]
    assert sum(row["splices_shallow"] + row["splices_deep"] for row in saar if row["split"] == "train") > 0
    spliced = [r for r in first + records(folder / "verl/rollouts/2") if r["rescore_gap"]]
    assert spliced and all(r["rescore_gap"]["spliced_tokens"] > 0 for r in spliced)
    # the sampled log-probs of spliced tokens were from the lookahead context; re-scored, the rollout log-probs
    # agree with the ones verl's actor recomputes on the purified sequences (float32 on both sides)
    assert max(r["rescore_gap"]["spliced_max_abs_gap"] for r in spliced) > 1e-3
    metrics = steps(folder / "verl/metrics.1.jsonl", folder / "verl/metrics.jsonl")
    # (unscored, a spliced token's probability differs by up to a few hundredths: 0.026 in a run without it)
    assert max(metrics[s]["training/rollout_probs_diff_max"] for s in (1, 2, 3)) < 1e-3


def test_a_baseline_never_splices_in_training_and_splices_with_saar_on_at_test_time(tmp_path):
    runs = tmp_path / "runs"
    finish(harness(BASELINE, runs))
    folder = run_dir(runs)
    trained = records(folder / "verl/rollouts/1")
    assert trained and not any(r["saar_stats"]["saar_applied"] for r in trained)
    finish(harness([*BASELINE, "test_time_saar=true"], runs))
    evaluated = records(folder / "eval_saar_on/rollouts/1")
    assert evaluated and all(r["saar_stats"]["saar_applied"] for r in evaluated)
    assert {r["split"] for r in evaluated} == {"test"}
    summary = json.loads((folder / "eval_saar_on/summary.json").read_text())
    assert "val-core/lab/acc/mean@1" in summary["metrics"]["data"]


def test_saar_from_step_switches_saar_on_at_verls_training_step(tmp_path):
    """`saar.from_step=1` through verl's V1 trainer: the step reaches our agent loop as the `global_steps` of each
    prompt (`AgentLoopWorkerTQ`; the loop refuses to run without it), step 1 (0-based 0) trains as the baseline,
    step 2 with SAAR, and the validations follow the step they come after (0: before training, off; 2: on)."""
    runs = tmp_path / "runs"
    finish(harness([*COMMON, "algo.steps=2", "saar.from_step=1"], runs))
    seen: dict[tuple[int, str], set] = {}
    for r in records(run_dir(runs) / "verl/rollouts/1"):
        seen.setdefault((r["global_steps"], r["split"]), set()).add((r["saar_active"], r["saar_stats"]["saar_applied"]))
    assert seen == {(0, "test"): {(False, False)}, (1, "train"): {(False, False)}, (2, "train"): {(True, True)},
                    (2, "test"): {(True, True)}}
