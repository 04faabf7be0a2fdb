"""The lab trainer's learning logic on a task a random tiny model learns in a few steps: the reward is +1 when the
first response token is one of the half of the vocabulary whose initial embedding has a positive first coordinate
(about half of the samples at the start, so GRPO has a signal from step 1; the set shares a direction, which a
policy gradient can follow in a few steps, unlike, say, the even token ids).

Deliberate bugs each test was seen to catch (each made by hand in `cleaner/lab/trainer.py`, then reverted):
- the advantage sign flipped (`advantages = -compute_advantages(...)`): the reward falls instead of rising;
- rewards that ignore correctness (`correct = [True] * len(trajs)`, or a random draw): the reward stalls;
- a restart that ignores the checkpoint (`resume = False`): the killed run redoes its first steps;
- a resumed run without the optimizer state (`opt.load_state_dict` removed): its metrics leave the uninterrupted run's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from cleaner.lab.model import tiny_qwen3
from cleaner.lab.tokenizer import lab_tokenizer
from cleaner.lab.config import TrainConfig
from cleaner.lab.trainer import train_sync
from cleaner.recipe import AlgoConfig
from cleaner.saar import SaarConfig


@dataclass(frozen=True)
class Item:
    id: str


class FirstTokenTask:
    """The synthetic task: one fixed prompt, solved when the first response token is in `solved`. `drawn` records
    every draw of training problems (its seed), so a test can count the steps that ran."""

    def __init__(self, solved: frozenset[int], crash_at_draw: int | None = None):
        self.solved = solved
        self.drawn: list[int] = []
        self.crash_at_draw = crash_at_draw

    def problems(self, split: str, count: int, seed: int = 0) -> list[Item]:
        if split == "train":
            self.drawn.append(seed)
            if len(self.drawn) == self.crash_at_draw:
                raise KeyboardInterrupt("killed")  # as a SIGINT would, in the middle of the run
        return [Item(f"{split}-{seed}-{k}") for k in range(count)]

    def prompts(self, problems: list[Item]) -> list[tuple[str, list[dict[str, str]]]]:
        return [(p.id, [{"role": "user", "content": "Say anything."}]) for p in problems]

    def correctness(self, trajs, problems) -> list[bool]:
        return [t.ids[len(t.prompt)] in self.solved for t in trajs]


CFG = TrainConfig(AlgoConfig(steps=8, prompts_per_step=4, group_size=8, ppo_mini_batch_size=4, lr=0.1,
                             eval_problems=16, overlong_buffer_tokens=1, overlong_penalty_factor=0.0, max_turns=1,
                             max_response_tokens=2), saar=SaarConfig(enabled=False))


@pytest.fixture(scope="module")
def init(tmp_path_factory) -> tuple[Path, frozenset[int]]:
    """A random tiny Qwen3 (hidden 32, one layer) with the lab tokenizer, saved as a checkpoint, and the tokens
    that solve the task."""
    tokenizer = lab_tokenizer()
    out = tmp_path_factory.mktemp("init")
    model = tiny_qwen3(tokenizer, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, seed=0)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    embedding = model.get_input_embeddings().weight
    return out, frozenset(int(i) for i in (embedding[:, 0] > 0).nonzero().flatten())


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_the_reward_rises_under_grpo(tmp_path, init):
    init_dir, solved = init
    task = FirstTokenTask(solved)
    summary = train_sync(CFG, init_dir, tmp_path / "run", log=lambda s: None, task=task)
    accuracy = [r["accuracy"] for r in rows(tmp_path / "run")]
    assert len(accuracy) == 8 and len(task.drawn) == 8
    assert 0.3 < accuracy[0] < 0.7, accuracy  # the task starts near a coin flip
    assert sum(accuracy[-3:]) / 3 > accuracy[0] + 0.25, accuracy
    assert summary["eval"]["accuracy"] > accuracy[0] + 0.25


def test_a_killed_run_resumes_at_its_last_finished_step_as_if_never_killed(tmp_path, init, monkeypatch):
    """Killed during step 4, then rerun: steps 4 to 8 run once each (the problem draws are counted), and every
    metrics line equals that of a run never killed (the thread count is fixed, so float sums match exactly)."""
    monkeypatch.setenv("CLEANER_THREADS", "1")
    init_dir, solved = init
    whole, uninterrupted = tmp_path / "whole", FirstTokenTask(solved)
    train_sync(CFG, init_dir, whole, log=lambda s: None, task=uninterrupted)
    killed = tmp_path / "killed"
    first = FirstTokenTask(solved, crash_at_draw=4)  # killed while drawing step 4's problems: steps 1-3 finished
    with pytest.raises(KeyboardInterrupt):
        train_sync(CFG, init_dir, killed, log=lambda s: None, task=first)
    assert [r["step"] for r in rows(killed)] == [1, 2, 3]
    second = FirstTokenTask(solved)
    train_sync(CFG, init_dir, killed, log=lambda s: None, task=second)
    assert first.drawn == uninterrupted.drawn[:4] and second.drawn == uninterrupted.drawn[3:]
    timing = ("rollout_s", "recompute_s", "update_s", "step_s", "lookahead_time_share")
    strip = [{k: v for k, v in r.items() if k not in timing} for r in rows(killed)]
    assert strip == [{k: v for k, v in r.items() if k not in timing} for r in rows(whole)]


def test_a_run_with_saar_from_step_samples_the_baselines_steps_before_it(tmp_path, init, monkeypatch):
    """The lab's own sampling (not a script): with saar.from_step=1, step 1 is the baseline run's step 1 exactly
    (same seed, one thread), and SAAR is on from step 2 (this task makes no calls, so SAAR is drawn for every
    trajectory but has nothing to roll back). Breakage caught: the trainer's rollout given `cfg.rollout` (SAAR drawn
    in step 1: `saar_applied` 32, not 0)."""
    monkeypatch.setenv("CLEANER_THREADS", "1")
    init_dir, solved = init
    algo = replace(CFG.algo, steps=2)
    for name, saar in (("base", SaarConfig(enabled=False)), ("post", SaarConfig(from_step=1))):
        train_sync(TrainConfig(algo, saar=saar), init_dir, tmp_path / name, log=lambda s: None,
                   task=FirstTokenTask(solved))
    timing = ("rollout_s", "recompute_s", "update_s", "step_s", "lookahead_time_share")
    base, post = ([{k: v for k, v in r.items() if k not in timing} for r in rows(tmp_path / name)]
                  for name in ("base", "post"))
    assert post[0] == base[0] and post[0]["saar_applied"] == 0 and post[0]["saar_active"] is False
    assert post[1]["saar_active"] is True and post[1]["saar_applied"] == 32
