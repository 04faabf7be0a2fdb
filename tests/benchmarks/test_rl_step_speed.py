"""One RL step of the lab, as the lab runs it, with today's code and with the code before the speed work, in the
same run: 8 prompts x 8 samples (64 trajectories), the committed SFT checkpoint, the lab's tuned lr, one thread
(`CLEANER_THREADS=1`), CLEANER (SAAR on) and the baseline.

Each round is one `train` call of one step in a fresh run folder: model load, sandbox pool, the step (rollout,
recompute, update), a held-out evaluation of one problem and a checkpoint. The benchmark times the whole call; the
trainer's own timers of the step (`step_s` and its parts `rollout_s`, `recompute_s`, `update_s`, from the run's
metrics line) are kept in `extra_info`, with their medians over the rounds. The old path is the trainer, engine,
driver and recompute modules at `BEFORE`, read from git into modules of their own (`load_old`); it is skipped where
git or that commit is not there (a shallow clone). The two paths must agree on the step: the same samples (rewards,
tokens, splices) and, up to float order, the same loss and gradient norm.

Run with `make bench`; the figures are in docs/lab.md (speed)."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import types
from pathlib import Path

import pytest

from cleaner.lab import trainer
from cleaner.lab.config import SftConfig, TrainConfig
from cleaner.recipe import AlgoConfig
from cleaner.saar import SaarConfig

ROOT = Path(trainer.__file__).parents[2]
INIT = ROOT / "results" / "lab" / "sft" / SftConfig().hash()
LR = 2.3362789638732874e-05  # harness/conf/algo/lab.yaml
BEFORE = "013a20b412a5f7785a7a30b5508d68ea541e1877"  # the last commit before the speed work
OLD_MODULES = ("cleaner.rollout.recompute", "cleaner.rollout.engines", "cleaner.rollout.drivers",
               "cleaner.lab.trainer")  # in import order
ROUNDS = 3
SAME = ("reward", "accuracy", "response_tokens", "spliced_tokens", "turns_per_traj", "rollbacks_triggered_per_traj")
results: dict[tuple[str, str], list[dict]] = {}


def old_available() -> bool:
    return subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", f"{BEFORE}^{{commit}}"],
                          capture_output=True).returncode == 0


def load_old() -> dict[str, types.ModuleType]:
    """`OLD_MODULES` at `BEFORE`, each run as a fresh module, with the ones loaded before it standing in for their
    names while it imports (the old trainer gets the old engine); the live package is left as it was."""
    old: dict[str, types.ModuleType] = {}
    saved = {name: sys.modules.get(name) for name in OLD_MODULES}
    try:
        for name in OLD_MODULES:
            path = name.replace(".", "/") + ".py"
            source = subprocess.run(["git", "-C", str(ROOT), "show", f"{BEFORE}:{path}"], capture_output=True,
                                    text=True, check=True).stdout
            module = types.ModuleType(name)  # its classes name their live module, as dataclasses need
            module.__file__ = f"{BEFORE[:7]}:{path}"
            sys.modules[name] = module  # `from cleaner.x import y` in the modules after it finds this one
            exec(compile(source, module.__file__, "exec"), module.__dict__)
            old[name] = module
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    return old


@pytest.mark.parametrize("saar", ["cleaner", "baseline"])
@pytest.mark.parametrize("path", ["old", "new"])
def test_rl_step(benchmark, tmp_path, monkeypatch, path, saar):
    if not INIT.exists():
        pytest.skip(f"no SFT checkpoint at {INIT.relative_to(ROOT)} (make sft)")
    if path == "old" and not old_available():
        pytest.skip(f"commit {BEFORE[:7]} is not in this checkout")
    monkeypatch.setenv("CLEANER_THREADS", "1")
    train = (load_old()["cleaner.lab.trainer"] if path == "old" else trainer).train_sync
    cfg = TrainConfig(AlgoConfig(steps=1, eval_problems=1, lr=LR), saar=SaarConfig(enabled=saar == "cleaner"))
    rows: list[dict] = []
    runs = iter(range(ROUNDS + 1))

    def step() -> None:
        run_dir = tmp_path / f"run{next(runs)}"
        train(cfg, INIT, run_dir, log=lambda s: None)
        rows.append(json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0]))

    benchmark.pedantic(step, rounds=ROUNDS, warmup_rounds=0)
    for key in ("step_s", "rollout_s", "recompute_s", "update_s"):
        benchmark.extra_info[key] = [round(r[key], 3) for r in rows]
        benchmark.extra_info[f"median_{key}"] = round(statistics.median(r[key] for r in rows), 3)
    results[(path, saar)] = rows
    assert all({k: r[k] for k in SAME} == {k: rows[0][k] for k in SAME} for r in rows)  # rounds repeat the step
    other = results.get(("old" if path == "new" else "new", saar))
    if other:  # the other path ran first: the same step
        assert {k: rows[0][k] for k in SAME} == {k: other[0][k] for k in SAME}
        assert rows[0]["loss"] == pytest.approx(other[0]["loss"], rel=1e-4, abs=1e-7)
        assert rows[0]["grad_norm"] == pytest.approx(other[0]["grad_norm"], rel=1e-4)
        new, old = (rows, other) if path == "new" else (other, rows)
        ratio = statistics.median(r["step_s"] for r in old) / statistics.median(r["step_s"] for r in new)
        benchmark.extra_info["step_speedup_old_over_new"] = round(ratio, 2)
        print(f"\n{saar}: step {statistics.median(r['step_s'] for r in old):.2f} s (old) -> "
              f"{statistics.median(r['step_s'] for r in new):.2f} s (new): {ratio:.2f}x")
