"""Evaluation, SAAR off and on at test time (the paper's Table 4), of a finished run or of a model as it is:

    python -m harness.eval [the run's own overrides]          # a lab run: its final checkpoint, held-out problems
    python -m harness.eval preset=smollm2                     # algo.steps=0: model.path itself, on benchmarks
    python -m harness.eval preset=smollm2 engine=sglang engine.urls=[http://node1:30000]   # served by SGLang

A run is named exactly as for `python -m harness.train`; its final checkpoint is evaluated on the lab's held-out
problems. With `algo.steps=0` there is nothing to train: `model.path` itself is evaluated, on the lab's held-out
problems (`data=lab`) or on every benchmark of `data.eval_paths` (the first `algo.eval_problems` problems of each),
and the record folder holds only the evaluation. Each benchmark runs with the same seeds SAAR off, then on (with the
run's gamma, K and p), `latency_repeats` times in turn (off, on, off, on, ...; the trajectories are the same each
time, the wall clock is not), after a short warm-up that neither side is charged for. With `engine=sglang`, the
benchmarks' generations go to the SGLang servers of `engine.urls` (already serving `model.path`; the paper's Table 4
setting); the tokenizer is read from `model.path`.

Writes the evaluation record `<run folder>/eval.json` (skipped when present with the same `latency_repeats`). Its
name covers everything that changes it (`records.evaluation_name`): a baseline's run does not depend on SAAR's
parameters, but SAAR at test time does, so a baseline evaluated with gamma, K or p other than the paper's gets its
own record, `eval-<8 hex>.json` (and `samples-<8 hex>.jsonl`), beside the one run it evaluates. It holds per
benchmark, both metric sets (Pass@1 as the mean over `algo.eval_samples` samples with its stderr over problems, the
unbiased pass@k, tool calls and failures per trajectory, turns, response tokens, wall seconds), the accuracy
difference and SAAR's latency overhead (the median over repeats, with intervals from 2 repeats on; the paper reports
+8.8% for Qwen3-4B), the commit that evaluated (`git`; with `strict=true` a tree with uncommitted changes is
refused, as by `harness.train`), and SAAR's parameters at test time (`saar_at_test_time`). Also `samples.jsonl`: the
SAAR-off trajectories that had a failed tool call, token by token, which `harness.report` purifies offline to show
original and purified side by side.
"""

from __future__ import annotations

import asyncio
import json
import statistics
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from cleaner.models import BUNDLED
from cleaner.saar import SaarConfig
from cleaner.sandbox import check_ready, open_pool
from cleaner.stats import paired_difference
from cleaner.trajectory import Trajectory, write_jsonl, write_lines_atomic
from harness import cli, records, schema

SAMPLES_KEPT = 8  # SAAR-off trajectories with a failed call kept per benchmark in samples.jsonl


def compare(off: dict[str, Any], on: dict[str, Any], walls: dict[bool, list[float]] | None = None) -> dict[str, Any]:
    """Both sides' metrics (of their first run), the accuracy difference, and SAAR's latency: over the repeated
    runs of `walls` (wall seconds per side, measured off, on, off, on, ...), each repeat's overhead on / off - 1,
    their median (`latency_overhead`), Student's t interval of their mean and the paired t interval of the extra
    seconds (from 2 repeats on), seconds per problem, and the extra tokens SAAR sampled."""
    walls = walls or {False: [off["wall_s"]], True: [on["wall_s"]]}
    overheads = [b / a - 1.0 for a, b in zip(walls[False], walls[True])]
    latency: dict[str, Any] = {
        "repeats": len(overheads), "order": "off, on, off, on, ...", "wall_s_off": walls[False],
        "wall_s_on": walls[True], "overheads": overheads,
        "seconds_per_problem_off": statistics.median(walls[False]) / off["problems"],
        "seconds_per_problem_on": statistics.median(walls[True]) / on["problems"],
        "extra_tokens": on["generated_tokens"] - off["generated_tokens"], "retry_tokens_on": on["retry_tokens"]}
    if len(overheads) >= 2:
        mean = paired_difference(overheads, [0.0] * len(overheads))
        latency["overhead_mean_interval95"] = [mean["low"], mean["high"]]
        latency["extra_seconds"] = paired_difference(walls[True], walls[False])
    return {"saar_off": off, "saar_on": on, "accuracy_delta": on["accuracy"] - off["accuracy"],
            "latency_overhead": statistics.median(overheads), "latency": latency}


async def off_and_on(evaluate_side: Callable[[bool], Awaitable[tuple[dict[str, Any], list[Trajectory]]]],
                     repeats: int) -> tuple[dict[str, Any], list[Trajectory]]:
    """`evaluate_side(on)` run `repeats` times per side, interleaved (off, on, off, on, ...) so that a slow spell
    of a shared machine weighs on both; the metrics are the first run's (the same seeds give the same
    trajectories each time), the latency all runs'. Returns (comparison, SAAR-off trajectories with a failure)."""
    first: dict[bool, dict[str, Any]] = {}
    walls: dict[bool, list[float]] = {False: [], True: []}
    samples: list[Trajectory] = []
    for _ in range(repeats):
        for on in (False, True):
            metrics, trajs = await evaluate_side(on)
            walls[on].append(metrics["wall_s"])
            if on not in first:
                first[on] = metrics
                samples += [] if on else failed_samples(trajs)
    return compare(first[False], first[True], walls), samples


