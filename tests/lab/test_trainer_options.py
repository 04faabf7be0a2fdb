"""Every option of the lab trainer's config (`TrainConfig`, and the `AlgoConfig` and `SaarConfig` fields it reads),
each shown to change what the trainer does, on a random tiny model whose responses a scripted engine chooses (with
the model's own log-probs, `ForcedEngine`'s way) and a task whose grading the test chooses. The trainer's pieces are
observed where it calls them: the problems it draws, the rollout's config and sampling, the pool's sandbox config,
the tensors handed to the policy loss (and the gradient that comes back), the learning rate and gradient norm at
each optimizer step. Expected values are worked out by hand in each test.

Options the lab trainer does not read (`cleaner.recipe.CLUSTER_ONLY`: max_prompt_tokens, max_eval_prompt_tokens,
rollout_is) are translated for verl and tested with that translation (`tests/harness/test_verl_config.py`).

Each test names, in its docstring, the deliberate breakages it was seen to catch: an option ignored, a default in
its place or an off-by-one, made by hand in `cleaner/lab/trainer.py` (or where the option is read: the config
builders of `cleaner/recipe.py`, `cleaner/saar.py`), then reverted.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

import cleaner.lab.trainer as trainer
from cleaner import chat, seeds
from cleaner.lab.config import TrainConfig
from cleaner.lab.model import tiny_qwen3
from cleaner.lab.tokenizer import lab_tokenizer
from cleaner.recipe import AlgoConfig
from cleaner.rollout.engines import GenOutput, GenRequest, SamplingParams
from cleaner.rollout.episode import RolloutConfig
from cleaner.rollout.recompute import score
from cleaner.saar import SaarConfig
from cleaner.sandbox.config import SandboxConfig
from cleaner.sandbox.result import ExecutionResult, infra_error
from cleaner.trajectory import Provenance, Trajectory

ANSWER = "\\boxed{42}"
BUG, FIX = "print(undefined_name)", "print(6 * 7)"  # a NameError in the sandbox, then its fix


def call(reasoning: str, code: str) -> str:
    return reasoning + chat.hermes_call_text(code)


Script = Callable[[str, int], str]  # (trajectory id, index of its generation, lookaheads included) -> text


def answer_at_once(trajectory_id: str, n: int) -> str:
    return ANSWER


def bug_then_fix(trajectory_id: str, n: int) -> str:
    """A failed call, its fix (SAAR's lookahead retry when on, the next turn when off), then the answer."""
    return [call("Compute.\n", BUG), call("Fix.\n", FIX)][n] if n < 2 else ANSWER


class ScriptEngine:
    """Each trajectory's next text from `script`, `<|im_end|>` appended, cut at `max_new_tokens`, with the log-probs
    the model gives those tokens in the request's context at the sampling temperature (as if it had sampled them).
    Records every request and the sampling parameters it came with."""

    def __init__(self, model: Any, tokenizer: Any, script: Script, log: list):
        self.model, self.tokenizer, self.script, self.log = model, tokenizer, script, log
        self.generations: dict[str, int] = {}
        self.eos_id = tokenizer.convert_tokens_to_ids(chat.IM_END)

    def generate(self, requests: list[GenRequest], sampling: SamplingParams) -> list[GenOutput]:
        out = []
        for r in requests:
            n = self.generations.get(r.request_id, 0)
            self.generations[r.request_id] = n + 1
            text = self.script(r.request_id, n)
            ids = tuple((self.tokenizer.encode(text, add_special_tokens=False) + [self.eos_id])[: r.max_new_tokens])
            self.log.append((r, sampling))
            with torch.no_grad():
                out.append(GenOutput(ids, tuple(score(self.model, r.context, ids, sampling.temperature))))
        return out


@dataclass(frozen=True)
class Item:
    id: str


class ScriptTask:
    """Problems `<split>-<seed>-<k>` with one fixed prompt; `solved(trajectory id)` grades. Records every draw."""

    def __init__(self, solved: Callable[[str], bool]):
        self.solved = solved
        self.draws: list[tuple[str, int, int]] = []  # (split, count, seed)

    def problems(self, split: str, count: int, seed: int = 0) -> list[Item]:
        self.draws.append((split, count, seed))
        return [Item(f"{split}-{seed}-{k}") for k in range(count)]

    def prompts(self, problems: list[Item]) -> list[tuple[str, list[dict[str, str]]]]:
        return [(p.id, [{"role": "user", "content": "What is 6 * 7?"}]) for p in problems]

    def correctness(self, trajs: list[Trajectory], problems: list[Item]) -> list[bool]:
        return [self.solved(t.id) for t in trajs]


def sample(trajectory_id: str) -> int:
    return int(trajectory_id.rsplit("/", 1)[1])


def first_two(trajectory_id: str) -> bool:
    """Samples 0 and 1 of every group solve it: rewards +1, +1, -1, -1 in a group of 4."""
    return sample(trajectory_id) < 2


@dataclass
class LossCall:
    ids: torch.Tensor  # [b, L]: the mini-batch's token ids
    log_prob: torch.Tensor  # [b, L - 1], its .grad set by the trainer's backward
    old_log_prob: torch.Tensor
    advantages: torch.Tensor
    mask: torch.Tensor
    config: Any
    loss: float
    metrics: dict


@dataclass
class Probe:
    """What one `train` call did, seen from the outside of each piece it calls."""

    task: ScriptTask
    engine_log: list = field(default_factory=list)  # (GenRequest, SamplingParams)
    # ("train" | "eval", group size, RolloutConfig, SamplingParams, seed, trajectories), one per rollout call
    rollouts: list = field(default_factory=list)
    pools: list = field(default_factory=list)  # SandboxConfig
    losses: list[LossCall] = field(default_factory=list)
    updates: list = field(default_factory=list)  # (lr, gradient norm) at each optimizer step
    rows: list = field(default_factory=list)  # metrics.jsonl
    summary: dict = field(default_factory=dict)

    @property
    def train_rollouts(self) -> list:
        return [r for r in self.rollouts if r[0] != "eval"]


def tiny_algo(**change: Any) -> AlgoConfig:
    """One step of 2 prompts x 4 samples, one update, one held-out problem; no overlong penalty."""
    base = dict(steps=1, prompts_per_step=2, group_size=4, ppo_mini_batch_size=2, lr=1e-3, eval_problems=1,
                max_turns=3, max_response_tokens=256, overlong_penalty_factor=0.0)
    return AlgoConfig(**{**base, **change})


@pytest.fixture(scope="module")
def init_dir(tmp_path_factory) -> Path:
    """A random tiny Qwen3 (hidden 32, one layer) with the lab tokenizer, saved as the run's starting checkpoint."""
    tokenizer = lab_tokenizer()
    out = tmp_path_factory.mktemp("init")
    model = tiny_qwen3(tokenizer, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, seed=0)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture
def run(init_dir, tmp_path, monkeypatch):
    """`run(cfg, script=..., solved=..., pool=..., run_dir=...) -> Probe`: one `train` call in a fresh run folder
    (or in `run_dir`, to resume one), observed; `pool` replaces the sandbox pool (default: the real one, opened
    with `cfg.sandbox`)."""
    monkeypatch.setenv("CLEANER_THREADS", "1")
    counter = iter(range(1000))

    def go(cfg: TrainConfig, script: Script = answer_at_once, solved: Callable[[str], bool] = first_two,
           pool: Callable[[SandboxConfig], Any] | None = None, run_dir: Path | None = None) -> Probe:
        probe = Probe(ScriptTask(solved))
        real_rollout, real_log_probs, real_loss, real_pool = (trainer.rollout, trainer._log_probs,
                                                              trainer.policy_loss, trainer.open_pool)
        pending: list = []

        def engine(model, tokenizer):
            return ScriptEngine(model, tokenizer, script, probe.engine_log)

        async def rollout(eng, tokenizer, prompts, group_size, rollout_cfg, sampling, seed, pool):
            trajs = await real_rollout(eng, tokenizer, prompts, group_size, rollout_cfg, sampling, seed, pool)
            kind = "eval" if prompts and not prompts[0][0].startswith("train-") else "train"
            probe.rollouts.append((kind, group_size, rollout_cfg, sampling, seed, trajs))
            return trajs

        def log_probs(model, ids, attention, temperature):
            out = real_log_probs(model, ids, attention, temperature)
            out.retain_grad()
            pending.append((ids, out))
            return out

        def policy_loss(log_prob, old_log_prob, advantages, mask, config):
            loss, metrics = real_loss(log_prob, old_log_prob, advantages, mask, config)
            ids, lp = pending.pop()
            assert lp is log_prob
            probe.losses.append(LossCall(ids, log_prob, old_log_prob, advantages, mask, config, loss.item(),
                                         metrics))
            return loss, metrics

        def open_pool(config):
            probe.pools.append(config)
            return (pool or real_pool)(config)

        class AdamW(torch.optim.AdamW):
            def step(self, closure=None):
                params = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
                norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params])).item()
                probe.updates.append((self.param_groups[0]["lr"], norm))
                return super().step(closure)

        with monkeypatch.context() as m:
            m.setattr(trainer, "transformers_engine", engine)
            m.setattr(trainer, "rollout", rollout)
            m.setattr(trainer, "_log_probs", log_probs)
            m.setattr(trainer, "policy_loss", policy_loss)
            m.setattr(trainer, "open_pool", open_pool)
            m.setattr(torch.optim, "AdamW", AdamW)
            run_dir = run_dir or tmp_path / f"run{next(counter)}"
            probe.summary = trainer.train_sync(cfg, init_dir, run_dir, log=lambda s: None, task=probe.task)
        probe.rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        return probe

    return go


