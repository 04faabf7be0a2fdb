"""The single-process GRPO/DAPO trainer of the lab, with SAAR as a switch. One function, `train`, read top to
bottom: rollout, rewards, advantages, old log-probs, mini-batch updates, metrics, evaluation, checkpoint.

Baseline and CLEANER differ only in `TrainConfig.saar` (enabled or not, and its gamma, K, p). The recipe is
`cleaner.recipe.AlgoConfig`, which the harness's `algo` config group mirrors. `saar.from_step` switches SAAR on at a
given step (the paper's post-hoc experiment): the rollout of step `step` (0-based) runs `cleaner.saar.at_step(cfg.saar,
step)`, and each metrics line says whether SAAR was on (`saar_active`). A resumed run resolves it from the same step
index, so it switches at the same step; held-out evaluation keeps SAAR off whatever the step.

Old log-probs are recomputed under the policy before the updates, on the final purified sequences, with the
prompt's KV cache shared by its group (`cleaner.rollout.recompute`). Spliced tokens were sampled in a lookahead
context that held the error; recomputing gives them the log-probs of the context they now stand in, so the PPO
ratio starts at 1 for them as for every other token. The gap between sampled and recomputed log-probs is logged
separately for spliced and untouched tokens.

Each mini-batch's log-probs are computed in length-grouped micro-batches, each cut to its longest row
(`_log_probs`); the loss is one aggregation over the whole mini-batch's tensor and one backward, so loss and
gradient are those of one padded forward up to float order (`tests/lab/test_update_microbatches.py`).

A run folder holds `metrics.jsonl` (one line per step), `checkpoint/` (model, optimizer, step; written after each
step, atomically) and `summary.json`, whose presence means finished. Rerunning the same folder resumes after the
last finished step; lines of a step that did not finish are dropped, so no step is counted twice. The folder is
the run's identity: the harness names it by the hash of the run's config (`harness.records`).

Infrastructure failures. A trajectory that an infrastructure failure ended (`cleaner.rollout.episode`,
`excluded_from_loss`: the sandbox failed, and re-running the call could not get past it) is no sample of the policy
in its environment. It is in no mini-batch (as a group that DAPO's dynamic sampling drops), so it adds nothing to the
loss, its gradient or the token count the loss is averaged over; and it is left out of its group's statistics: the
group's mean and std are those of its other samples (a group left with one sample gives it advantage 0), since its
reward (that of an unfinished answer) would shift its siblings' advantages. The step's metrics still count it
(`infra_excluded_trajectories`; its reward is in `reward`). verl's GRPO does count it in the group's statistics
(`cleaner.verl_plugin.agent_loop`).

The task (problems, prompts, grading) is an argument (`Task`; the lab's tasks by default, `cleaner.lab.tasks`); the
algorithm is `cleaner.rl`'s. `loggers` names experiment trackers (`cleaner.tracking`) that get each step's metrics
line as well.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

from cleaner import seeds
from cleaner.lab import tasks
from cleaner.lab.config import TrainConfig
from cleaner.lab.sft import idle_threads
from cleaner.metrics import advantage_failure_covariance, rollout_metrics
from cleaner.rl.advantages import compute_advantages
from cleaner.rl.dapo import groups_with_signal, shaped_rewards
from cleaner.rl.losses import policy_loss
from cleaner.rollout.drivers import rollout
from cleaner.rollout.engines import SamplingParams, transformers_engine
from cleaner.rollout.recompute import length_chunks, logprob_gap, recompute
from cleaner.saar import SaarConfig, at_step
from cleaner.sandbox import open_pool
from cleaner.tracking import Tracker
from cleaner.trajectory import Trajectory, excluded_from_loss, write_lines_atomic


class Task(Protocol):
    """What the trainer learns: problems drawn by split and seed, their chat prompts, and which trajectories solved
    them (trajectory groups are problem ids). The module `cleaner.lab.tasks` is one."""

    def problems(self, split: str, count: int, seed: int = 0) -> list[Any]: ...

    def prompts(self, problems: list[Any]) -> list[tuple[str, list[dict[str, str]]]]: ...

    def correctness(self, trajs: list[Trajectory], problems: list[Any]) -> list[bool]: ...


def _batch(trajs: list[Trajectory], recomputed: list[list[float]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded tensors in target space: position j predicts token j + 1.
    ids [B, L]; targets, mask, old_log_prob [B, L - 1]."""
    width = max(len(t.ids) for t in trajs)
    ids = torch.full((len(trajs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(trajs), width))
    old = torch.zeros((len(trajs), width))
    for b, (t, lp) in enumerate(zip(trajs, recomputed)):
        n, p = len(t.ids), len(t.prompt)
        ids[b, :n] = torch.tensor(t.ids)
        mask[b, :n] = torch.tensor(t.loss_mask, dtype=torch.float)
        old[b, p:n] = torch.tensor(lp)
    return {"ids": ids, "attention": (torch.arange(width) < torch.tensor([len(t.ids) for t in trajs])[:, None]).long(),
            "targets": ids[:, 1:], "mask": mask[:, 1:], "old_log_prob": old[:, 1:]}


def _log_probs(model: Any, ids: torch.Tensor, attention: torch.Tensor, temperature: float) -> torch.Tensor:
    """Log-probs of ids[:, 1:] [B, L - 1], the rows run in length-grouped micro-batches, each cut to its longest
    row: the padding a whole right-padded mini-batch would run is not run (past a row's end the values are its
    micro-batch's padding's, or 0; the loss mask is 0 there). Each row's values are those of the whole batch's
    forward up to float order (right padding: a row never attends to what follows it), and the loss is aggregated
    over the assembled [B, L - 1] tensor, so the one backward reaches each micro-batch's graph with the gradient of
    the mini-batch's loss."""
    lengths = attention.sum(-1).tolist()  # right-padded rows
    out = torch.zeros((ids.shape[0], ids.shape[1] - 1), device=ids.device)
    for rows in length_chunks(lengths):
        index = torch.tensor(rows, device=ids.device)
        width = max(lengths[i] for i in rows)
        chunk, mask = ids[index, :width], attention[index, :width]
        logits = model(input_ids=chunk, attention_mask=mask).logits[:, :-1].float() / temperature
        logp = torch.log_softmax(logits, dim=-1).gather(-1, chunk[:, 1:].unsqueeze(-1)).squeeze(-1)
        out = out.index_put((index[:, None], torch.arange(width - 1, device=ids.device)), logp)
    return out  # [B, L - 1]


def _append_line(path: Path, row: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _save_checkpoint(run_dir: Path, model: Any, tokenizer: Any, opt: torch.optim.Optimizer, step: int) -> None:
    tmp = run_dir / "checkpoint.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    torch.save(opt.state_dict(), tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps({"step": step}))
    final = run_dir / "checkpoint"
    old = run_dir / "checkpoint.old"
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


async def evaluate(model: Any, tokenizer: Any, cfg: TrainConfig, pool: Any, saar: SaarConfig | None = None,
                   task: Task = tasks) -> tuple[dict[str, Any], list[Trajectory]]:
    """Held-out pass@1 on `algo.eval_split` at the training temperature: (metrics, trajectories). SAAR at test time
    is `saar` (None: off, the paper's evaluation; `harness.eval` passes the run's saar with `enabled` set)."""
    algo = cfg.algo
    problems = task.problems(algo.eval_split, algo.eval_problems, seed=cfg.seed)
    sampling = SamplingParams(algo.temperature, algo.eval_top_p)
    rollout_cfg = replace(cfg.rollout, saar=saar or replace(cfg.saar, enabled=False))
    start = time.perf_counter()
    trajs = await rollout(transformers_engine(model, tokenizer), tokenizer, task.prompts(problems), algo.eval_samples,
                          rollout_cfg, sampling, seeds.derive(cfg.seed, "eval"), pool)
    wall_s = time.perf_counter() - start
    return {**rollout_metrics(trajs, task.correctness(trajs, problems)), "wall_s": wall_s}, trajs


async def train(cfg: TrainConfig, init_dir: Path, run_dir: Path, log: Callable[[str], None] = print,
                task: Task = tasks, loggers: Sequence[str] = ()) -> dict[str, Any]:
    algo = cfg.algo
    run_dir.mkdir(parents=True, exist_ok=True)
    summary_path = run_dir / "summary.json"
    if summary_path.exists():
        log(f"run {run_dir} is finished; reusing its summary")
        return json.loads(summary_path.read_text())
    torch.set_num_threads(idle_threads())
    transformers.utils.logging.disable_progress_bar()
    if not (run_dir / "checkpoint").exists() and (run_dir / "checkpoint.old").exists():
        (run_dir / "checkpoint.old").rename(run_dir / "checkpoint")  # killed between the two renames of a save
    resume = (run_dir / "checkpoint" / "state.json").exists()
    source = run_dir / "checkpoint" if resume else init_dir
    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(source, local_files_only=True)
    opt = torch.optim.AdamW(model.parameters(), lr=algo.lr, betas=(0.9, 0.95), weight_decay=0.0)
    start_step = 0
    if resume:
        opt.load_state_dict(torch.load(source / "optimizer.pt"))
        start_step = json.loads((source / "state.json").read_text())["step"]
    metrics_path = run_dir / "metrics.jsonl"
    kept = []  # the lines of finished steps: not a step that did not finish, nor a line cut by a kill
    for line in metrics_path.read_text().splitlines() if metrics_path.exists() else []:
        try:
            finished = json.loads(line)["step"] <= start_step
        except ValueError:
            break
        kept += [line] if finished else []
    write_lines_atomic(metrics_path, iter(kept))
    (run_dir / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=1, default=str))
    sampling = SamplingParams(algo.temperature, algo.top_p)
    advantage_cfg, loss_cfg = algo.advantage_config(), algo.loss_config()
    engine = transformers_engine(model, tokenizer)
    tracker = Tracker(run_dir, loggers, name=run_dir.name, config=dataclasses.asdict(cfg))
    wall_start = time.perf_counter()
    async with open_pool(cfg.sandbox) as pool:
        for step in range(start_step, algo.steps):
            t0 = time.perf_counter()
            # 1. rollout: G samples of each of this step's problems, SAAR as configured for this step (saar.from_step)
            problems = task.problems("train", algo.prompts_per_step, seed=seeds.derive(cfg.seed, "step", step))
            step_saar = at_step(cfg.saar, step)
            model.eval()
            trajs = await rollout(engine, tokenizer, task.prompts(problems), algo.group_size,
                                  replace(cfg.rollout, saar=step_saar), sampling,
                                  seeds.derive(cfg.seed, "rollout", step), pool)
            t_rollout = time.perf_counter() - t0
            # 2. rewards: +1 / -1 outcome, plus DAPO's overlong penalty
            correct = task.correctness(trajs, problems)
            lengths = torch.tensor([len(t.ids) - len(t.prompt) for t in trajs])
            rewards = shaped_rewards(torch.tensor(correct), lengths, algo.max_response_tokens,
                                     algo.overlong_buffer_tokens, algo.overlong_penalty_factor)
            groups = [t.group for t in trajs]
            # the samples of the policy: not those an infrastructure failure ended (module docstring)
            trained = torch.tensor([not excluded_from_loss(t) for t in trajs])  # [B]
            rows = trained.nonzero().squeeze(-1)
            trained_groups = [groups[i] for i in rows.tolist()]
            signal = torch.zeros(len(trajs), dtype=torch.bool)  # [B]: the group's trained rewards differ
            signal[rows] = groups_with_signal(rewards[rows], trained_groups)
            keep = signal if algo.dynamic_sampling else trained
            # 3. old log-probs under the current policy, on the purified sequences (prompt cache shared per group)
            t1 = time.perf_counter()
            recomputed = recompute(model, trajs, tokenizer.pad_token_id, algo.temperature)
            gaps = [logprob_gap(t, r) for t, r in zip(trajs, recomputed)]
            batch = _batch(trajs, recomputed, tokenizer.pad_token_id)
            # 4. advantages, group-normalised over the trained samples (tokens after the prompt; zero where the mask
            # is 0, and for an excluded trajectory)
            advantages = torch.zeros_like(batch["mask"])
            advantages[rows] = compute_advantages(rewards[rows], trained_groups, batch["mask"][rows], advantage_cfg)
            t_recompute = time.perf_counter() - t1
            # 5. mini-batch updates
            t2 = time.perf_counter()
            model.train()
            for group in opt.param_groups:
                group["lr"] = algo.lr * min(1.0, (step + 1) / algo.lr_warmup_steps) if algo.lr_warmup_steps else algo.lr
            rng = random.Random(seeds.derive(cfg.seed, "minibatch", step))
            order = [i for i in rng.sample(range(len(trajs)), len(trajs)) if keep[i]]
            update_metrics: list[dict[str, float]] = []
            for k in range(algo.mini_batches):
                mb = torch.tensor(order[k::algo.mini_batches], dtype=torch.long)
                if len(mb) == 0:
                    continue
                log_prob = _log_probs(model, batch["ids"][mb], batch["attention"][mb], algo.temperature)
                loss, m = policy_loss(log_prob, batch["old_log_prob"][mb], advantages[mb], batch["mask"][mb], loss_cfg)
                opt.zero_grad()
                loss.backward()
                m["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(model.parameters(), algo.max_grad_norm))
                m["loss"] = loss.item()
                opt.step()
                update_metrics.append(m)
            t_update = time.perf_counter() - t2
            # 6. metrics
            row: dict[str, Any] = {"step": step + 1, "reward": float(rewards.mean()), **rollout_metrics(trajs, correct)}
            row["saar_active"] = step_saar.enabled  # SAAR on for this step's rollout (saar.enabled, saar.from_step)
            # how the update treats trajectories that made an error (before any splice): over those it trained on
            per_traj = advantages.sum(-1) / batch["mask"].sum(-1).clamp(min=1)  # [B]: each token carries the same
            row.update(advantage_failure_covariance([float(per_traj[i]) for i in order],
                                                    [trajs[i].stats["first_attempt_failures"] > 0 for i in order]))
            for key in ("pg_clipfrac", "pg_clipfrac_lower", "ppo_kl", "grad_norm", "loss"):
                row[key] = sum(m[key] for m in update_metrics) / max(1, len(update_metrics))
            spliced = sum(g["spliced_tokens"] for g in gaps)
            row["logprob_gap_spliced"] = sum(g["spliced_mean_abs_gap"] * g["spliced_tokens"] for g in gaps) / max(1, spliced)
            row["logprob_gap_untouched_max"] = max(g["untouched_max_abs_gap"] for g in gaps)
            row["spliced_tokens"] = spliced
            row["groups_trained"] = len({groups[i] for i in order})
            row["groups_with_signal"] = len({g for g, s in zip(groups, signal) if s})
            timing = [t.meta["timing"] for t in trajs]
            busy = sum(x["generate_s"] + x["tool_s"] + x["lookahead_s"] for x in timing)
            row["lookahead_time_share"] = sum(x["lookahead_s"] for x in timing) / max(busy, 1e-9)
            row.update(rollout_s=t_rollout, recompute_s=t_recompute, update_s=t_update, step_s=time.perf_counter() - t0)
            # 7. held-out evaluation
            if algo.eval_every and (step + 1) % algo.eval_every == 0 and step + 1 < algo.steps:
                model.eval()
                row["eval"] = (await evaluate(model, tokenizer, cfg, pool, task=task))[0]
            # 8. the metrics line, then the checkpoint: killed in between, the step reruns and its line is replaced
            _append_line(metrics_path, row)
            tracker.log(step + 1, row)
            _save_checkpoint(run_dir, model, tokenizer, opt, step + 1)
            log(f"step {step + 1}/{algo.steps}  reward {row['reward']:+.2f}  acc {row['accuracy']:.2f}  "
                f"tool failures/traj {row['final_failures_per_traj']:.2f} (first attempt "
                f"{row['first_attempt_failures_per_traj']:.2f})  rollbacks {row['rollbacks_triggered_per_traj']:.2f}  "
                f"{row['step_s']:.1f} s")
        model.eval()
        final = (await evaluate(model, tokenizer, cfg, pool, task=task))[0]
        tracker.log(algo.steps, {"eval": final})
    tracker.close()
    summary = {"init": init_dir.name, "steps": algo.steps,
               "eval": final, "wall_s_this_invocation": time.perf_counter() - wall_start}
    write_lines_atomic(run_dir / "summary.json", iter([json.dumps(summary, indent=1)]))
    return summary


def train_sync(cfg: TrainConfig, init_dir: Path, run_dir: Path, log: Callable[[str], None] = print,
               task: Task = tasks, loggers: Sequence[str] = ()) -> dict[str, Any]:
    return asyncio.run(train(cfg, init_dir, run_dir, log, task, loggers))