def saar_at_test_time(saar: SaarConfig, on: bool) -> SaarConfig:
    """SAAR as evaluated: "on" applies SAAR with the run's gamma, K and p even to a baseline, whose own config has
    it off (its parameters are then the defaults, the paper's). `from_step`, a training schedule, does not apply."""
    return replace(saar, enabled=on, from_step=0)


def failed_samples(trajs: list[Trajectory]) -> list[Trajectory]:
    return [t for t in trajs if t.stats["first_attempt_failures"] > 0][:SAMPLES_KEPT]


async def lab_off_and_on(checkpoint: Path, cfg: DictConfig) -> tuple[dict[str, Any], list[Trajectory]]:
    """The lab's held-out evaluation, after a short warm-up so neither side pays for first-call costs."""
    from cleaner.lab.tasks import task_set
    from cleaner.lab.trainer import evaluate as evaluate_lab
    from cleaner.models import load_causal_lm

    train_cfg = schema.lab_train_config(cfg)
    task = task_set(cfg.data.task_set)
    saar = {on: saar_at_test_time(train_cfg.saar, on) for on in (False, True)}
    model, tokenizer = load_causal_lm(checkpoint)
    async with open_pool(train_cfg.sandbox) as pool:
        warm_up = replace(train_cfg, algo=replace(train_cfg.algo, eval_problems=2))
        await evaluate_lab(model, tokenizer, warm_up, pool, saar[True], task)
        result, samples = await off_and_on(lambda on: evaluate_lab(model, tokenizer, train_cfg, pool, saar[on], task),
                                           cfg.latency_repeats)
    return {"benchmarks": {"lab": result}, "latency_repeats": cfg.latency_repeats}, samples


def engine_and_tokenizer(cfg: DictConfig) -> tuple[Any, Any]:
    """`model.path` in this process (`engine=transformers`), or the SGLang servers of `engine.urls` serving it."""
    from cleaner.models import load_causal_lm, load_tokenizer
    from cleaner.rollout.engines import sglang_engine, transformers_engine

    if cfg.engine.kind == "sglang":
        tokenizer = load_tokenizer(cfg.model.path)
        return sglang_engine(list(cfg.engine.urls), tokenizer), tokenizer
    model, tokenizer = load_causal_lm(cfg.model.path)
    return transformers_engine(model, tokenizer), tokenizer


async def benchmarks_off_and_on(cfg: DictConfig) -> tuple[dict[str, Any], list[Trajectory]]:
    """Every benchmark of `data.eval_paths`, SAAR off then on, on `model.path` as it is."""
    from cleaner import bench, data
    from cleaner.rollout.engines import SamplingParams

    algo = cfg.algo
    rollout_cfg = schema.rollout_config(cfg)
    saar = {on: replace(rollout_cfg, saar=saar_at_test_time(rollout_cfg.saar, on)) for on in (False, True)}
    sampling = SamplingParams(algo.temperature, algo.eval_top_p)
    engine, tokenizer = engine_and_tokenizer(cfg)
    out: dict[str, Any] = {}
    samples: list[Trajectory] = []
    sets = {name: data.load(name, path or None)[: algo.eval_problems] for name, path in cfg.data.eval_paths.items()}
    async with open_pool(schema.sandbox_config(cfg)) as pool:
        name, problems = next(iter(sets.items()))  # warm-up, so neither side pays for first-call costs
        await bench.evaluate(engine, tokenizer, name, problems[:1], saar[True], 1, sampling, cfg.seed, pool)
        for name, problems in sets.items():
            def side(on: bool, name: str = name, problems: list = problems):
                return bench.evaluate(engine, tokenizer, name, problems, saar[on], algo.eval_samples, sampling,
                                      cfg.seed, pool)

            out[name], failed = await off_and_on(side, cfg.latency_repeats)
            samples += failed
    return {"benchmarks": out, "latency_repeats": cfg.latency_repeats}, samples


def show(run_dir: Path, result: dict[str, Any]) -> None:
    table = Table(title=f"run {run_dir.name}: SAAR at test time", title_justify="left")
    for col in ("benchmark", "SAAR", "pass@1 (n)", "pass@k", "calls / traj", "failures / traj", "rollbacks / traj",
                "turns", "resp. tokens", "wall s"):
        table.add_column(col)
    for name, res in result["benchmarks"].items():
        for side in ("saar_off", "saar_on"):
            m = res[side]
            k = max(m["pass_at_k"], key=int)
            table.add_row(name, side.replace("saar_", ""),
                          f"{m['accuracy']:.3f} +- {m['accuracy_stderr']:.3f} ({m['problems']})",
                          f"{m['pass_at_k'][k]:.3f} (k={k})", f"{m['first_attempt_calls_per_traj']:.2f}",
                          f"{m['final_failures_per_traj']:.3f}", f"{m['rollbacks_triggered_per_traj']:.3f}",
                          f"{m['turns_per_traj']:.2f}", f"{m['response_tokens']:.0f}", f"{m['wall_s']:.1f}")
    Console(width=150).print(table)
    for name, res in result["benchmarks"].items():
        latency = res.get("latency", {})
        spread = ""
        if "overhead_mean_interval95" in latency:
            low, high = latency["overhead_mean_interval95"]
            spread = (f" (median of {latency['repeats']} interleaved repeats; mean's 95% interval "
                      f"[{100 * low:+.1f}%, {100 * high:+.1f}%]; {latency['extra_tokens']:+d} tokens sampled)")
        Console(width=150).print(f"{name}: accuracy difference {res['accuracy_delta']:+.3f}, "
                                 f"latency overhead {100 * res['latency_overhead']:+.1f}%{spread}")