def per_row_advantage(call: LossCall) -> list[float]:
    """The one advantage value of each row of a mini-batch (constant over its masked-in tokens, 0 elsewhere)."""
    out = []
    for adv, mask in zip(call.advantages, call.mask):
        values = adv[mask.bool()]
        assert torch.all(values == values[0]) and torch.all(adv[~mask.bool()] == 0)
        out.append(values[0].item())
    return out


# ---- the algorithm: advantages, loss, optimizer ----------------------------------------------------------------------

SQRT_4_3 = math.sqrt(4 / 3)  # the unbiased std of +1, +1, -1, -1


@pytest.mark.parametrize("estimator, norm_by_std, expected", [
    ("grpo", True, 1 / (SQRT_4_3 + 1e-6)),  # (r - mean) / (std + eps): 0.866
    ("grpo", False, 1.0),  # Dr. GRPO: r - mean
    ("rloo", True, 4 / 3),  # r_i - mean of the other three: 1 - (1 - 1 - 1) / 3
], ids=["grpo", "dr_grpo", "rloo"])
def test_adv_estimator_and_norm_adv_by_std_give_the_advantages_handed_to_the_loss(run, estimator, norm_by_std,
                                                                                   expected):
    """Two groups of rewards +1, +1, -1, -1: each estimator's advantages, worked out by hand, reach the loss.
    Breakages caught: the recipe's advantage config not passed (`compute_advantages(..., None)`: Dr. GRPO and RLOO
    silently GRPO); `norm_by_std=True` fixed in `AlgoConfig.advantage_config` (Dr. GRPO silently GRPO)."""
    probe = run(TrainConfig(tiny_algo(adv_estimator=estimator, norm_adv_by_std=norm_by_std)))
    [loss_call] = probe.losses
    assert sorted(per_row_advantage(loss_call)) == pytest.approx([-expected] * 4 + [expected] * 4, rel=1e-6)


def test_policy_loss_chooses_the_formula(run, monkeypatch):
    """A registered loss, twice PPO's per-token loss, chosen by name: the trainer's loss is twice PPO's (written out
    by hand) on the same tensors. Breakages caught: the recipe's loss config not passed (`policy_loss(..., None)`);
    `policy_loss="ppo_clip"` fixed in `AlgoConfig.loss_config`."""
    from cleaner.rl import losses

    def doubled(log_prob, old_log_prob, advantages, mask, config):
        per_token, metrics = losses.ppo_clip(log_prob, old_log_prob, advantages, mask, config)
        return 2 * per_token, metrics

    monkeypatch.setitem(losses.POLICY_LOSSES, "doubled_ppo_clip", doubled)
    probe = run(TrainConfig(tiny_algo(policy_loss="doubled_ppo_clip")), script=longer_when_wrong)
    [c] = probe.losses
    ppo = ppo_by_hand(c, 0.2, 0.28, 10.0)
    assert c.config.policy_loss == "doubled_ppo_clip"
    assert ppo != 0 and c.loss == pytest.approx(2 * ppo, rel=1e-5)


