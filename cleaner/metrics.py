"""What a rollout reports: the answer text of a trajectory, and the metrics of a set of graded trajectories (the
same for a lab training step, a held-out evaluation and a benchmark)."""

from __future__ import annotations

from typing import Any

from cleaner.saar import SaarStats
from cleaner.stats import mean_stderr, pass_at_k
from cleaner.trajectory import Trajectory, excluded_from_loss


def final_answer_text(traj: Trajectory) -> str:
    """The text of the answer turn, or "" when the trajectory ended without one (limits)."""
    return traj.turns[-1].content if traj.meta["finish_reason"] == "answer" and traj.turns else ""


def rollout_metrics(trajs: list[Trajectory], correct: list[bool]) -> dict[str, Any]:
    """Accuracy (pass@1: the mean over samples per problem, then over problems, with the stderr over problems),
    the unbiased pass@k for k = 1 and k = the samples per problem, tool calls and failures per trajectory (first
    attempt and final), SAAR counts, turns, lengths and finish reasons. Problems are the trajectories' groups.
    Infrastructure failures (`cleaner.rollout.tools`): `infra_retries` (calls re-run after one) and
    `infra_excluded_trajectories` (trajectories it ended, kept out of the loss), each also `*_by_cause`. Accuracy and
    pass@k count an excluded trajectory as it ended: unanswered, so wrong."""
    per_problem: dict[str, list[float]] = {}
    for t, ok in zip(trajs, correct):
        per_problem.setdefault(t.group, []).append(float(ok))
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
    out["infra_retries"] = total["infra_retries"]
    out["infra_retries_by_cause"] = total["infra_retries_by_cause"]
    out["infra_excluded_trajectories"] = sum(excluded_from_loss(t) for t in trajs)
    out["infra_excluded_by_cause"] = total["infra_excluded_by_cause"]
    out["generated_tokens"] = sum(t.meta["timing"]["generated_tokens"] for t in trajs)  # all sampled, retries too
    out["retry_tokens"] = sum(t.meta["timing"]["retry_tokens"] for t in trajs)
    reasons: dict[str, int] = {}
    for t in trajs:
        reasons[t.meta["finish_reason"]] = reasons.get(t.meta["finish_reason"], 0) + 1
    out["finish_reasons"] = dict(sorted(reasons.items()))
    return out


def advantage_failure_covariance(advantages: list[float], failed: list[bool]) -> dict[str, float | None]:
    """How a step's advantages treat trajectories whose first attempt at some call failed: the population covariance
    between a trajectory's advantage and that indicator (`adv_failure_cov`, which is P(failed) times the gap between
    the failed ones' mean advantage and the mean), and the failed ones' mean advantage (`adv_mean_failed`, None
    without any). Negative: the update pushes against trajectories that made an error. Over the trained
    trajectories; with SAAR the failure is the one made before the splice, whatever the trained sequence shows."""
    n = len(advantages)
    if n == 0:
        return {"adv_failure_cov": 0.0, "adv_mean_failed": None}
    mean_a, share = sum(advantages) / n, sum(failed) / n
    cov = sum((a - mean_a) * (float(f) - share) for a, f in zip(advantages, failed)) / n
    hit = [a for a, f in zip(advantages, failed) if f]
    return {"adv_failure_cov": cov, "adv_mean_failed": sum(hit) / len(hit) if hit else None}
