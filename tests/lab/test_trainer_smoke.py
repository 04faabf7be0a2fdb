"""Two RL steps of the lab trainer from the committed SFT checkpoint: parameters move, one metrics line per step,
and a rerun of a finished or interrupted run neither repeats nor loses a step."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from cleaner.lab.config import SftConfig
from cleaner.lab.config import TrainConfig
from cleaner.lab.trainer import train_sync
from cleaner.recipe import AlgoConfig

SFT_DIR = Path(__file__).resolve().parents[2] / "results" / "lab" / "sft" / SftConfig().hash()


def small(steps: int) -> TrainConfig:
    """Two tiny steps. The SFT checkpoint solves about 95% of problems, so with the full response budget whole groups
    are often all correct (no gradient); a budget below the typical answer length (about 110 tokens) cuts some
    trajectories short, so every step has groups with rewards that differ."""
    return TrainConfig(AlgoConfig(steps=steps, prompts_per_step=6, group_size=8, ppo_mini_batch_size=6, eval_problems=4,
                                  lr=1e-4, max_response_tokens=110))


def lines(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_two_steps_move_parameters_and_write_metrics(tmp_path):
    assert (SFT_DIR / "done.json").exists(), f"the committed SFT checkpoint {SFT_DIR} is missing: make sft"
    run = tmp_path / "run"
    train_sync(small(1), SFT_DIR, run, log=lambda s: None)  # stopped after step 1 ...
    (run / "summary.json").unlink()  # ... before the end of the run
    summary = train_sync(small(2), SFT_DIR, run, log=lambda s: None)  # resumed to step 2
    rows = lines(run)
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert -2.0 <= r["reward"] <= 1.0 and 0.0 <= r["accuracy"] <= 1.0
        assert r["trajectories"] == 48 and r["first_attempt_calls_per_traj"] > 0
        assert r["groups_with_signal"] > 0  # some group has rewards that differ, so the step has a gradient
        assert r["logprob_gap_untouched_max"] < 1e-4  # recomputed under the same weights as sampled
        # unbiased pass@k over 6 problems x 8 samples: pass@1 is the mean accuracy; with n = k = 8, pass@8 is the
        # share of problems with at least one correct sample, a multiple of 1/6
        assert r["pass_at_k"]["1"] == pytest.approx(r["accuracy"], abs=1e-12)
        assert r["pass_at_k"]["8"] >= r["pass_at_k"]["1"]
        assert abs(6 * r["pass_at_k"]["8"] - round(6 * r["pass_at_k"]["8"])) < 1e-9
    assert 0 <= summary["eval"]["accuracy"] <= 1 and summary["eval"]["trajectories"] == 4
    assert summary["eval"]["pass_at_k"] == {"1": pytest.approx(summary["eval"]["accuracy"])}  # one sample each
    before = AutoModelForCausalLM.from_pretrained(SFT_DIR).state_dict()
    after = AutoModelForCausalLM.from_pretrained(run / "checkpoint").state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) > len(before) // 2, "an RL step should update most parameter tensors"
    again = train_sync(small(2), SFT_DIR, run, log=lambda s: None)  # finished: nothing reruns
    assert [r["step"] for r in lines(run)] == [1, 2] and again["steps"] == 2


def test_a_step_killed_after_its_metrics_line_reruns_once(tmp_path):
    run = tmp_path / "run"
    train_sync(small(1), SFT_DIR, run, log=lambda s: None)
    (run / "summary.json").unlink()
    with open(run / "metrics.jsonl", "a") as f:  # a line written for step 2 whose checkpoint never landed
        f.write(json.dumps({"step": 2, "reward": 9.9}) + "\n")
    train_sync(small(2), SFT_DIR, run, log=lambda s: None)
    rows = lines(run)
    assert [r["step"] for r in rows] == [1, 2] and rows[1]["reward"] != 9.9


def test_the_loss_starts_from_old_log_probs_recomputed_on_the_purified_sequences(tmp_path, monkeypatch):
    """With one update per step, the policy that the loss sees equals the one that recomputed the old log-probs, so
    the first update's ppo_kl is zero up to float error, spliced tokens included. Their sampled log-probs (taken in
    the lookahead context that held the error) differ: a trainer that used them (the deliberate bug
    `_batch(trajs, [t.logprobs[len(t.prompt):] for t in trajs], ...)`) gave ppo_kl 1.2e-3 on this step.
    Also: the tracker's TensorBoard events hold the same values as metrics.jsonl."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("CLEANER_THREADS", "1")  # the same samples on any machine
    cfg = TrainConfig(AlgoConfig(steps=1, prompts_per_step=8, group_size=8, ppo_mini_batch_size=8, eval_problems=2),
                      seed=1)
    train_sync(cfg, SFT_DIR, tmp_path / "run", log=lambda s: None, loggers=("tensorboard",))
    [row] = lines(tmp_path / "run")
    assert row["spliced_tokens"] > 0 and row["logprob_gap_spliced"] > 1e-3  # sampled != recomputed there
    assert abs(row["ppo_kl"]) < 1e-6
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    for key in ("accuracy", "ppo_kl", "spliced_tokens", "final_failures_per_traj"):
        [event] = events.Scalars(key)
        assert (event.step, event.value) == (1, pytest.approx(row[key], rel=1e-6, abs=1e-12))