def longer_when_wrong(trajectory_id: str, n: int) -> str:
    """Unequal lengths, so that the token-mean loss at ratio 1, -sum(A n) / sum(n), is not 0."""
    return ANSWER if sample(trajectory_id) < 2 else "Let me think it over. " + ANSWER


def ppo_by_hand(c: LossCall, low: float, high: float, dual: float, agg: str = "token-mean") -> float:
    """PPO's clipped surrogate with dual clip (cleaner.rl.losses' docstring), written out token by token."""
    total, per_seq = 0.0, []
    lp, old, adv, mask = (x.detach().double().tolist() for x in (c.log_prob, c.old_log_prob, c.advantages, c.mask))
    for row in range(len(mask)):
        seq = 0.0
        for t in range(len(mask[row])):
            if not mask[row][t]:
                continue
            a, r = adv[row][t], math.exp(max(-20.0, min(20.0, lp[row][t] - old[row][t])))
            loss = max(-a * r, -a * min(max(r, 1 - low), 1 + high))
            if a < 0:
                loss = min(loss, -a * dual)
            seq += loss
        total += seq
        per_seq.append(seq)
    if agg == "token-mean":
        return total / sum(map(sum, mask))
    assert agg == "seq-mean-token-sum"
    return sum(per_seq) / len(per_seq)


CLIPPING = dict(prompts_per_step=2, group_size=4, ppo_mini_batch_size=1, lr=0.05)  # two updates; the second is off


@pytest.mark.parametrize("change", [
    {"clip_ratio_low": 0.01}, {"clip_ratio_high": 0.01}, {"clip_ratio_c": 1.01},
    {"loss_agg_mode": "seq-mean-token-sum"},
], ids=lambda c: next(iter(c)))
def test_clip_ratios_and_loss_agg_mode_shape_the_loss(run, change):
    """Two updates a step at a high lr: in the second the ratios are far from 1, so each clip bound decides some
    tokens' loss. The loss the trainer optimises equals PPO's written out with the configured value and not with
    the default (checked to differ, so the test has power). Breakage caught: `loss_cfg = PolicyLossConfig()`, and
    each field left at its default in `AlgoConfig.loss_config` (four breakages)."""
    probe = run(TrainConfig(tiny_algo(**CLIPPING, **change)), script=answer_at_once)
    assert len(probe.losses) == 2
    c = probe.losses[1]
    default = dict(low=0.2, high=0.28, dual=10.0, agg="token-mean")
    key = {"clip_ratio_low": "low", "clip_ratio_high": "high", "clip_ratio_c": "dual", "loss_agg_mode": "agg"}
    configured = {**default, **{key[k]: v for k, v in change.items()}}
    expected = ppo_by_hand(c, **configured)
    assert c.loss == pytest.approx(expected, rel=1e-5, abs=1e-7)
    assert abs(ppo_by_hand(c, **default) - expected) > 1e-3 * max(1.0, abs(expected))


def test_lr_and_lr_warmup_steps_set_the_rate_of_each_step(run):
    """Warm-up over 3 steps: lr / 3, 2 lr / 3, then lr from step 3 on ("warm-up to lr over these steps"); without
    warm-up, lr from the start. Breakages caught: the warm-up off by one (`step / algo.lr_warmup_steps`: 0, lr / 3,
    ...); the warm-up ignored; the lr ignored (AdamW's default 1e-3)."""
    lr = 2.5e-3
    warm = run(TrainConfig(tiny_algo(steps=4, lr=lr, lr_warmup_steps=3)))
    assert [u[0] for u in warm.updates] == pytest.approx([lr / 3, 2 * lr / 3, lr, lr], rel=1e-12)
    flat = run(TrainConfig(tiny_algo(steps=2, lr=lr)))
    assert [u[0] for u in flat.updates] == [lr, lr]


def test_max_grad_norm_clips_the_gradient_the_optimizer_steps_with(run):
    """The gradient's global norm at the optimizer step is max_grad_norm when the raw norm exceeds it, and the raw
    norm (the logged `grad_norm`) when it does not. Breakage caught: `clip_grad_norm_(model.parameters(), 1.0)`."""
    clipped = run(TrainConfig(tiny_algo(max_grad_norm=1e-4)), script=longer_when_wrong)
    [(_, norm)] = clipped.updates
    assert clipped.rows[0]["grad_norm"] > 1e-3 and norm == pytest.approx(1e-4, rel=1e-4)
    loose = run(TrainConfig(tiny_algo(max_grad_norm=1e6)), script=longer_when_wrong)
    [(_, norm)] = loose.updates
    assert norm == pytest.approx(loose.rows[0]["grad_norm"], rel=1e-4)


