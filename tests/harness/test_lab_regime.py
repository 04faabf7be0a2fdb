"""preset=lab_regime: one choice sets the task set, its SFT checkpoint and the rollout limits; the default keeps the
regression set and its committed checkpoint; train and eval hand the chosen task set to the trainer."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from cleaner.lab import regime, tasks
from cleaner.lab.config import SFT_RECIPES
from harness import eval as harness_eval
from harness import records, schema
from harness import train as harness_train


def test_the_preset_sets_task_set_checkpoint_and_limits_together(composed):
    cfg = composed(["preset=lab_regime"])
    schema.validate(cfg)
    assert cfg.data.task_set == "regime"
    assert cfg.model.path == schema.lab_sft_path("regime") == f"results/lab/sft/{SFT_RECIPES['regime'].hash()}"
    assert schema.lab_sft_recipe(cfg.model.path) == SFT_RECIPES["regime"]
    algo = schema.lab_train_config(cfg).algo
    assert algo.overlong_buffer_tokens * 5 == algo.max_response_tokens  # the paper's 4,096 of 20,480
    assert algo.max_turns >= 1 + cfg.saar.max_retries + 1  # a call, K retries, the answer
    assert records.config_hash(cfg) != records.config_hash(composed(["data=lab_regime"]))


def test_the_committed_start_record_is_of_the_declared_recipe_and_sized_the_preset(composed):
    """results/lab/regime_sft_eval.json measured the checkpoint the recipe names, under the preset's limits, and the
    preset's budget follows from its lengths: the smallest multiple of 160 whose last 20% starts at or above their
    99th percentile (none smaller would)."""
    record = json.loads(Path("results/lab/regime_sft_eval.json").read_text())
    algo = schema.lab_train_config(composed(["preset=lab_regime"])).algo
    assert record["sft"]["hash"] == SFT_RECIPES["regime"].hash() and not record["git"]["dirty"]
    limits = record["limits"]
    assert (limits["max_response_tokens"], limits["overlong_buffer_tokens"], limits["max_turns"]) == (
        algo.max_response_tokens, algo.overlong_buffer_tokens, algo.max_turns)
    p99 = limits["sizing_percentiles"]["p99"]
    sized = next(b for b in range(160, 100 * 160, 160) if b - b // 5 >= p99)
    assert algo.max_response_tokens == sized and algo.overlong_buffer_tokens == sized // 5


def test_the_default_keeps_the_regression_set_and_its_run_names(composed):
    cfg = composed()
    assert cfg.data.task_set == "lab" and cfg.model.path == schema.lab_sft_path() == "results/lab/sft/6e159435701d"
    assert "data" not in records.hashed_part(cfg) and "model" not in records.hashed_part(cfg)


def test_an_unknown_task_set_is_refused(composed):
    with pytest.raises(schema.ConfigError, match="data.task_set='hard'; valid: lab, regime"):
        schema.validate(composed(["data.task_set=hard", "model.path=x"]))


def test_train_and_eval_hand_the_task_set_to_the_trainer(composed, monkeypatch, tmp_path):
    import cleaner.lab.trainer as trainer
    import cleaner.models as models

    seen = {}

    def fake_train_sync(cfg, init_dir, run_dir, log=print, task=tasks, loggers=()):
        seen["train"] = task
        return {"steps": cfg.algo.steps}

    async def fake_evaluate(model, tokenizer, cfg, pool, saar=None, task=tasks):
        seen.setdefault("eval", []).append(task)
        return {"wall_s": 1.0, "problems": 1, "accuracy": 0.0, "generated_tokens": 0, "retry_tokens": 0}, []

    monkeypatch.setattr(trainer, "train_sync", fake_train_sync)
    monkeypatch.setattr(trainer, "evaluate", fake_evaluate)
    monkeypatch.setattr(models, "load_causal_lm", lambda path: (None, None))
    monkeypatch.setattr(harness_train, "init_checkpoint", lambda cfg, log: Path("init"))
    cfg = composed(["preset=lab_regime", f"runs_root={tmp_path}", "quiet=true"])
    harness_train.run(cfg)
    asyncio.run(harness_eval.lab_off_and_on(Path("ckpt"), cfg))
    assert seen["train"] is regime and seen["eval"] == [regime] * 3  # warm-up, off, on
    seen.clear()
    harness_train.run(composed([f"runs_root={tmp_path}", "quiet=true"]))
    assert seen["train"] is tasks


def test_regime_stats_by_hand():
    """Three trajectories: a NameError then a fix (correct); a TypeError and three NameErrors then success
    (wrong); one clean call (correct). With K = 3 the first TypeError is not followed by a success within 3 calls,
    the others are: 4 of 5 recovered. Breakage caught: a window of K + 1 calls (5 of 5), failures counted by status
    rather than exception, correctness of trajectories with a failure miscounted."""
    from types import SimpleNamespace

    from cleaner.trajectory import ToolResult
    from harness.lab_regime import regime_stats

    def traj(errors, ok_last, length, reason="answer"):
        results = [ToolResult("error", "", e) for e in errors] + ([ToolResult("ok", "1")] if ok_last else [])
        turns = [SimpleNamespace(result=r) for r in results] + [SimpleNamespace(result=None)]
        return SimpleNamespace(turns=turns, ids=list(range(2 + length)), prompt=[0, 1], meta={"finish_reason": reason})

    trajs = [traj(["NameError"], True, 8), traj(["TypeError", "NameError", "NameError", "NameError"], True, 40),
             traj([], True, 4, "length")]
    s = regime_stats(trajs, [True, False, True], k=3)
    assert s["pass_at_1"] == pytest.approx(2 / 3) and s["calls_per_traj"] == pytest.approx(8 / 3)
    assert s["failed_calls"] == 5 and s["failed_calls_per_traj"] == pytest.approx(5 / 3)
    assert s["failed_calls_by_class"] == {"NameError": 4, "TypeError": 1}
    assert s["recovered_within_3"] == 4 and s["recovered_within_3_share"] == pytest.approx(0.8)
    assert s["recovered_within_3_share_stderr"] == pytest.approx((0.8 * 0.2 / 5) ** 0.5)
    assert (s["trajectories_with_a_failure"], s["correct_among_trajectories_with_a_failure"]) == (2, 1)
    assert s["turns"] == {"2": 1, "3": 1, "6": 1} and s["finish_reasons"] == {"answer": 2, "length": 1}
    assert s["response_tokens"]["max"] == 40 and s["response_tokens"]["p50"] == 8
