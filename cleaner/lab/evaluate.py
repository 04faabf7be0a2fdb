"""Rolling a model out on prompts with a local engine, scoring lab problems, and the metrics a step or an
evaluation reports (also used for benchmarks, see `cleaner.bench`)."""

from __future__ import annotations

from typing import Any

from cleaner import chat
from cleaner.lab.sft_data import SYSTEM_PROMPT
from cleaner.lab.tasks import Problem, check_answer
from cleaner.rollout.drivers import make_episodes, run_batched
from cleaner.rollout.engines import SamplingParams, TransformersEngine
from cleaner.rollout.episode import RolloutConfig
from cleaner.rollout.tools import SandboxTools
from cleaner.saar import SaarStats
from cleaner.sandbox import SandboxPool
from cleaner.stats import mean_stderr, pass_at_k
from cleaner.trajectory import Trajectory


def lab_prompts(problems: list[Problem]) -> list[tuple[str, list[dict[str, str]]]]:
    """(problem id, chat messages) for lab problems."""
    return [(p.id, [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": p.question}])
            for p in problems]


async def rollout(model: Any, tokenizer: Any, prompts: list[tuple[str, list[dict[str, str]]]], group_size: int,
                  cfg: RolloutConfig, sampling: SamplingParams, seed: int, saar_enabled: bool, pool: SandboxPool,
                  batch_trajectories: int = 64) -> list[Trajectory]:
    """`group_size` trajectories per (prompt id, messages) (ids `<prompt id>/<k>`), run by the batched driver in
    chunks of `batch_trajectories` with one sandbox session per trajectory."""
    engine = TransformersEngine(model, tokenizer.convert_tokens_to_ids(chat.IM_END), tokenizer.pad_token_id)
    episodes = make_episodes(tokenizer, prompts, group_size, cfg, seed, saar_enabled)
    out: list[Trajectory] = []
    for start in range(0, len(episodes), batch_trajectories):
        out += await run_batched(engine, SandboxTools(pool), episodes[start : start + batch_trajectories], sampling)
    return out


def final_answer_text(traj: Trajectory) -> str:
    """The text of the answer turn, or "" when the trajectory ended without one (limits)."""
    return traj.turns[-1].content if traj.meta["finish_reason"] == "answer" and traj.turns else ""


def correctness(trajs: list[Trajectory], problems: list[Problem]) -> list[bool]:
    answers = {p.id: p.answer for p in problems}
    return [check_answer(final_answer_text(t), answers[t.id.rsplit("/", 1)[0]]) for t in trajs]


def metrics(trajs: list[Trajectory], correct: list[bool]) -> dict[str, Any]:
    """Accuracy (pass@1: the mean over samples per problem, then over problems, with the stderr over problems),
    the unbiased pass@k for k = 1 and k = the samples per problem, tool calls and failures per trajectory (first
    attempt and final), SAAR counts, turns, lengths and finish reasons."""
    per_problem: dict[str, list[float]] = {}
    for t, ok in zip(trajs, correct):
        per_problem.setdefault(t.id.rsplit("/", 1)[0], []).append(float(ok))
    acc, acc_se = mean_stderr([sum(v) / len(v) for v in per_problem.values()])
    samples = min(len(v) for v in per_problem.values())
    n = max(1, len(trajs))
    total = SaarStats.total([t.stats for t in trajs])
    out: dict[str, Any] = {
        "accuracy": acc,
        "accuracy_stderr": acc_se,
        "problems": len(per_problem),
        "trajectories": len(trajs),
        "response_tokens": sum(len(t.ids) - len(t.prompt) for t in trajs) / n,
        "turns_per_traj": sum(len(t.turns) for t in trajs) / n,  # assistant turns of the final trajectories
        "first_attempt_failure_rate": total["first_attempt_failures"] / max(1, total["first_attempt_calls"]),
        # the unbiased estimator per problem, averaged over problems, for k = 1 and k = the samples per problem
        "pass_at_k": {str(k): sum(pass_at_k(len(v), int(sum(v)), k) for v in per_problem.values()) / len(per_problem)
                      for k in sorted({1, samples})},
    }
    for key in ("first_attempt_calls", "first_attempt_failures", "final_calls", "final_failures", "lookahead_calls",
                "infra_failures", "rollbacks_triggered", "rollbacks_recovered", "rollbacks_exhausted",
                "rollbacks_abandoned", "rollbacks_cut"):
        out[f"{key}_per_traj"] = total[key] / n
    for key in ("splices_shallow", "splices_deep", "tokens_removed", "saar_applied"):
        out[key] = total[key]
    out["first_attempt_failures_by_class"] = total["first_attempt_failures_by_class"]
    out["generated_tokens"] = sum(t.meta["timing"]["generated_tokens"] for t in trajs)  # all sampled, retries too
    out["retry_tokens"] = sum(t.meta["timing"]["retry_tokens"] for t in trajs)
    reasons: dict[str, int] = {}
    for t in trajs:
        reasons[t.meta["finish_reason"]] = reasons.get(t.meta["finish_reason"], 0) + 1
    out["finish_reasons"] = dict(sorted(reasons.items()))
    return out
