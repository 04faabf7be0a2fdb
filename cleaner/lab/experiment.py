"""The lab experiment: SFT (cached), then the DAPO-with-tools baseline and CLEANER at gamma 0.3 / 0.5 / 0.7, from
the same SFT checkpoint with the same seeds, then a table and curves.

    python -m cleaner.lab.experiment [--preset lab|lab_full] [--out results/lab]

Each RL run lives in `results/runs/<hash of config and SFT checkpoint>/` (not committed): same config, same
folder, so a rerun skips finished runs and resumes interrupted ones. The committed results are
`<out>/summary.json`, `<out>/table.md` and `<out>/curves.png`. Methods differ only in the SAAR settings.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import AutoModelForCausalLM, AutoTokenizer

from cleaner.lab.sft import SftConfig
from cleaner.lab.sft import train as train_sft
from cleaner.rl.trainer import TrainConfig, evaluate, run_name, train_sync
from cleaner.saar import SaarConfig
from cleaner.sandbox import SandboxPool
from cleaner.stats import mean_stderr
from cleaner.trajectory import write_lines_atomic

METHODS: dict[str, SaarConfig] = {
    "baseline": SaarConfig(enabled=False),
    "cleaner_gamma0.3": SaarConfig(gamma=0.3),
    "cleaner_gamma0.5": SaarConfig(gamma=0.5),
    "cleaner_gamma0.7": SaarConfig(gamma=0.7),
}


@dataclass(frozen=True)
class Preset:
    steps: int
    prompts_per_step: int
    group_size: int
    eval_problems: int
    eval_samples: int
    seeds: tuple[int, ...]
    lr: float = 1e-4


PRESETS = {
    # about 15 minutes on 2 idle cores with the SFT checkpoint present
    "lab": Preset(steps=10, prompts_per_step=8, group_size=8, eval_problems=200, eval_samples=1, seeds=(0,)),
    # the size that separates the methods from noise, if anything does (hours on 2 cores)
    "lab_full": Preset(steps=60, prompts_per_step=16, group_size=8, eval_problems=500, eval_samples=2, seeds=(0, 1, 2)),
}


def train_config(preset: Preset, saar: SaarConfig, seed: int) -> TrainConfig:
    base = TrainConfig()
    return dataclasses.replace(base, steps=preset.steps, prompts_per_step=preset.prompts_per_step,
                               group_size=preset.group_size, eval_problems=preset.eval_problems,
                               eval_samples=preset.eval_samples, seed=seed, lr=preset.lr,
                               rollout=dataclasses.replace(base.rollout, saar=saar))


def _sft_eval(sft_dir: Path, cfg: TrainConfig, out: Path) -> dict[str, Any]:
    """Held-out metrics of the SFT checkpoint itself (step 0 of every method), cached beside the results."""
    path = out / "sft_eval.json"
    if path.exists() and json.loads(path.read_text())["sft"] == sft_dir.name:
        return json.loads(path.read_text())["eval"]
    tok = AutoTokenizer.from_pretrained(sft_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(sft_dir, local_files_only=True).eval()

    async def run() -> dict[str, Any]:
        async with SandboxPool(cfg.sandbox) as pool:
            return await evaluate(model, tok, cfg, pool)

    result = asyncio.run(run())
    write_lines_atomic(path, iter([json.dumps({"sft": sft_dir.name, "eval": result}, indent=1)]))
    return result


def run(preset_name: str, out: Path, runs_root: Path = Path("results/runs"), log=print) -> dict[str, Any]:
    if preset_name not in PRESETS:
        raise ValueError(f"unknown preset {preset_name!r}; valid: {', '.join(PRESETS)}")
    preset = PRESETS[preset_name]
    start = time.perf_counter()
    sft_dir = train_sft(SftConfig(), out / "sft", log=log)
    sft_eval = _sft_eval(sft_dir, train_config(preset, SaarConfig(enabled=False), preset.seeds[0]), out)
    log(f"SFT checkpoint: held-out accuracy {sft_eval['accuracy']:.3f} +- {sft_eval['accuracy_stderr']:.3f}, "
        f"tool failures/traj {sft_eval['final_failures_per_traj']:.3f}")
    methods: dict[str, Any] = {}
    for name, saar in METHODS.items():
        runs = []
        for seed in preset.seeds:
            cfg = train_config(preset, saar, seed)
            run_dir = runs_root / run_name(cfg, sft_dir)
            log(f"== {name}, seed {seed}: {run_dir}")
            t0 = time.perf_counter()
            summary = train_sync(cfg, sft_dir, run_dir, log=log)
            rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
            runs.append({"seed": seed, "run": str(run_dir), "eval": summary["eval"], "curve": rows,
                         "wall_s": time.perf_counter() - t0})
        methods[name] = _aggregate(runs, preset)
    result = {"preset": preset_name, "preset_config": dataclasses.asdict(preset), "sft": sft_dir.name,
              "sft_eval": _brief(sft_eval), "methods": methods, "wall_s": time.perf_counter() - start}
    write_lines_atomic(out / "summary.json", iter([json.dumps(result, indent=1)]))
    write_lines_atomic(out / "table.md", iter([table(result)]))
    curves(result, out / "curves.png")
    log(table(result))
    return result


def _brief(ev: dict[str, Any]) -> dict[str, Any]:
    keys = ("accuracy", "accuracy_stderr", "problems", "trajectories", "final_failures_per_traj",
            "first_attempt_failures_per_traj", "final_calls_per_traj", "response_tokens")
    return {k: ev[k] for k in keys}


def _aggregate(runs: list[dict[str, Any]], preset: Preset) -> dict[str, Any]:
    """Per method: held-out pass@1 (mean and stderr over all evaluated problems of all seeds), tool failures per
    trajectory (final and first attempt), and the training curves per seed."""
    evals = [r["eval"] for r in runs]
    acc = [e["accuracy"] for e in evals]
    if len(runs) > 1:
        acc_mean, acc_se = mean_stderr(acc)
    else:
        acc_mean, acc_se = evals[0]["accuracy"], evals[0]["accuracy_stderr"]
    return {
        "pass_at_1": acc_mean,
        "pass_at_1_stderr": acc_se,
        "final_failures_per_traj": sum(e["final_failures_per_traj"] for e in evals) / len(evals),
        "first_attempt_failures_per_traj": sum(e["first_attempt_failures_per_traj"] for e in evals) / len(evals),
        "rl_steps": preset.steps,
        "seeds": [r["seed"] for r in runs],
        "wall_s": sum(r["wall_s"] for r in runs),
        "runs": [{"seed": r["seed"], "run": r["run"], "eval": _brief(r["eval"])} for r in runs],
        "curves": [{"seed": r["seed"], "steps": [row["step"] for row in r["curve"]],
                    "train_accuracy": [row["accuracy"] for row in r["curve"]],
                    "final_failures_per_traj": [row["final_failures_per_traj"] for row in r["curve"]],
                    "first_attempt_failures_per_traj": [row["first_attempt_failures_per_traj"] for row in r["curve"]],
                    "rollbacks_triggered_per_traj": [row["rollbacks_triggered_per_traj"] for row in r["curve"]]}
                   for r in runs],
    }


def table(result: dict[str, Any]) -> str:
    p = result["preset_config"]
    lines = [
        f"Lab preset `{result['preset']}`: {p['steps']} RL steps of {p['prompts_per_step']} prompts x "
        f"{p['group_size']} samples from SFT checkpoint `{result['sft']}`; held-out pass@1 at T=1.0 on "
        f"{p['eval_problems']} problems x {p['eval_samples']} samples, SAAR off at test time; seeds "
        f"{', '.join(map(str, p['seeds']))}.",
        "",
        "| method | held-out pass@1 | tool failures / traj (final) | first-attempt failures / traj | RL steps | wall s |",
        "|---|---|---|---|---|---|",
    ]
    s = result["sft_eval"]
    lines.append(f"| SFT checkpoint (step 0) | {s['accuracy']:.3f} +- {s['accuracy_stderr']:.3f} | "
                 f"{s['final_failures_per_traj']:.3f} | {s['first_attempt_failures_per_traj']:.3f} | 0 | - |")
    for name, m in result["methods"].items():
        lines.append(f"| {name} | {m['pass_at_1']:.3f} +- {m['pass_at_1_stderr']:.3f} | "
                     f"{m['final_failures_per_traj']:.3f} | {m['first_attempt_failures_per_traj']:.3f} | "
                     f"{m['rl_steps']} | {m['wall_s']:.0f} |")
    return "\n".join(lines) + "\n"


def curves(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, m in result["methods"].items():
        for c in m["curves"]:
            label = name if c["seed"] == m["curves"][0]["seed"] else None
            axes[0].plot(c["steps"], c["train_accuracy"], label=label)
            axes[1].plot(c["steps"], c["first_attempt_failures_per_traj"], label=label)
    axes[0].set(xlabel="RL step", ylabel="training accuracy", title="accuracy of the step's rollouts")
    axes[1].set(xlabel="RL step", ylabel="failures / trajectory", title="the policy's first-attempt tool failures")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m cleaner.lab.experiment", description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="lab", help=f"one of: {', '.join(PRESETS)}")
    p.add_argument("--out", type=Path, default=Path("results/lab"))
    args = p.parse_args(argv)
    run(args.preset, args.out)


if __name__ == "__main__":
    main()
