"""The lab's regime task set measured at its SFT start: the record `results/lab/regime_sft_eval.json`.

    python -m harness.lab_regime [--problems 400] [--out results/lab/regime_sft_eval.json] [override ...]

Composes the run config of `preset=lab_regime` (plus Hydra overrides), loads `model.path` (the regime set's SFT
checkpoint, which `python -m cleaner.lab.sft --task-set regime` trains) and samples one trajectory per held-out
test problem at temperature 1.0, as `harness.eval` and the trainer's `evaluate` do (the same function, seeds and
problems), three times:
- `saar_off`: the preset's limits, SAAR off (the paper's evaluation): Pass@1, failed calls per trajectory by
  exception, recovery within K, lengths;
- `saar_on`: the same with SAAR on at test time (the preset's gamma, K, p): SAAR's own recovered share;
- `sizing`: SAAR off with a response budget far above the preset's (`--sizing-tokens`), so no trajectory is cut:
  the length distribution the preset's budget was sized from, and where its overlong buffer starts in it.

Recovery within K (K = saar.max_retries, 3): among the failed calls (model errors) of the SAAR-off trajectories, the
share followed by a successful call among the next K calls of the same trajectory. Intervals are mean +- stderr
over trajectories (one per problem); for the recovered share, the binomial stderr over failed calls.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import shlex
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir

from cleaner.saar import MODEL_ERRORS, error_class
from cleaner.stats import mean_stderr
from cleaner.trajectory import Trajectory, write_lines_atomic
from harness import cli, records, schema


def _percentiles(values: list[int]) -> dict[str, int]:
    """Nearest-rank percentiles."""
    ordered = sorted(values)
    return {f"p{q}": ordered[min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1)]
            for q in (50, 75, 90, 95, 99)} | {"max": ordered[-1]}


def regime_stats(trajs: list[Trajectory], correct: list[bool], k: int) -> dict[str, Any]:
    """Pass@1, calls and failed calls per trajectory (by exception), recovery within `k` calls, failures inside
    correct trajectories, response lengths, turns and finish reasons, of one sample per problem."""
    failed_per_traj, calls_per_traj, by_class = [], [], Counter()
    failed = recovered = 0
    with_failure = with_failure_correct = 0
    for t, ok in zip(trajs, correct):
        results = [turn.result for turn in t.turns if turn.result is not None]
        fails = [r.status in MODEL_ERRORS for r in results]
        calls_per_traj.append(len(results))
        failed_per_traj.append(sum(fails))
        for i, (r, bad) in enumerate(zip(results, fails)):
            if bad:
                failed += 1
                by_class[error_class(r)] += 1
                recovered += any(later.status == "ok" for later in results[i + 1:i + 1 + k])
        if any(fails):
            with_failure += 1
            with_failure_correct += ok
    lengths = [len(t.ids) - len(t.prompt) for t in trajs]
    acc, acc_se = mean_stderr([float(c) for c in correct])
    fpt, fpt_se = mean_stderr([float(f) for f in failed_per_traj])
    share = recovered / failed if failed else float("nan")
    reasons = Counter(t.meta["finish_reason"] for t in trajs)
    turns = Counter(str(len(t.turns)) for t in trajs)
    return {
        "problems": len(trajs), "pass_at_1": acc, "pass_at_1_stderr": acc_se,
        "calls_per_traj": sum(calls_per_traj) / len(trajs),
        "failed_calls_per_traj": fpt, "failed_calls_per_traj_stderr": fpt_se, "failed_calls": failed,
        "failed_calls_by_class": dict(sorted(by_class.items(), key=lambda kv: -kv[1])),
        f"recovered_within_{k}": recovered, f"recovered_within_{k}_share": share,
        f"recovered_within_{k}_share_stderr": math.sqrt(share * (1 - share) / failed) if failed else float("nan"),
        "trajectories_with_a_failure": with_failure,
        "correct_among_trajectories_with_a_failure": with_failure_correct,
        "response_tokens_mean": sum(lengths) / len(lengths), "response_tokens": _percentiles(lengths),
        "turns": dict(sorted(turns.items())), "finish_reasons": dict(sorted(reasons.items())),
    }


async def measure(cfg: Any, sizing_tokens: int, log: Any = print) -> dict[str, Any]:
    """The three evaluations of the module docstring, on `cfg.model.path`."""
    import torch

    from cleaner.lab.sft import idle_threads
    from cleaner.lab.tasks import task_set
    from cleaner.lab.trainer import evaluate
    from cleaner.models import load_causal_lm
    from cleaner.sandbox import open_pool

    torch.set_num_threads(idle_threads())
    train_cfg = schema.lab_train_config(cfg)
    task = task_set(cfg.data.task_set)
    k = train_cfg.saar.max_retries
    model, tokenizer = load_causal_lm(Path(cfg.model.path))
    sizing_cfg = replace(train_cfg, algo=replace(train_cfg.algo, max_response_tokens=sizing_tokens))
    out: dict[str, Any] = {}
    async with open_pool(train_cfg.sandbox) as pool:
        for name, run_cfg, saar in (("saar_off", train_cfg, None),
                                    ("saar_on", train_cfg, replace(train_cfg.saar, enabled=True)),
                                    ("sizing", sizing_cfg, None)):
            start = time.perf_counter()
            metrics, trajs = await evaluate(model, tokenizer, run_cfg, pool, saar, task)
            problems = task.problems(run_cfg.algo.eval_split, run_cfg.algo.eval_problems, seed=run_cfg.seed)
            out[name] = regime_stats(trajs, task.correctness(trajs, problems), k)
            if saar is not None:
                triggered = metrics["rollbacks_triggered_per_traj"] * len(trajs)
                recovered = metrics["rollbacks_recovered_per_traj"] * len(trajs)
                out[name]["saar_rollbacks_triggered"] = round(triggered)
                out[name]["saar_rollbacks_recovered"] = round(recovered)
                out[name]["saar_recovered_share"] = recovered / triggered if triggered else float("nan")
            out[name]["wall_s"] = time.perf_counter() - start
            log(f"{name}: Pass@1 {out[name]['pass_at_1']:.3f} +- {out[name]['pass_at_1_stderr']:.3f}, failed calls "
                f"per trajectory {out[name]['failed_calls_per_traj']:.3f}, recovered within {k} "
                f"{out[name][f'recovered_within_{k}_share']:.3f}, response tokens {out[name]['response_tokens']}")
    lengths = out["sizing"]["response_tokens"]
    algo = train_cfg.algo
    buffer_start = algo.max_response_tokens - algo.overlong_buffer_tokens
    out["limits"] = {"max_response_tokens": algo.max_response_tokens,
                     "overlong_buffer_tokens": algo.overlong_buffer_tokens,
                     "buffer_share": algo.overlong_buffer_tokens / algo.max_response_tokens,
                     "buffer_starts_at": buffer_start, "max_turns": algo.max_turns, "K": k,
                     "sizing_budget": sizing_tokens, "sizing_percentiles": lengths}
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m harness.lab_regime", description=__doc__.split("\n\n")[0])
    p.add_argument("--problems", type=int, default=400, help="held-out test problems, one sample each")
    p.add_argument("--sizing-tokens", type=int, default=2048, help="response budget of the sizing evaluation")
    p.add_argument("--out", type=Path, default=Path("results/lab/regime_sft_eval.json"))
    p.add_argument("overrides", nargs="*", help="Hydra overrides after preset=lab_regime")
    args = p.parse_args(argv)
    with initialize_config_dir(str(cli.CONF), version_base="1.3"):
        cfg = compose("train", overrides=["preset=lab_regime", f"algo.eval_problems={args.problems}",
                                          *args.overrides, cli.searchpath_override()])
    schema.validate(cfg)
    git = records.git_state()
    result = asyncio.run(measure(cfg, args.sizing_tokens))
    sft_dir = Path(cfg.model.path)
    done = json.loads((sft_dir / "done.json").read_text())
    record = {
        "command": "python -m harness.lab_regime " + " ".join(map(shlex.quote, (argv if argv is not None
                                                                                 else sys.argv[1:]))),
        "git": {"commit": git["commit"], "dirty": bool(git["dirty"])},
        "sft": {"path": cfg.model.path, "hash": done["hash"], "recipe": done["config"], "data": done.get("data"),
                "final_loss": done["final_loss"], "final_digit_loss": done["final_digit_loss"]},
        "eval": {"task_set": cfg.data.task_set, "split": cfg.algo.eval_split, "problems": args.problems,
                 "samples_per_problem": cfg.algo.eval_samples, "temperature": cfg.algo.temperature,
                 "top_p": cfg.algo.eval_top_p, "seed": cfg.seed,
                 "saar_at_test_time": {k: v for k, v in dataclasses.asdict(schema.saar_config(cfg)).items()
                                       if k != "enabled"}},
        **result,
    }
    write_lines_atomic(args.out, iter([json.dumps(record, indent=1)]))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