def check(cfg: DictConfig, sandbox_here: bool = True) -> None:
    """Everything that refuses an evaluation before it starts (ConfigError, SandboxUnavailable), as
    `harness.train.check`: a sweep runs it for every job before any starts."""
    schema.validate(cfg)
    if cfg.data.name != "lab" and (cfg.algo.steps or not cfg.data.eval_paths):
        raise schema.ConfigError(f"data={cfg.data.name} evaluates model.path on data.eval_paths: set algo.steps=0 "
                                 f"and at least one benchmark (got algo.steps={cfg.algo.steps}, "
                                 f"data.eval_paths={dict(cfg.data.eval_paths)})")
    if cfg.engine.kind == "sglang" and (cfg.data.name == "lab" or not cfg.engine.urls):
        raise schema.ConfigError("engine=sglang evaluates model.path on benchmarks (algo.steps=0, data.eval_paths) "
                                 "through the servers of engine.urls, which must not be empty "
                                 f"(got data={cfg.data.name}, engine.urls={list(cfg.engine.urls)})")
    if cfg.algo.steps == 0 and cfg.model.path not in BUNDLED and not Path(cfg.model.path).exists():
        raise schema.ConfigError(f"model.path={cfg.model.path} does not exist: give the folder (or .gguf file) of the "
                                 f"model to evaluate, or a bundled name ({', '.join(BUNDLED)})")
    schema.check_paths(cfg)
    if sandbox_here:
        check_ready(schema.sandbox_config(cfg))


def run(cfg: DictConfig) -> dict[str, Any]:
    check(cfg)
    run_dir = Path(cfg.runs_root) / records.config_hash(cfg)
    name = records.evaluation_name(cfg)
    out = run_dir / f"{name}.json"
    at_test_time = test_time_saar(cfg)
    cli.announce(cfg, run_dir)

    def evaluate(run_dir: Path) -> dict[str, Any]:
        import torch

        from cleaner.lab.sft import idle_threads

        git = records.checked_git_state(cfg)  # the commit that evaluated: a trained run may be evaluated later
        torch.set_num_threads(idle_threads())
        if cfg.data.name == "lab":
            checkpoint = run_dir / "checkpoint" if cfg.algo.steps else Path(cfg.model.path)
            result, samples = asyncio.run(lab_off_and_on(checkpoint, cfg))
        else:
            result, samples = asyncio.run(benchmarks_off_and_on(cfg))
        result["git"] = {"commit": git["commit"], "dirty": bool(git["dirty"])}
        result["saar_at_test_time"] = at_test_time
        write_jsonl(run_dir / f"samples{name.removeprefix('eval')}.jsonl", samples)
        write_lines_atomic(out, iter([json.dumps(result, indent=1)]))
        if cfg.algo.steps == 0 and not (run_dir / "summary.json").exists():
            # an evaluation-only record is finished when its summary says where its results are
            write_lines_atomic(run_dir / "summary.json", iter([json.dumps({"steps": 0, "evaluation": out.name})]))
        return result

    def current() -> bool:  # an evaluation with as many latency repeats as asked, and SAAR as asked
        if not out.exists():
            return False
        found = json.loads(out.read_text())
        return (found.get("latency_repeats", 1) == cfg.latency_repeats
                and found.get("saar_at_test_time", at_test_time) == at_test_time)

    if current():
        print(f"evaluation {out} is current; skipping it")
        result = json.loads(out.read_text())
    elif cfg.algo.steps == 0 and not (run_dir / "summary.json").exists():
        result = records.run_record(cfg, evaluate)
    elif (run_dir / "summary.json").exists():
        result = evaluate(run_dir)
    else:
        raise schema.ConfigError(f"run {run_dir} has not finished; train it first with python -m harness.train "
                                 "and the same overrides")
    show(run_dir, result)
    return result


def test_time_saar(cfg: DictConfig) -> dict[str, Any]:
    """SAAR's parameters on the evaluation's "on" side: the run's own (for a baseline, those of its command line,
    by default the paper's); not `from_step`, which only schedules training."""
    saar = OmegaConf.to_container(cfg.saar, resolve=True)
    saar.pop("enabled")
    saar.pop("from_step")
    return saar


if __name__ == "__main__":
    cli.main(run, "eval", check=check)