@pytest.mark.parametrize("change, message", [
    ({"steps": -1}, "algo.steps must be >= 0 (0: evaluate model.path, no training), got -1"),
    ({"eval_samples": 0}, "algo.eval_samples must be >= 1, got 0"),
    ({"ppo_mini_batch_size": 3}, "algo.ppo_mini_batch_size=3 must be >= 1 and divide algo.prompts_per_step=8"),
    ({"lr_warmup_steps": -1}, "algo.lr and algo.max_grad_norm must be > 0 and algo.lr_warmup_steps, algo.eval_every "
                              ">= 0; got 0.0001, 1.0, -1, 0"),
    ({"eval_split": "train"}, "algo.eval_split='train'; valid: 'test', 'val'"),
    ({"adv_estimator": "ppo"}, "unknown advantage estimator 'ppo'; valid: "),
    ({"temperature": 0.0}, "algo.temperature must be > 0 and algo.top_p, algo.eval_top_p in (0, 1]; got 0.0, 1.0, 1.0"),
])
def test_a_train_config_refuses_bad_values_naming_them(change, message):
    """The library's own checks (the harness raises them as they are, under the run config's key names)."""
    with pytest.raises((ValueError, KeyError)) as e:
        AlgoConfig(**change)
    assert e.value.args[0].startswith(message)


def test_a_trajectory_kept_out_of_the_loss_changes_nothing_in_the_step(tmp_path, monkeypatch):
    """The same step twice: as rolled out, and with one more trajectory, a copy of an answered one marked as ended
    by an infrastructure failure (`finish_reason` "infra_error", as the episode ends it), in the same group. Its
    reward (-1: no answer) differs from its source's, so counted in its group's mean and std it would move its
    siblings' advantages, and in a mini-batch its tokens would join the token count of the mean. The step's loss
    and gradient norm are those of the step without it (1e-5 relative: the same sums in another order), and it is
    counted. Breakages checked: advantages over every trajectory (loss -0.0740 instead of -0.0167); every
    trajectory in the mini-batches (`keep` of all ones: -0.0158)."""
    import cleaner.lab.trainer as trainer

    monkeypatch.setenv("CLEANER_THREADS", "1")  # the same samples in both runs
    real_rollout = trainer.rollout
    add_excluded = [False]

    async def rollout(*args, **kwargs):
        trajs = await real_rollout(*args, **kwargs)
        if not add_excluded[0]:
            return trajs
        source = next(t for t in trajs if t.meta["finish_reason"] == "answer")
        copy = dataclasses.replace(source, id=source.id + "/infra",
                                   meta={**source.meta, "finish_reason": "infra_error"})
        return trajs + [copy]

    monkeypatch.setattr(trainer, "rollout", rollout)
    cfg = TrainConfig(AlgoConfig(steps=1, prompts_per_step=4, group_size=4, ppo_mini_batch_size=4, eval_problems=1,
                                 max_response_tokens=110), seed=2)  # some answers cut short: groups with signal
    rows = []
    for run, add in (("without", False), ("with", True)):
        add_excluded[0] = add
        train_sync(cfg, SFT_DIR, tmp_path / run, log=lambda s: None)
        [row] = lines(tmp_path / run)
        rows.append(row)
    without, with_ = rows
    assert (without["trajectories"], with_["trajectories"]) == (16, 17)
    assert (without["infra_excluded_trajectories"], with_["infra_excluded_trajectories"]) == (0, 1)
    assert with_["finish_reasons"]["infra_error"] == 1 and with_["reward"] != without["reward"]
    assert without["loss"] != 0.0 and without["grad_norm"] > 0.0  # the step has a gradient to compare
    assert with_["loss"] == pytest.approx(without["loss"], rel=1e-5)
    assert with_["grad_norm"] == pytest.approx(without["grad_norm"], rel=1e-5)
    assert with_["groups_with_signal"] == without["groups_with_signal"]