def test_ppo_mini_batch_size_splits_the_step_into_updates(run):
    """4 prompts x 4 samples: ppo_mini_batch_size 1 gives 4 updates of 4 trajectories, 2 gives 2 of 8, 4 gives one;
    every trajectory is in exactly one. Breakage caught: `for k in range(1)` with the whole order as one batch."""
    for size, updates in ((1, 4), (2, 2), (4, 1)):
        probe = run(TrainConfig(tiny_algo(prompts_per_step=4, ppo_mini_batch_size=size)), script=numbered)
        assert len(probe.updates) == len(probe.losses) == updates
        assert [len(c.ids) for c in probe.losses] == [16 // updates] * updates
        seen = sorted(decode_id(probe, row) for c in probe.losses for row in c.ids)
        assert seen == sorted(t.id for t in probe.train_rollouts[0][-1])


def numbered(trajectory_id: str, n: int) -> str:
    """The answer names the trajectory, so a row of a mini-batch tells which trajectory it is."""
    return f"{trajectory_id} \\boxed{{42}}"


def decode_id(probe: Probe, row: torch.Tensor) -> str:
    [t] = [t for t in probe.train_rollouts[0][-1] if row[: len(t.ids)].tolist() == t.ids]
    return t.id


# ---- what a step trains on -------------------------------------------------------------------------------------------

def test_steps_prompts_per_step_and_group_size_set_what_is_sampled(run):
    """steps 3 of 3 prompts x 5 samples: 3 draws of 3 training problems, 15 trajectories a step, 3 metrics lines;
    steps 0 trains nothing and evaluates. Breakages caught: `range(start_step, 1)`; `task.problems("train", 8, ...)`;
    `rollout(..., 8, ...)` (the group size)."""
    probe = run(TrainConfig(tiny_algo(steps=3, prompts_per_step=3, group_size=5, ppo_mini_batch_size=3)))
    assert [d[:2] for d in probe.task.draws if d[0] == "train"] == [("train", 3)] * 3
    assert [r["step"] for r in probe.rows] == [1, 2, 3] and probe.summary["steps"] == 3
    assert [r["trajectories"] for r in probe.rows] == [15] * 3
    assert [r[1] for r in probe.train_rollouts] == [5] * 3 and len(probe.updates) == 3
    for *_, trajs in probe.train_rollouts:
        assert sorted(int(t.id.split("/")[1]) for t in trajs) == sorted(list(range(5)) * 3)
    none = run(TrainConfig(tiny_algo(steps=0)))
    assert none.rows == [] and none.updates == [] and not none.train_rollouts and none.summary["eval"]


def test_dynamic_sampling_trains_only_groups_whose_rewards_differ(run):
    """Problem 0's group has rewards +1, +1, -1, -1, problem 1's all -1. With dynamic sampling only problem 0's 4
    trajectories reach the loss; without, all 8 (problem 1's with advantage 0). Breakage caught: `keep = trained`
    (dynamic sampling ignored)."""
    def solved(tid: str) -> bool:
        return tid.split("/")[0].endswith("-0") and sample(tid) < 2

    on = run(TrainConfig(tiny_algo(dynamic_sampling=True)), script=numbered, solved=solved)
    off = run(TrainConfig(tiny_algo(dynamic_sampling=False)), script=numbered, solved=solved)
    [c_on], [c_off] = on.losses, off.losses
    assert sorted(decode_id(on, r) for r in c_on.ids) == sorted(t.id for t in on.train_rollouts[0][-1]
                                                               if t.group.endswith("-0"))
    assert len(c_off.ids) == 8
    assert (on.rows[0]["groups_trained"], off.rows[0]["groups_trained"]) == (1, 2)
    assert on.rows[0]["groups_with_signal"] == off.rows[0]["groups_with_signal"] == 1


@pytest.mark.parametrize("buffer, factor, over_budget, reward", [
    (4, 1.0, 2, -1.5),  # the response ends 2 tokens before the budget: 2 of the buffer's 4 tokens used, -2/4
    (8, 1.0, 2, -1.75),  # 6 of 8 used: -6/8
    (4, 0.5, 2, -1.25),  # -2/4 * 0.5
    (4, 0.0, 2, -1.0),  # penalty off
    (4, 1.0, 1, -1.75),  # budget one token shorter: 3 of 4 used
], ids=["buffer4", "buffer8", "factor0.5", "factor0", "budget-1"])
def test_overlong_buffer_penalty_and_max_response_tokens_shape_the_reward(run, tok, buffer, factor, over_budget,
                                                                          reward):
    """Every response is the same n tokens (the answer and <|im_end|>), all wrong (-1), the budget n + over_budget
    tokens: DAPO's penalty -(n - (budget - buffer)) / buffer * factor, worked out per case. Breakages caught: the
    trainer's `shaped_rewards(..., 320, 64, 1.0)` in place of each configured value (three breakages)."""
    n = len(tok.encode(ANSWER, add_special_tokens=False)) + 1
    cfg = TrainConfig(tiny_algo(max_response_tokens=n + over_budget, overlong_buffer_tokens=buffer,
                                overlong_penalty_factor=factor))
    probe = run(cfg, solved=lambda tid: False)
    assert probe.rows[0]["response_tokens"] == n
    assert probe.rows[0]["reward"] == pytest.approx(reward, rel=1e-6)


def test_max_response_tokens_caps_the_response(run, tok):
    """A budget 3 tokens short of the answer: every response is cut at the budget (finish reason "length"), and
    the engine was asked for no more. Breakage caught: the rollout config built with the default 320 tokens."""
    n = len(tok.encode(ANSWER, add_special_tokens=False)) + 1
    probe = run(TrainConfig(tiny_algo(max_response_tokens=n - 3, overlong_buffer_tokens=2)))
    assert probe.rows[0]["response_tokens"] == n - 3 and probe.rows[0]["finish_reasons"] == {"length": 8}
    assert {r.max_new_tokens for r, _ in probe.engine_log} == {n - 3}


# ---- sampling and evaluation -----------------------------------------------------------------------------------------

def test_temperature_is_the_sampling_and_the_scoring_temperature(run, init_dir):
    """At temperature 0.5 the rollouts (training and held-out) sample at 0.5, the old log-probs handed to the loss are
    log_softmax(logits / 0.5) of the starting model (worked out here with a forward of our own), and the loss's
    current log-probs use 0.5 too (ratio 1 at the first update). Breakages caught: `SamplingParams(1.0, ...)` in
    training; `recompute(..., 1.0)`; `_log_probs(..., 1.0)` in the update."""
    from transformers import AutoModelForCausalLM

    probe = run(TrainConfig(tiny_algo(temperature=0.5)), script=longer_when_wrong)
    assert {r[3].temperature for r in probe.rollouts} == {0.5}
    assert {s.temperature for _, s in probe.engine_log} == {0.5}
    [c] = probe.losses
    model = AutoModelForCausalLM.from_pretrained(init_dir)
    with torch.no_grad():
        logits = model(input_ids=c.ids).logits[:, :-1].float()
    targets = c.ids[:, 1:].unsqueeze(-1)
    at_half = torch.log_softmax(logits / 0.5, -1).gather(-1, targets).squeeze(-1)
    at_one = torch.log_softmax(logits, -1).gather(-1, targets).squeeze(-1)
    mask = c.mask.bool()
    assert torch.allclose(c.old_log_prob[mask], at_half[mask], atol=1e-5)
    assert (c.old_log_prob[mask] - at_one[mask]).abs().max() > 0.1
    assert torch.allclose(c.log_prob.detach()[mask], c.old_log_prob[mask], atol=1e-5)


def test_top_p_and_eval_top_p_reach_their_rollouts(run):
    """top_p is the training rollouts' nucleus, eval_top_p the held-out ones'. Breakages caught: the training
    sampling built without top_p; evaluate() with `algo.top_p`."""
    probe = run(TrainConfig(tiny_algo(top_p=0.7, eval_top_p=0.6)))
    assert [r[3].top_p for r in probe.train_rollouts] == [0.7]
    assert [r[3].top_p for r in probe.rollouts if r[0] == "eval"] == [0.6]


def test_eval_split_problems_samples_and_every_choose_the_held_out_runs(run):
    """3 steps, eval_every 1: held-out evaluations after steps 1 and 2 (in their metrics lines) and the final one
    (in the summary), each drawing the 3 problems of the "val" split with the run seed, 2 samples each, SAAR off.
    Breakages caught: `task.problems("test", ...)` (eval_split ignored); `algo.eval_problems` -> 200; the
    evaluation rollout with 1 sample; eval_every ignored (`if False and ...`); eval_every off by one
    (`step % algo.eval_every == 0`); SAAR left on at test time (`saar or cfg.saar` in evaluate()); the held-out
    draw with seed 0."""
    cfg = TrainConfig(tiny_algo(steps=3, eval_every=1, eval_split="val", eval_problems=3, eval_samples=2), seed=4)
    probe = run(cfg)
    assert [d for d in probe.task.draws if d[0] != "train"] == [("val", 3, 4)] * 3
    assert ["eval" in r for r in probe.rows] == [True, True, False]
    evals = [r for r in probe.rollouts if r[0] == "eval"]
    assert [r[1] for r in evals] == [2, 2, 2] and not any(r[2].saar.enabled for r in evals)
    assert [len(r[-1]) for r in evals] == [6, 6, 6]
    assert probe.rows[0]["eval"]["trajectories"] == probe.summary["eval"]["trajectories"] == 6
    every2 = run(TrainConfig(tiny_algo(steps=3, eval_every=2)))
    assert ["eval" in r for r in every2.rows] == [False, True, False]
    assert [d for d in every2.task.draws if d[0] != "train"] == [("test", 1, 0)] * 2


def test_seed_chooses_problems_samples_and_mini_batch_order(run):
    """Seed 5: the training problems of step s are drawn with derive(5, "step", s), the rollout seeded with
    derive(5, "rollout", s), the mini-batches in the order random.Random(derive(5, "minibatch", s)) shuffles, the
    held-out problems drawn with 5 and sampled with derive(5, "eval"). Breakage caught: `seed=0` in place of
    `cfg.seed` in the step's draw, the rollout, the mini-batch order and the held-out draw (four breakages)."""
    import random

    probe = run(TrainConfig(tiny_algo(steps=2, ppo_mini_batch_size=1), seed=5), script=numbered)
    assert [d[2] for d in probe.task.draws] == [seeds.derive(5, "step", 0), seeds.derive(5, "step", 1), 5]
    assert [r[4] for r in probe.rollouts] == [seeds.derive(5, "rollout", 0), seeds.derive(5, "rollout", 1),
                                              seeds.derive(5, "eval")]
    trajs = probe.train_rollouts[0][-1]
    order = random.Random(seeds.derive(5, "minibatch", 0)).sample(range(8), 8)
    assert [decode_id(probe, row) for row in probe.losses[0].ids] == [trajs[i].id for i in order[0::2]]
    assert [decode_id(probe, row) for row in probe.losses[1].ids] == [trajs[i].id for i in order[1::2]]


# ---- the rollout: tools, SAAR, the sandbox, the chat format ----------------------------------------------------------

def rollout_cfg(probe: Probe) -> RolloutConfig:
    [(_, _, cfg, *_)] = probe.train_rollouts
    return cfg


@pytest.mark.parametrize("algo, saar, chat_format", [
    ({"max_turns": 2}, {}, "hermes"),
    ({"max_response_tokens": 100}, {}, "hermes"),
    ({"max_tool_response_chars": 17}, {}, "hermes"),
    ({"retries_count_against_limits": True}, {}, "hermes"),
    ({"infra_retries": 0}, {}, "hermes"),
    ({}, {"enabled": False}, "hermes"),
    ({}, {"gamma": 0.9}, "hermes"),
    ({}, {"max_retries": 1}, "hermes"),
    ({}, {"rollback_probability": 0.3}, "hermes"),
    ({}, {"similarity": "ast"}, "hermes"),
    ({}, {}, "markdown"),
], ids=["max_turns", "max_response_tokens", "max_tool_response_chars", "retries_count_against_limits",
        "infra_retries", "saar.enabled", "saar.gamma", "saar.max_retries", "saar.rollback_probability",
        "saar.similarity", "chat_format"])
def test_every_rollout_option_reaches_the_rollout(run, algo, saar, chat_format):
    """The training rollout's config, built by hand from the options: each limit, each SAAR setting and the chat
    format reach it (the rollout's own tests show what each does; the tests below show the main ones through the
    trainer). Breakage caught: any field of `AlgoConfig.rollout_config` left at its default (e.g. infra_retries)."""
    cfg = TrainConfig(tiny_algo(**algo), saar=SaarConfig(**saar), chat_format=chat_format)
    probe = run(cfg)
    a = cfg.algo
    assert rollout_cfg(probe) == RolloutConfig(
        max_turns=a.max_turns, max_response_tokens=a.max_response_tokens,
        max_tool_response_chars=a.max_tool_response_chars,
        retries_count_against_limits=a.retries_count_against_limits, infra_retries=a.infra_retries,
        format=chat_format, saar=SaarConfig(**saar))


def always_calls(trajectory_id: str, n: int) -> str:
    return call("Again.\n", "print(6 * 7)")


def test_max_turns_ends_a_trajectory_that_keeps_calling(run):
    """A policy that calls the tool every turn stops at max_turns assistant turns (finish reason "max_turns").
    Breakage caught: the rollout config built with the default 4 turns."""
    for turns in (1, 2):
        probe = run(TrainConfig(tiny_algo(prompts_per_step=1, group_size=2, ppo_mini_batch_size=1, max_turns=turns)),
                    script=always_calls)
        assert probe.rows[0]["turns_per_traj"] == turns and probe.rows[0]["finish_reasons"] == {"max_turns": 2}


def test_max_tool_response_chars_cuts_what_the_model_sees(run):
    """A call that prints 100 characters: with max_tool_response_chars 20 the observation holds at most 20 of them,
    with 256 all. Breakage caught: the rollout config built with the default 256."""
    def prints(trajectory_id: str, n: int) -> str:
        return call("Print.\n", "print('x' * 100)") if n == 0 else ANSWER

    shown = {}
    for chars in (20, 256):
        probe = run(TrainConfig(tiny_algo(prompts_per_step=1, group_size=2, ppo_mini_batch_size=1,
                                          max_tool_response_chars=chars)), script=prints)
        shown[chars] = {t.turns[0].observation.text.count("x") for t in probe.train_rollouts[0][-1]}
    assert max(shown[20]) <= 20 and shown[256] == {100}


SPLICE = dict(prompts_per_step=1, group_size=4, ppo_mini_batch_size=1, max_turns=4)


def test_saar_enabled_splices_the_fix_over_the_failed_call(run):
    """A failed call (NameError in the sandbox) and its fix: with SAAR on, the fix replaces the failure in every
    trajectory (no failure left, 2 turns); off, the failure stays (3 turns). Breakage caught: the rollout config
    built with SAAR off (the baseline) and with the default SAAR config."""
    on = run(TrainConfig(tiny_algo(**SPLICE)), script=bug_then_fix)
    off = run(TrainConfig(tiny_algo(**SPLICE), saar=SaarConfig(enabled=False)), script=bug_then_fix)
    assert on.rows[0]["first_attempt_failures_per_traj"] == off.rows[0]["first_attempt_failures_per_traj"] == 1
    assert on.rows[0]["saar_applied"] == 4 and on.rows[0]["final_failures_per_traj"] == 0
    assert on.rows[0]["turns_per_traj"] == 2 and on.rows[0]["spliced_tokens"] > 0
    assert off.rows[0]["saar_applied"] == 0 and off.rows[0]["final_failures_per_traj"] == 1
    assert off.rows[0]["turns_per_traj"] == 3 and off.rows[0]["spliced_tokens"] == 0


def test_rollback_probability_draws_the_trajectories_saar_applies_to(run):
    """p = 0: no trajectory is drawn for SAAR, so the failure stays as in the baseline. p = 0.5 over 4 prompts x 4
    samples: exactly the trajectories whose draw seeds.unit(rollout seed, id) is below 0.5 get the fix spliced
    (here 13 of 16), the others keep their failure. Breakages caught: the rollout config built with the default
    SAAR config (p = 1); `saar.applies_to` comparing with 1.0 in place of `cfg.rollback_probability`."""
    never = run(TrainConfig(tiny_algo(**SPLICE), saar=SaarConfig(rollback_probability=0.0)), script=bug_then_fix)
    assert never.rows[0]["saar_applied"] == 0 and never.rows[0]["final_failures_per_traj"] == 1
    half = run(TrainConfig(tiny_algo(**{**SPLICE, "prompts_per_step": 4}), saar=SaarConfig(rollback_probability=0.5)),
               script=bug_then_fix)
    [(_, _, _, _, seed, trajs)] = half.train_rollouts
    drawn = {t.id for t in trajs if seeds.unit(seed, t.id) < 0.5}
    assert len(drawn) == 13
    assert {t.id for t in trajs if t.stats["splices_deep"]} == drawn
    assert {t.id for t in trajs if t.stats["final_failures"]} == {t.id for t in trajs} - drawn


TIMING = ("rollout_s", "recompute_s", "update_s", "step_s", "lookahead_time_share")


def untimed(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def test_from_step_runs_the_baseline_until_that_step_then_saar(run):
    """saar.from_step=1 over 2 steps, a failed call and its fix in every trajectory: step 1 is the baseline's step 1
    exactly (same seed, one thread: every metric equal, the failure kept, no rollback, `saar_active` false), and
    step 2 has SAAR (the fix spliced over every failure). The baseline's step 2 keeps its failures. Breakages
    caught: the trainer's rollout given `cfg.rollout` (SAAR from step 1: step 1 differs from the baseline's);
    `saar.active` comparing `step > from_step` (step 2 stays the baseline); `saar_active` not written."""
    algo = tiny_algo(**{**SPLICE, "steps": 2})
    post = run(TrainConfig(algo, saar=SaarConfig(from_step=1)), script=bug_then_fix)
    base = run(TrainConfig(algo, saar=SaarConfig(enabled=False)), script=bug_then_fix)
    assert [r["saar_active"] for r in post.rows] == [False, True]
    assert [r["saar_active"] for r in base.rows] == [False, False]
    assert [c.saar.enabled for _, _, c, *_ in post.train_rollouts] == [False, True]
    assert untimed(post.rows)[0] == untimed(base.rows)[0]
    assert post.rows[0]["rollbacks_triggered_per_traj"] == 0 and post.rows[0]["final_failures_per_traj"] == 1
    assert post.rows[1]["rollbacks_triggered_per_traj"] == 1 and post.rows[1]["final_failures_per_traj"] == 0
    assert post.rows[1]["saar_applied"] == 4 and post.rows[1]["spliced_tokens"] > 0
    assert base.rows[1]["rollbacks_triggered_per_traj"] == 0 and base.rows[1]["final_failures_per_traj"] == 1


@pytest.mark.parametrize("enabled", [False, True], ids=["baseline", "cleaner"])
def test_each_step_records_how_advantages_cover_first_attempt_failures(run, enabled):
    """Samples 0 and 1 of each group fail a call, fix it and solve; 2 and 3 answer at once and fail: GRPO
    advantages a, a, -a, -a (a = 1 / (sqrt(4/3) + 1e-6)) against failures 1, 1, 0, 0, so the covariance is
    (a/2 + a/2 + a/2 + a/2) / 4 = a/2 and the failed ones' mean advantage is a, with SAAR as without: its failures
    are those made before the splice. Breakages caught: the metric taken over the sequence after splicing (CLEANER's
    failures vanish: covariance 0), the advantage summed over tokens instead of one per trajectory."""
    def fail_first_two(trajectory_id: str, n: int) -> str:
        return bug_then_fix(trajectory_id, n) if sample(trajectory_id) < 2 else answer_at_once(trajectory_id, n)

    a = 1 / (SQRT_4_3 + 1e-6)
    [row] = run(TrainConfig(tiny_algo(**SPLICE), saar=SaarConfig(enabled=enabled)), script=fail_first_two).rows
    assert row["rollbacks_triggered_per_traj"] == (0.5 if enabled else 0)
    assert row["adv_failure_cov"] == pytest.approx(a / 2, rel=1e-6)
    assert row["adv_mean_failed"] == pytest.approx(a, rel=1e-6)


def test_from_step_holds_across_a_resume(run, tmp_path, monkeypatch):
    """saar.from_step=1 over 2 steps, killed right after step 1's checkpoint, then rerun in the same folder: step 2
    runs once, with SAAR, and every metrics line equals that of a run never killed. Breakage caught: the step
    counted from the resume (`at_step(cfg.saar, step - start_step)`: the resumed step 2 runs without SAAR)."""
    cfg = TrainConfig(tiny_algo(**{**SPLICE, "steps": 2}), saar=SaarConfig(from_step=1))
    whole = run(cfg, script=bug_then_fix)
    killed = tmp_path / "killed"
    save = trainer._save_checkpoint

    def save_then_die(run_dir, model, tokenizer, opt, step):
        save(run_dir, model, tokenizer, opt, step)
        if step == 1:
            raise KeyboardInterrupt("killed")  # as a SIGINT would, between steps 1 and 2

    with monkeypatch.context() as m:
        m.setattr(trainer, "_save_checkpoint", save_then_die)
        with pytest.raises(KeyboardInterrupt):
            run(cfg, script=bug_then_fix, run_dir=killed)
    resumed = run(cfg, script=bug_then_fix, run_dir=killed)
    assert [c.saar.enabled for _, _, c, *_ in resumed.train_rollouts] == [True]  # step 2 only, with SAAR
    assert [r["saar_active"] for r in resumed.rows] == [False, True]
    assert untimed(resumed.rows) == untimed(whole.rows)


def test_gamma_and_similarity_choose_shallow_or_deep(run):
    """The failed call and its fix, by difflib on their code: 0.42; by lexemes (`token`): 0.60. A gamma below the
    similarity splices shallow (the original reasoning kept), above it deep; at a gamma between the two, difflib
    splices deep and the token similarity shallow. Breakages caught: the rollout config built with the default
    SAAR config; `saar.decide` with gamma 0.5 in place of `cfg.gamma`, and with "difflib_code" in place of
    `cfg.similarity`."""
    from cleaner import similarity

    bug, fix = similarity.Attempt(BUG, ""), similarity.Attempt(FIX, "")
    by_chars, by_tokens = similarity.get("difflib_code")(bug, fix), similarity.get("token")(bug, fix)
    assert (by_chars, by_tokens) == (pytest.approx(0.4242, abs=1e-4), pytest.approx(0.6, abs=1e-4))
    for saar, mode in ((SaarConfig(gamma=0.0), "shallow"), (SaarConfig(gamma=0.9), "deep"),
                       (SaarConfig(gamma=0.5), "deep"), (SaarConfig(gamma=0.5, similarity="token"), "shallow")):
        row = run(TrainConfig(tiny_algo(**SPLICE), saar=saar), script=bug_then_fix).rows[0]
        assert (row["splices_shallow"], row["splices_deep"]) == ((4, 0) if mode == "shallow" else (0, 4)), saar


def three_bugs_then_fix(trajectory_id: str, n: int) -> str:
    if n < 3:
        return call("Compute.\n", f"print(undefined_{n})")
    return call("Fix.\n", FIX) if n == 3 else ANSWER


def test_max_retries_bounds_the_lookahead(run):
    """Three failing attempts, then the fix. K = 3: the first failure's lookahead fails twice, then finds the fix
    (3 lookahead calls, recovered). K = 1: its one retry fails (exhausted), the failure stays; the next turn fails
    again and its retry is the fix. K = 0: no SAAR. Breakages caught: the rollout config built with the default
    SAAR config (K = 3); `saar`'s give-up test with 3 in place of `cfg.max_retries`."""
    rows = {k: run(TrainConfig(tiny_algo(**SPLICE), saar=SaarConfig(max_retries=k)),
                   script=three_bugs_then_fix).rows[0] for k in (3, 1, 0)}
    assert (rows[3]["lookahead_calls_per_traj"], rows[3]["rollbacks_exhausted_per_traj"]) == (3, 0)
    assert (rows[3]["rollbacks_recovered_per_traj"], rows[3]["final_failures_per_traj"]) == (1, 0)
    assert (rows[1]["lookahead_calls_per_traj"], rows[1]["rollbacks_exhausted_per_traj"]) == (2, 1)
    assert (rows[1]["rollbacks_recovered_per_traj"], rows[1]["final_failures_per_traj"]) == (1, 1)
    assert rows[0]["lookahead_calls_per_traj"] == 0 and rows[0]["saar_applied"] == 0


def test_retries_count_against_limits_spends_turns_on_lookahead(run):
    """max_turns 2 and a failure fixed by SAAR: not counted, the spliced turn and the answer fit; counted, the retry
    takes the second turn and the trajectory ends without an answer. Breakage caught: the rollout config built with
    the default (not counted)."""
    free = run(TrainConfig(tiny_algo(**{**SPLICE, "max_turns": 2})), script=bug_then_fix).rows[0]
    counted = run(TrainConfig(tiny_algo(**{**SPLICE, "max_turns": 2}, retries_count_against_limits=True)),
                  script=bug_then_fix).rows[0]
    assert free["finish_reasons"] == {"answer": 4}
    assert "answer" not in counted["finish_reasons"]


def test_chat_format_chooses_how_calls_are_read(run):
    """The same hermes-format call is a tool call under chat_format hermes and plain text under markdown (which
    reads ```python fences): 1 call per trajectory, then none. Breakage caught: `format="hermes"` fixed in the
    rollout config."""
    hermes = run(TrainConfig(tiny_algo(**SPLICE)), script=bug_then_fix).rows[0]
    markdown = run(TrainConfig(tiny_algo(**SPLICE), chat_format="markdown"), script=bug_then_fix).rows[0]
    assert hermes["first_attempt_calls_per_traj"] >= 1 and markdown["first_attempt_calls_per_traj"] == 0


def test_sandbox_is_the_pool_the_tool_runs_in(run):
    """The pool is opened with the run's sandbox config, and its limits hold: a call sleeping 0.6 s times out under
    timeout_s 0.3 and not under 4. Breakage caught: `open_pool(None)` (the default sandbox config)."""
    def sleeps(trajectory_id: str, n: int) -> str:
        return call("Wait.\n", "import time\ntime.sleep(0.6)\nprint(1)") if n == 0 else ANSWER

    status = {}
    for timeout in (0.3, 4.0):
        sandbox = SandboxConfig(timeout_s=timeout, workers=2)
        probe = run(TrainConfig(tiny_algo(prompts_per_step=1, group_size=2, ppo_mini_batch_size=1),
                                saar=SaarConfig(enabled=False), sandbox=sandbox), script=sleeps)
        assert probe.pools == [sandbox]
        status[timeout] = {t.turns[0].result.status for t in probe.train_rollouts[0][-1]}
    assert status == {0.3: {"timeout"}, 4.0: {"ok"}}


# ---- the heart of CLEANER: spliced tokens are trained, scored in the purified context --------------------------------

def test_spliced_tokens_are_trained_with_log_probs_of_the_purified_context(run, init_dir):
    """SAAR on, a failed call fixed in the lookahead, samples 0 and 1 graded right: in the one update, for each row
    - the loss mask is 1 on every token the policy sampled, spliced ones included, and 0 on the prompt, the tool
      responses and the padding;
    - the gradient of the loss with respect to the row's log-probs is, by hand for token-mean at ratio 1,
      -A * mask / N (N: the masked-in tokens of the mini-batch): non-zero on the spliced tokens, zero where masked;
    - the old log-probs of the spliced tokens are those of the starting model in the purified sequence (a forward of
      our own over the final ids), not those sampled in the lookahead context (which differ by far more than the
      float tolerance).
    Breakages caught: the loss mask without spliced tokens (`mask[b, :n]` of `trained and not spliced`); the
    sampled log-probs in place of the recomputed ones (`_batch(trajs, [t.logprobs[len(t.prompt):] ...])`)."""
    from transformers import AutoModelForCausalLM

    def named(trajectory_id: str, n: int) -> str:  # the answer names the trajectory (`decode_id`)
        return bug_then_fix(trajectory_id, n) if n < 2 else f"{trajectory_id} {ANSWER}"

    probe = run(TrainConfig(tiny_algo(**SPLICE)), script=named)
    [c] = probe.losses
    trajs = {t.id: t for t in probe.train_rollouts[0][-1]}
    assert probe.rows[0]["splices_deep"] == 4  # gamma 0.5 > 0.42: the whole failed turn is replaced
    model = AutoModelForCausalLM.from_pretrained(init_dir)
    n_tokens = c.mask.sum()
    spliced_seen = 0
    for r, row in enumerate(c.ids):
        t = trajs[decode_id(probe, row)]
        n = len(t.ids)
        trained = [p.trained for p in t.provenance]
        spliced = [p in (Provenance.SPLICED_SHALLOW, Provenance.SPLICED_DEEP) for p in t.provenance]
        # target space: position j predicts token j + 1
        assert c.mask[r, : n - 1].tolist() == [float(x) for x in trained[1:]]
        assert c.mask[r, n - 1 :].sum() == 0
        assert all(trained[j] for j in range(n) if spliced[j]) and sum(spliced) > 10
        assert not any(trained[: len(t.prompt)]) and any(p == Provenance.OBSERVATION for p in t.provenance)
        advantage = 1 / (SQRT_4_3 + 1e-6) * (1 if sample(t.id) < 2 else -1)
        assert torch.allclose(c.log_prob.grad[r], -advantage * c.mask[r] / n_tokens, atol=1e-9)
        on_spliced = torch.tensor(spliced[1:] + [False] * (len(c.mask[r]) - n + 1))
        assert (c.log_prob.grad[r][on_spliced].abs() > 1e-4).all()
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([t.ids])).logits[0, :-1]
        purified = torch.log_softmax(logits, -1).gather(-1, torch.tensor(t.ids[1:])[:, None]).squeeze(-1)
        sampled = torch.tensor([lp if lp is not None else 0.0 for lp in t.logprobs[1:]])
        at = on_spliced[: n - 1]
        assert torch.allclose(c.old_log_prob[r, : n - 1][at], purified[at], atol=1e-5)
        assert (sampled[at] - purified[at]).abs().mean() > 5e-3  # 0.015 on this random model; 1e-5 tolerance above
        spliced_seen += int(at.sum())
    assert spliced_seen == probe.rows[0]["spliced_tokens"]


class FlakyPool:
    """A stand-in for the sandbox pool whose sessions fail each call's first run with an infrastructure error (the
    worker stopped answering: a cause worth a re-run) and then answer "42"."""

    def __init__(self, config: SandboxConfig):
        self.runs = 0

    async def __aenter__(self) -> FlakyPool:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        pass

    def session(self) -> Any:
        pool = self

        class Session:
            state_lost, cells, failed = False, 0, False

            async def run(self, code: str) -> ExecutionResult:
                pool.runs += 1
                if not self.failed:
                    self.failed = True
                    return infra_error("the worker stopped answering during the call")
                return ExecutionResult("ok", stdout="42\n")

            async def close(self) -> None:
                pass

        return Session()


def test_infra_retries_re_runs_a_call_the_sandbox_failed(run):
    """Each trajectory's one call fails once in the sandbox. infra_retries 1: it is re-run (2 runs per call), the
    trajectory goes on to its answer and is trained. infra_retries 0: the failure persists, the trajectory ends
    there and is kept out of the loss (no update). Breakages caught: the rollout config built with the default 2
    re-runs (with 0 configured, the trajectories recover); every trajectory counted as trained (`trained` all
    True: the excluded ones reach the loss)."""
    def one_call(trajectory_id: str, n: int) -> str:
        return call("Compute.\n", FIX) if n == 0 else ANSWER

    pools: list[FlakyPool] = []

    def flaky(config: SandboxConfig) -> FlakyPool:
        pools.append(FlakyPool(config))
        return pools[-1]

    cfg = tiny_algo(prompts_per_step=1, group_size=4, ppo_mini_batch_size=1)
    retried = run(TrainConfig(replace(cfg, infra_retries=1)), script=one_call, pool=flaky)
    assert retried.rows[0]["infra_retries"] == 4 and retried.rows[0]["finish_reasons"] == {"answer": 4}
    assert pools[-1].runs == 4 * 2 + 2 and len(retried.losses[0].ids) == 4  # + the held-out problem's call
    given_up = run(TrainConfig(replace(cfg, infra_retries=0)), script=one_call, pool=flaky)
    assert given_up.rows[0]["finish_reasons"] == {"infra_error": 4}
    assert given_up.rows[0]["infra_excluded_trajectories"] == 4 and given_up.losses == [] and pools[-1].runs == 4 + 1
