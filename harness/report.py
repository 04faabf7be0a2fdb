"""The paper's tables, regenerated from run records beside the paper's reported numbers:

    python -m harness.report [--runs results/runs] [--out results/runs/report] [--tuning results/tuning]
                             [--start results/lab/regime_sft_eval.json] [--paper PATH] [--strict]

Reads every finished run record under `--runs` (folders holding `config.yaml` and `summary.json`; see
`harness.records`) and the paper's figures (`harness/paper_results.yaml`, each block naming its table), and writes
to `--out`. By default both are your own runs' folders, which git ignores: a bare `python -m harness.report` never
touches the committed report. The committed report is regenerated only on request, from the records it cites:
`python -m harness.report --runs results/report/runs --out results/report` (`make comparison` writes it with
`--strict`). Written:
- `<table>.md`, `<table>.csv`, `<table>.tex` and all Markdown tables in `tables.md`: Table 1 (methods x benchmarks,
  RL steps), Table 2 (tools and SAAR, P@1 / P@k), Table 4 (SAAR at test time, with evaluation time), the gamma / K
  / p ablation, the step budget (steps, prompts, trajectories and sampled tokens), the comparison of each CLEANER
  setting with the baseline, paired by seed (when two or more seeds pair), the 2x2 of method and overlong penalty
  (`contrasts`, when both methods ran with the penalty on and off), SAAR switched on mid-training beside the
  paper's post-hoc experiment (`posthoc`, when such runs pair with their baseline), the update's signal on
  trajectories that made an error, per arm (`failure_signal`, from records that log it), SAAR's latency at test
  time over repeated evaluations (when an evaluation was repeated), the learning-rate searches (`--tuning`, by
  default `results/tuning`; cited in place, not copied) and the SFT start of the runs' task set (`start`, from
  `--start`, by default `results/lab/regime_sft_eval.json`, when some run trained on its task set; cited in place);
- `curves.png`: held-out Pass@1 (from the start), training accuracy, tool failures per trajectory and (where
  logged) the covariance of advantage and first-attempt failure against RL step, one line per method with a band
  over seeds;
- `index.html`: the tables, the figure, and sample trajectories (original and purified side by side, spliced
  spans highlighted);
- `runs/<run>/`: a copy of each cited record, without checkpoints, so every measured cell traces to a folder in
  the report.
A record whose files do not read back (`harness.records.record_problem`: a truncated `metrics.jsonl`, say) is left
out with one line naming the file. With `--strict` it writes nothing and exits 2 unless every record reads back and
was made at one clean commit (`env.json`, and `eval.json`'s commit when it names one).

Cells. A measured cell is a percentage with its stderr: over seeds when the row pools several seeds (`n seeds`),
else over problems. Its row's `source` names the run folders it comes from. A cell reported by the paper carries a
dagger (`72.7†`) and its row's source is `paper`. Measured Pass@1 is with SAAR off at test time (the policy
alone); the paper's Table 1 rows for CLEANER match its Table 4 "SAAR on" row, so Table 4 shows both. The lab
column is the lab's procedural held-out set, not a benchmark of the paper.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import html
import io
import json
import math
import os
import shutil
import statistics
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

from cleaner.purify import purify
from cleaner.saar import SaarConfig
from cleaner.stats import at_the_edge, first_step_reaching, mean_stderr, paired_difference, student_t_quantile
from cleaner.trajectory import Trajectory, read_jsonl
from harness.records import hashed_part, record_problem

PAPER_RESULTS = Path(__file__).resolve().parent / "paper_results.yaml"  # the paper's figures, with their tables
BENCHMARKS = {"aime24": "AIME24", "aime25": "AIME25", "gpqa_diamond": "GPQA", "livecodebench_v6": "LCB v6",
              "math500": "MATH-500", "lab": "lab held-out"}  # run records' names -> column titles
PAPER_COLUMNS = {"aime24": "aime24", "aime25": "aime25", "gpqa": "gpqa_diamond", "lcb_v6": "livecodebench_v6"}
PAPER_KEY = {run: key for key, run in PAPER_COLUMNS.items()}  # run records' benchmark names -> the paper's keys
REPORTED = "†"
LOCAL_RUNS = Path("results/runs")  # where the harness records runs by default (git-ignored)
LOCAL_OUT = LOCAL_RUNS / "report"  # where a bare report goes (git-ignored, as the runs)
COMMITTED = Path("results/report")  # the committed report; its cited records are in runs/
LOCAL_TUNING = Path("results/tuning")  # the committed learning-rate searches (sweeps/tune_lr.yaml)
LOCAL_START = Path("results/lab/regime_sft_eval.json")  # the regime task set's SFT start (harness.lab_regime)
RECORD_FILES = ("config.yaml", "env.json", "summary.json", "metrics.jsonl", "eval*.json", "samples*.jsonl")  # globs


class ReportError(ValueError):
    """A run record the report cannot read, naming the file."""


# -- records ------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Record:
    name: str  # the run folder's name (its config hash)
    path: Path
    config: dict[str, Any]
    summary: dict[str, Any]
    evaluation: dict[str, Any] | None  # eval.json (harness.eval), if any
    metrics: list[dict[str, Any]]  # metrics.jsonl, one line per RL step
    # eval-<8 hex>.json: evaluations with SAAR's parameters at test time other than the run's (a baseline's)
    other_evaluations: tuple[dict[str, Any], ...] = ()

    @property
    def steps(self) -> int:
        return self.config["algo"]["steps"]

    @property
    def saar(self) -> bool:
        return bool(self.config["saar"]["enabled"])


def provenance(r: Record) -> str | None:
    """Why a record may not come from committed code, or None: every invocation of its run (`env.json`) and its
    evaluation (`eval.json`, when it names its commit) ran at one clean commit."""
    if not (r.path / "env.json").exists():
        return "no env.json"
    env = _read(r.path / "env.json", json.loads)
    made = env.get("invocations") or [{"commit": env["git"]["commit"], "dirty": bool(env["git"]["dirty"])}]
    if any(i["dirty"] for i in made) or any(ev.get("git", {}).get("dirty") for ev in evaluations(r)):
        return "made from a tree with uncommitted changes"
    if len({i["commit"] for i in made}) > 1:
        return "resumed at another commit"
    return None


def _read(path: Path, parse: Callable[[str], Any]) -> Any:
    try:
        return parse(path.read_text())
    except (ValueError, yaml.YAMLError) as e:
        raise ReportError(f"{path}: not readable ({e})") from None


def load_records(runs_root: Path, skip: Callable[[str], None] | None = None) -> list[Record]:
    """Every finished record under `runs_root` (a folder with `config.yaml` and `summary.json`), by name. A record
    that does not read back raises ReportError naming the file, or with `skip` is reported to it and left out."""
    out = []
    for run in sorted(p for p in runs_root.iterdir() if (p / "config.yaml").exists()):
        if not (run / "summary.json").exists():
            continue
        try:
            out.append(_record(run))
        except ReportError as e:
            if skip is None:
                raise
            skip(f"left out {run.name}: {e}")
    return out


def _record(run: Path) -> Record:
    problem = record_problem(run)
    if problem is not None:
        raise ReportError(problem)
    config = _read(run / "config.yaml", yaml.safe_load)
    found = {}
    for path in sorted(run.glob("eval*.json")):
        found[path.stem] = _read(path, json.loads)
        if "benchmarks" not in found[path.stem]:
            raise ReportError(f"{path}: no 'benchmarks' key (written by an older harness.eval; delete it and run "
                              "python -m harness.eval again)")
    metrics_path = run / "metrics.jsonl"
    metrics = [json.loads(line) for line in metrics_path.read_text().splitlines()] if metrics_path.exists() else []
    return Record(run.name, run, config, _read(run / "summary.json", json.loads), found.pop("eval", None), metrics,
                  tuple(found.values()))


def evaluations(r: Record) -> list[dict[str, Any]]:
    """All of a run's evaluation records: eval.json first."""
    return [ev for ev in (r.evaluation, *r.other_evaluations) if ev is not None]


def test_time_saar(r: Record, ev: dict[str, Any]) -> dict[str, Any]:
    """SAAR's parameters on an evaluation's "on" side (an evaluation made before they were recorded used the run's
    own: a CLEANER run's, or for a baseline the paper's defaults)."""
    if "saar_at_test_time" in ev:
        return ev["saar_at_test_time"]
    own = r.config["saar"] if r.saar else dataclasses.asdict(SaarConfig())
    return {k: v for k, v in own.items() if k != "enabled"}


def group_key(config: dict[str, Any]) -> str:
    """Runs that differ only in their seed pool into one row: the run's hashed config (`records.hashed_part`, so a
    baseline ignores SAAR's parameters) without the seed."""
    part = hashed_part(OmegaConf.create(config))
    part.pop("seed", None)
    return json.dumps(part, sort_keys=True)


def penalty_off(r: Record) -> bool:
    """Whether the run trained without DAPO's overlong penalty (factor 0; absent: the recipe's default, on)."""
    return r.config.get("algo", {}).get("overlong_penalty_factor", 1.0) == 0


def penalty_note(r: Record) -> str:
    return ", no overlong penalty" if penalty_off(r) else ""


def label(r: Record) -> str:
    model = r.config["model"]["name"]
    task_set = r.config.get("data", {}).get("task_set", "lab")  # the lab's task set (older records: "lab")
    model += f" ({task_set} set)" if task_set != "lab" else ""
    if r.steps == 0:
        return f"{model} (no RL)"
    if not r.saar:
        return f"{model} DAPO baseline{penalty_note(r)}"
    s = r.config["saar"]
    start = f", SAAR from step {s['from_step'] + 1}" if s.get("from_step") else ""  # older records have no from_step
    return (f"{model} CLEANER (γ {s['gamma']}, K {s['max_retries']}, rollback prob. {s['rollback_probability']}"
            f"{start}){penalty_note(r)}")


def groups(records: Iterable[Record]) -> list[list[Record]]:
    """Records pooled by `group_key`, ordered by label, each by seed."""
    pooled: dict[str, list[Record]] = {}
    for r in records:
        pooled.setdefault(group_key(r.config), []).append(r)
    order = [sorted(g, key=lambda r: r.config["seed"]) for g in pooled.values()]
    return sorted(order, key=lambda g: (g[0].config["model"]["name"], g[0].steps > 0, g[0].saar, label(g[0])))


# -- cells and tables ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Cell:
    text: str
    reported: bool = False  # copied from the paper

    def shown(self) -> str:
        return f"{self.text}{REPORTED}" if self.reported and self.text else self.text


@dataclass(frozen=True)
class Table:
    name: str  # file stem
    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[Cell, ...], ...]  # the last cell of a row is its source
    notes: tuple[str, ...] = ()
    records_dir: str = "runs"  # where the source records are, relative to the report's folder


def paper(value: Any) -> Cell:
    """A reported cell: a number, [P@1, P@16] as "P@1 / P@16", or None as empty."""
    if value is None:
        return Cell("")
    if isinstance(value, list):
        return Cell(" / ".join(map(str, value)), reported=True)
    return Cell(str(value), reported=True)


def percent(values: list[tuple[float, float]]) -> Cell:
    """Accuracy cell from (accuracy, stderr over problems) per seed: one seed keeps its stderr, several pool."""
    if len(values) == 1:
        acc, se = values[0]
        return Cell(f"{100 * acc:.1f} ± {100 * se:.1f}")
    acc, se = mean_stderr([a for a, _ in values])
    return Cell(f"{100 * acc:.1f} ± {100 * se:.1f} ({len(values)} seeds)")


def number(values: list[float], digits: int = 3) -> Cell:
    """A value, or the mean ± stderr over seeds when they differ."""
    if len(set(values)) == 1:
        return Cell(f"{values[0]:.{digits}f}")
    mean, se = mean_stderr(values)
    return Cell(f"{mean:.{digits}f} ± {se:.{digits}f}")


def overhead_cell(overheads: list[float]) -> Cell:
    """A signed percentage, with its stderr over seeds when there are several."""
    if len(overheads) == 1:
        return Cell(f"{100 * overheads[0]:+.1f}%")
    mean, se = mean_stderr(overheads)
    return Cell(f"{100 * mean:+.1f}% ± {100 * se:.1f}")


def source(group: list[Record]) -> Cell:
    return Cell(" ".join(r.name for r in group))


def eval_side(r: Record, benchmark: str, side: str, ev: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The metrics of one benchmark with SAAR off or on at test time: the evaluation `ev` (default eval.json), or for
    `lab` the run's own final held-out evaluation (SAAR off) when it was not evaluated with harness.eval."""
    ev = r.evaluation if ev is None else ev
    if ev is not None and benchmark in ev["benchmarks"]:
        return ev["benchmarks"][benchmark][f"saar_{side}"]
    if benchmark == "lab" and side == "off" and "eval" in r.summary:
        return r.summary["eval"]
    return None


def accuracy_cell(group: list[Record], benchmark: str, side: str = "off",
                  evs: list[dict[str, Any]] | None = None) -> Cell:
    found = [eval_side(r, benchmark, side, ev) for r, ev in zip(group, evs or [None] * len(group))]
    if any(m is None for m in found):
        return Cell("")
    return percent([(m["accuracy"], m["accuracy_stderr"]) for m in found])


def measured_benchmarks(records: list[Record]) -> list[str]:
    seen = {b for r in records for b in BENCHMARKS if eval_side(r, b, "off") is not None}
    return [b for b in BENCHMARKS if b in seen]


def columns(records: list[Record]) -> list[str]:
    """The paper's benchmarks, then the other ones measured (MATH-500, lab), as run records name them."""
    return [*PAPER_COLUMNS.values(), *(b for b in measured_benchmarks(records) if b not in PAPER_KEY)]


def paper_row(values: list[Any], paper_columns: list[str], cols: list[str]) -> list[Cell]:
    by_key = dict(zip(paper_columns, values))
    return [paper(by_key[PAPER_KEY[c]]) if c in PAPER_KEY else Cell("") for c in cols]


def table1(records: list[Record], results: dict[str, Any]) -> Table:
    cols = columns(records)
    t1 = results["table1_4b"]
    rows = []
    for method, values in t1["rows"].items():
        rows.append((Cell(method), *paper_row(values, t1["columns"], cols), paper(values[-1]), Cell("paper")))
    for g in groups(records):
        rows.append((Cell(label(g[0])), *(accuracy_cell(g, b) for b in cols), Cell(str(g[0].steps)), source(g)))
    return Table("table1", "Table 1: Pass@1 (%) by method and benchmark, with RL steps",
                 ("method", *(BENCHMARKS[c] for c in cols), "RL steps", "source"), tuple(rows),
                 ("Measured: SAAR off at test time; ± is the stderr (over seeds when pooled, else over problems).",
                  f"{REPORTED} reported by the paper ({t1['source']}; Qwen3-4B setting; RL steps at batch 128)."))


def pass_cells(group: list[Record], benchmark: str) -> Cell:
    """P@1 / P@k (k = the samples per problem), both unbiased, averaged over seeds."""
    found = [eval_side(r, benchmark, "off") for r in group]
    if any(m is None for m in found):
        return Cell("")
    k = max(int(k) for k in found[0]["pass_at_k"])
    p1 = sum(m["pass_at_k"]["1"] for m in found) / len(found)
    pk = sum(m["pass_at_k"][str(k)] for m in found) / len(found)
    return Cell(f"{100 * p1:.1f}" if k == 1 else f"{100 * p1:.1f} / {100 * pk:.1f} (k={k})")


def table2(records: list[Record], results: dict[str, Any]) -> Table:
    t2 = results["table2_ablation"]
    cols = columns(records)
    rows = []
    for model in ("qwen3_4b", "qwen2_5_7b"):
        for setting, values in t2[model].items():
            rows.append((Cell(f"{model} {setting}"), *paper_row(values, t2["columns"], cols), Cell("paper")))
    for g in groups(r for r in records if r.steps > 0):
        rows.append((Cell(label(g[0])), *(pass_cells(g, b) for b in cols), source(g)))
    return Table("table2", "Table 2: tools and SAAR, P@1 / P@k (%)",
                 ("setting", *(BENCHMARKS[c] for c in cols), "source"), tuple(rows),
                 ("P@k is the unbiased estimator 1 - C(n-c,k)/C(n,k) with k = the samples per problem; measured "
                  "rows: SAAR off at test time, averaged over seeds.",
                  f"{REPORTED} reported by the paper ({t2['source']}; AIME cells P@1 / P@16, GPQA and LCB P@1)."))


def table4(records: list[Record], results: dict[str, Any]) -> Table:
    t4 = results["table4_saar_at_test_time_4b"]
    evaluated = [r for r in records if evaluations(r)]
    cols = columns(evaluated)
    rows = []
    for side, values in t4["rows"].items():
        rows.append((Cell(f"CLEANER-4B, SAAR {side.removeprefix('saar_')}"), *paper_row(values, t4["columns"], cols),
                     Cell(f"{values[-1]} min", reported=True), Cell(""), Cell("paper")))
    rows.append((Cell("CLEANER-4B, stated overhead"), *(Cell("") for _ in cols), Cell(""),
                 Cell(f"+{t4['stated_latency_overhead_percent']}%", reported=True), Cell("paper")))
    for g in groups(evaluated):
        settings: dict[str, list[tuple[Record, dict[str, Any]]]] = {}  # SAAR at test time -> (run, evaluation)
        for r in g:
            for ev in evaluations(r):
                settings.setdefault(json.dumps(test_time_saar(r, ev), sort_keys=True), []).append((r, ev))
        for setting, pairs in settings.items():
            runs, evs = [r for r, _ in pairs], [ev for _, ev in pairs]
            walls = [evaluation_walls(ev) for ev in evs]
            overhead = overhead_cell([statistics.median(on / off - 1 for on, off in zip(w["on"], w["off"]))
                                      for w in walls])
            for side in ("on", "off"):
                rows.append((Cell(f"{label(g[0])}, SAAR {side}{saar_note(g[0], json.loads(setting), side)}"),
                             *(accuracy_cell(runs, b, side, evs) for b in cols),
                             Cell(f"{sum(statistics.median(w[side]) for w in walls) / len(evs):.1f} s"),
                             overhead if side == "on" else Cell(""), source(runs)))
    return Table("table4", "Table 4: SAAR at test time, Pass@1 (%) and evaluation time",
                 ("model, SAAR at test time", *(BENCHMARKS[c] for c in cols), "eval time", "latency overhead",
                  "source"), tuple(rows),
                 ("Measured: the same checkpoint and seeds with SAAR off and on; eval time is the rollout wall time "
                  "summed over benchmarks, and overhead = on / off - 1, each the median over the repeats of an "
                  "evaluation repeated off, on, off, on, ... (the latency table has their intervals), then the mean "
                  "over seeds.",
                  f"{REPORTED} reported by the paper ({t4['source']}; AIME cells P@1 / P@16; the stated +8.8% does not "
                  "follow from 115 / 106 min, which is +8.5%)."))


def saar_note(r: Record, setting: dict[str, Any], side: str) -> str:
    """SAAR's parameters at test time, named on a baseline's "on" row (a CLEANER run's are its label's)."""
    if r.saar or side == "off":
        return ""
    return f" (γ {setting['gamma']}, K {setting['max_retries']}, rollback prob. {setting['rollback_probability']})"


def evaluation_walls(ev: dict[str, Any]) -> dict[str, list[float]]:
    """An evaluation's wall seconds summed over its benchmarks, per repeat, SAAR "off" and "on"."""
    def walls(m: dict[str, Any], side: str) -> list[float]:  # one per repeat; one evaluation before repeats existed
        return m.get("latency", {}).get(f"wall_s_{side}", [m[f"saar_{side}"]["wall_s"]])

    return {side: [sum(repeat) for repeat in zip(*(walls(m, side) for m in ev["benchmarks"].values()))]
            for side in ("off", "on")}


def ablation(records: list[Record]) -> Table:
    rows = []
    for g in groups(r for r in records if r.steps > 0 and eval_side(r, "lab", "off") is not None):
        s = g[0].config["saar"]
        params = [Cell(str(s[k])) if g[0].saar else Cell("off") for k in ("gamma", "max_retries",
                                                                          "rollback_probability")]
        failures = number([eval_side(r, "lab", "off")["first_attempt_failures_per_traj"] for r in g])
        rows.append((Cell(label(g[0])), *params, accuracy_cell(g, "lab"), failures, Cell(str(len(g))), source(g)))
    return Table("ablation", "SAAR's gamma, K and p: lab held-out Pass@1 (%) and tool failures per trajectory",
                 ("method", "γ", "K", "rollback prob.", "lab Pass@1", "tool failures / traj", "seeds", "source"),
                 tuple(rows),
                 ("Held-out, SAAR off at test time; failures are the policy's own (first attempts). The paper reports "
                  "no such grid: it fixes γ 0.5 and K 3, with p 1.0 (4B) and 0.7 (7B).",))


def budget(records: list[Record], results: dict[str, Any]) -> Table:
    hp, demy = results["hyperparameters"], results["demyagent_recipe"]
    table1 = results["table1_4b"]["rows"]  # its last column is the RL steps
    rows = []
    for recipe, n_steps, recipe_hp in (("CLEANER-4B", table1["CLEANER-4B"][-1], hp),
                                       ("DAPO-baseline-4B", table1["DAPO-baseline-4B"][-1], hp),
                                       ("DemyAgent-4B", demy["reported_rl_steps"], demy)):
        prompts, group = recipe_hp["train_batch_size"], recipe_hp["group_size"]
        values = (n_steps, prompts, group, n_steps * prompts, n_steps * prompts * group)
        rows.append((Cell(recipe), *(Cell(f"{v:,}", reported=True) for v in values), Cell(""), Cell("paper")))
    for g in groups(r for r in records if r.metrics):
        algo = g[0].config["algo"]
        sampled = ([sum(m["generated_tokens"] for m in r.metrics) for r in g]
                   if all("generated_tokens" in m for r in g for m in r.metrics) else None)
        rows.append((Cell(label(g[0])), number([len(r.metrics) for r in g], 0), Cell(str(algo["prompts_per_step"])),
                     Cell(str(algo["group_size"])), number([sum(m["problems"] for m in r.metrics) for r in g], 0),
                     number([sum(m["trajectories"] for m in r.metrics) for r in g], 0),
                     number(sampled, 0) if sampled else Cell(""), source(g)))
    return Table("budget", "Step budget: RL steps, prompts and sampled tokens",
                 ("recipe", "RL steps", "prompts / step", "group size", "prompts seen", "trajectories",
                  "sampled tokens", "source"), tuple(rows),
                 (f"{REPORTED} reported by the paper (steps, batch and group sizes; prompts seen and trajectories are "
                  "their products). DemyAgent's 750 steps are as the CLEANER paper states them.",
                  "Measured: summed over the run's steps (mean ± stderr over seeds); sampled tokens count every "
                  "token the policy generated, SAAR retries included."))


HELD_OUT = ("eval_split", "eval_problems", "eval_samples", "temperature", "eval_top_p", "max_turns",
            "max_response_tokens", "max_eval_prompt_tokens", "max_tool_response_chars")  # algo keys evaluate() reads


def held_out_set(config: dict[str, Any]) -> str:
    """What a lab held-out Pass@1 is measured on: the initial checkpoint, the problems (seed, split, count), the
    sampling and the tool's limits; not how the policy was trained."""
    algo = config["algo"]
    return json.dumps([config["model"].get("path"), config["seed"], config.get("sandbox"),
                       *(algo.get(k) for k in HELD_OUT)], sort_keys=True)


def starts(records: list[Record]) -> dict[str, Record]:
    """Evaluation-only lab records (`harness.eval algo.steps=0`: an initial checkpoint, SAAR off at test time) by
    `held_out_set`: step 0 of every run trained from that checkpoint on the same held-out problems."""
    return {held_out_set(r.config): r for r in records if r.steps == 0 and eval_side(r, "lab", "off") is not None}


def held_out_points(group: list[Record], start: dict[str, Record]) -> list[tuple[int, list[float]]]:
    """(step, each seed's held-out Pass@1) at every step all the group's seeds were evaluated: step 0 (the initial
    checkpoint, from `start`), every `eval_every` steps, and the last step (the final evaluation)."""
    by_step: dict[int, list[float]] = {}
    for r in group:
        if held_out_set(r.config) in start:
            by_step.setdefault(0, []).append(eval_side(start[held_out_set(r.config)], "lab", "off")["accuracy"])
        for row in r.metrics:
            if "eval" in row:
                by_step.setdefault(row["step"], []).append(row["eval"]["accuracy"])
        by_step.setdefault(r.steps, []).append(r.summary["eval"]["accuracy"])
    return [(step, v) for step, v in sorted(by_step.items()) if len(v) == len(group)]


def held_out_curve(group: list[Record], start: dict[str, Record]) -> list[tuple[int, float]]:
    """`held_out_points` averaged over the seeds."""
    return [(step, sum(v) / len(v)) for step, v in held_out_points(group, start)]


def interval_cell(d: dict[str, float], scale: float = 1.0, digits: int = 1) -> Cell:
    return Cell(f"{scale * d['mean']:+.{digits}f} [{scale * d['low']:+.{digits}f}, {scale * d['high']:+.{digits}f}]")


def p_value(d: dict[str, float]) -> str:
    """A p-value to two significant digits (0.004, 0.09), or < 0.001."""
    return "< 0.001" if d["p_value"] < 0.001 else f"{d['p_value']:.2g}"


def paired_with_baselines(records: list[Record]) -> Iterator[tuple[list[Record], list[Record],
                                                                   list[tuple[Record, Record]]]]:
    """(CLEANER group, baseline group, their (CLEANER, baseline) records paired by seed) for every finished CLEANER
    group and every finished baseline that differs from it only in SAAR and the learning rate (each method's own,
    when tuned), where at least two seeds pair."""
    pooled: dict[str, list[list[Record]]] = {}
    for g in groups(records):
        if g[0].steps and all("eval" in r.summary for r in g):
            rest = json.loads(group_key(g[0].config))
            rest.pop("saar", None)
            rest.get("algo", {}).pop("lr", None)  # each method may have its own tuned learning rate
            pooled.setdefault(json.dumps(rest, sort_keys=True), []).append(g)
    for family in pooled.values():
        bases = [g for g in family if not g[0].saar]
        for g, base in ((g, base) for g in family if g[0].saar for base in bases):
            base_by_seed = {r.config["seed"]: r for r in base}
            pairs = [(r, base_by_seed[r.config["seed"]]) for r in g if r.config["seed"] in base_by_seed]
            if len(pairs) >= 2:
                yield g, base, pairs


def comparison(records: list[Record]) -> Table | None:
    """Each CLEANER group against each baseline that differs from it only in SAAR and the learning rate (each
    method's own, when tuned), paired by seed (at least two common seeds): the seed-mean held-out Pass@1 of the
    start (when evaluated), the baseline and CLEANER; the differences of held-out Pass@1 and of tool failures per
    trajectory with Student's t interval and the paired t-test's p-value (no bootstrap: with a handful of seeds its
    percentile interval is far too narrow); and the steps each method took to reach the baseline's final held-out
    Pass@1 (on the seed-mean curve of evaluations every `eval_every` steps, from the start)."""
    start = starts(records)
    rows = []
    for g, base, pairs in paired_with_baselines(records):

        def side(key: str, i: int) -> list[float]:
            return [pair[i].summary["eval"][key] for pair in pairs]
        acc = paired_difference(side("accuracy", 0), side("accuracy", 1))
        fails = paired_difference(side("final_failures_per_traj", 0), side("final_failures_per_traj", 1))
        target = sum(side("accuracy", 1)) / len(pairs)
        held_out = [held_out_curve([pair[i] for pair in pairs], start) for i in (0, 1)]
        reach = [first_step_reaching(curve, target) for curve in held_out]
        at_0 = dict(held_out[1]).get(0)  # the same checkpoint and problems for both methods, seed by seed
        means = ("-" if at_0 is None else f"{100 * at_0:.1f}", f"{100 * target:.1f}",
                 f"{100 * sum(side('accuracy', 0)) / len(pairs):.1f}")
        lr = (g[0].config["algo"].get("lr"), base[0].config["algo"].get("lr"))
        name = label(g[0]) + (f", lr {lr[0]:g} vs the baseline's {lr[1]:g}" if lr[0] != lr[1] else "")
        cited = [r for pair in pairs for r in (*pair, start.get(held_out_set(pair[1].config))) if r is not None]
        rows.append((Cell(name), Cell(str(len(pairs))), Cell(" / ".join(means)), interval_cell(acc, 100),
                     Cell(p_value(acc)), interval_cell(fails, digits=3), Cell(p_value(fails)),
                     Cell(" / ".join("-" if n is None else str(n) for n in reach)),
                     Cell(" ".join(r.name for r in cited))))
    if not rows:
        return None
    return Table("comparison", "CLEANER against the baseline, paired by seed (held-out, SAAR off at test time)",
                 ("CLEANER", "seeds", "Pass@1 (%): start / baseline / CLEANER", "Δ Pass@1 (points) [95% t]", "p-value",
                  "Δ tool failures / traj [95% t]", "p-value",
                  "steps to the baseline's final Pass@1 (CLEANER / baseline)", "source"), tuple(rows),
                 ("Start: the initial (SFT) checkpoint on each seed's held-out problems (an evaluation-only record, "
                  "algo.steps=0); - without one. Pass@1 values are means over the paired seeds.",
                  "Δ = CLEANER - baseline per seed, then the mean, with Student's t interval; p-value: two-sided "
                  "paired t-test.",
                  "Steps: the first evaluated step (0: the start) at which the seed-mean held-out Pass@1 reaches "
                  "the baseline's final one; - when it never does."))


def posthoc(records: list[Record], results: dict[str, Any]) -> Table | None:
    """SAAR switched on mid-training (`saar.from_step`), the paper's post-hoc experiment, beside its figures: each
    such group against its baseline paired by seed (`paired_with_baselines`), with the baseline's first-attempt
    tool failures per trajectory at the last step before the switch (the paper's baseline had 0.6 at step 200) and
    the difference of held-out Pass@1 at the end, with Student's t interval."""
    rows = []
    for g, base, pairs in paired_with_baselines(records):
        switch = g[0].config["saar"].get("from_step", 0)
        if not switch:
            continue
        before = [m["first_attempt_failures_per_traj"] for _, b in pairs for m in b.metrics if m["step"] == switch]
        acc = paired_difference(*([pair[i].summary["eval"]["accuracy"] for pair in pairs] for i in (0, 1)))
        rows.append((Cell(label(g[0])), Cell(str(switch + 1)), Cell(str(len(pairs))),
                     Cell(f"{statistics.fmean(before):.3f}" if len(before) == len(pairs) else "-"),
                     interval_cell(acc, 100), Cell(p_value(acc)), Cell(" ".join(r.name for p in pairs for r in p))))
    if not rows:
        return None
    found = results["other_findings"]
    paper_gain = f"+{found['posthoc_gain_aime24']} (AIME24) / +{found['posthoc_gain_aime25']} (AIME25)"
    rows.insert(0, (Cell("Qwen3-4B DAPO baseline, then CLEANER"), paper(found["posthoc_saar_from_baseline_step"] + 1),
                    Cell(""), paper(found["baseline_tool_failures_per_traj_at_step_200"]), Cell(paper_gain, True),
                    Cell(""), Cell("paper")))
    return Table("posthoc", "SAAR switched on mid-training (the paper's post-hoc experiment)",
                 ("setting", "SAAR from step", "seeds", "baseline's failed calls / traj before the switch",
                  "Δ Pass@1 vs the baseline (points) [95% t]", "p-value", "source"), tuple(rows),
                 ("Measured rows: the run trains its first steps as the baseline (the same seed: the baseline's "
                  "steps exactly), then with SAAR; Δ = it - the baseline at the same final step, per seed, then the "
                  "mean with Student's t interval; held-out Pass@1, SAAR off at test time. The paper's row: its "
                  "text (gains on AIME, baseline at step 200), no interval given.",))


def contrasts(records: list[Record]) -> Table | None:
    """The 2x2 of {baseline, CLEANER} x {overlong penalty on, off}: for each CLEANER setting trained with the penalty
    on and off, beside baselines trained both ways and otherwise alike (learning rates aside), the four arms paired
    by the seeds they share (at least two): CLEANER - baseline under each penalty, the difference of those two (the
    interaction: how much of CLEANER's effect the penalty makes), and the penalty's effect within each method; on
    held-out Pass@1 and tool failures per trajectory, with Student's t interval and p-value."""
    arms: dict[str, dict[tuple[str, bool], list[Record]]] = {}
    for g in groups(records):
        if g[0].steps and all("eval" in r.summary for r in g):
            rest = json.loads(group_key(g[0].config))
            saar = json.dumps(rest.pop("saar", None), sort_keys=True)
            rest.get("algo", {}).pop("lr", None)
            rest.get("algo", {}).pop("overlong_penalty_factor", None)
            arms.setdefault(json.dumps(rest, sort_keys=True), {})[(saar if g[0].saar else "", penalty_off(g[0]))] = g
    rows = []
    for family in arms.values():
        if ("", False) not in family or ("", True) not in family:
            continue
        for saar in sorted({s for s, _ in family if s and (s, False) in family and (s, True) in family}):
            four = {(method, off): family[(saar if method else "", off)] for method in (0, 1) for off in (False, True)}
            seeds = sorted(set.intersection(*({r.config["seed"] for r in g} for g in four.values())))
            if len(seeds) < 2:
                continue
            by_seed = {k: {r.config["seed"]: r for r in g} for k, g in four.items()}

            def values(key: str, method: int, off: bool) -> list[float]:
                return [by_seed[(method, off)][seed].summary["eval"][key] for seed in seeds]

            def effect(key: str, off: bool) -> list[float]:
                return [c - b for c, b in zip(values(key, 1, off), values(key, 0, off))]

            name = label(four[(1, False)][0])
            cited = Cell(" ".join(by_seed[k][seed].name for seed in seeds for k in sorted(four)))
            for contrast, pair in (
                    (f"{name} - baseline, penalty on", lambda key: (values(key, 1, False), values(key, 0, False))),
                    (f"{name} - baseline, penalty off", lambda key: (values(key, 1, True), values(key, 0, True))),
                    ("the two differences: on - off (interaction)", lambda key: (effect(key, False),
                                                                                 effect(key, True))),
                    ("penalty on - off, baseline", lambda key: (values(key, 0, False), values(key, 0, True))),
                    ("penalty on - off, CLEANER", lambda key: (values(key, 1, False), values(key, 1, True)))):
                acc = paired_difference(*pair("accuracy"))
                fails = paired_difference(*pair("final_failures_per_traj"))
                rows.append((Cell(contrast), Cell(str(len(seeds))), interval_cell(acc, 100), Cell(p_value(acc)),
                             interval_cell(fails, digits=3), Cell(p_value(fails)), cited))
    if not rows:
        return None
    return Table("contrasts", "CLEANER and the overlong penalty: the 2x2, paired by seed (held-out, SAAR off at "
                 "test time)", ("contrast", "seeds", "Δ Pass@1 (points) [95% t]", "p-value",
                                "Δ tool failures / traj [95% t]", "p-value", "source"), tuple(rows),
                 ("Each contrast per seed over the seeds all four arms share, then the mean with Student's t "
                  "interval; p-value: two-sided paired t-test. Interaction: (CLEANER - baseline with the penalty) - "
                  "(CLEANER - baseline without it).",))


def failure_signal(records: list[Record]) -> Table | None:
    """Per trained group, how its updates treated trajectories whose first attempt at a call failed (before any
    splice): the covariance of a trajectory's advantage with that failure and the failed ones' mean advantage
    (`cleaner.metrics.advantage_failure_covariance`), each averaged over a run's steps (those with a failure, for
    the mean), then over seeds with Student's t interval (a single seed: no interval)."""
    rows = []
    for g in groups(r for r in records if r.metrics and all("adv_failure_cov" in m for m in r.metrics)):
        cov = [statistics.fmean(m["adv_failure_cov"] for m in r.metrics) for r in g]
        failed = [[m["adv_mean_failed"] for m in r.metrics if m["adv_mean_failed"] is not None] for r in g]
        mean_failed = [statistics.fmean(v) for v in failed if v]
        rows.append((Cell(label(g[0])), Cell(str(len(g))), seed_interval(cov, 4), seed_interval(mean_failed, 3),
                     Cell(" ".join(r.name for r in g))))
    if not rows:
        return None
    return Table("failure_signal", "The update's signal on trajectories that made an error, per arm",
                 ("method", "seeds", "cov(advantage, first-attempt failure) per step [95% t]",
                  "mean advantage of failed trajectories [95% t]", "source"), tuple(rows),
                 ("Per run, the mean over its steps (the failed ones' advantage: over steps with a failure), then "
                  "the mean over seeds with Student's t interval. The failure is the trajectory's first attempt, "
                  "before SAAR spliced it out: negative values mean the update pushed against trajectories that "
                  "made an error.",))


def seed_interval(values: list[float], digits: int) -> Cell:
    """A mean over seeds with its 95% Student's t interval (the value alone for one seed, "-" for none)."""
    if len(values) < 2:
        return Cell(f"{values[0]:+.{digits}f}" if values else "-")
    mean, stderr = mean_stderr(values)
    half = student_t_quantile(0.975, len(values) - 1) * stderr
    return Cell(f"{mean:+.{digits}f} [{mean - half:+.{digits}f}, {mean + half:+.{digits}f}]")


def latency(records: list[Record]) -> Table | None:
    """SAAR's cost at test time, from evaluations repeated `latency_repeats` (2 or more) times, SAAR off and on
    interleaved: one row per record and benchmark."""
    rows = []
    for r, ev in ((r, ev) for r in records for ev in evaluations(r)):
        for benchmark, m in ev["benchmarks"].items():
            lat = m["latency"] if "latency" in m else {"repeats": 1}
            if lat["repeats"] < 2:
                continue
            low, high = lat["overhead_mean_interval95"]
            extra = lat["extra_seconds"]
            rows.append((Cell(label(r) + saar_note(r, test_time_saar(r, ev), "on")), Cell(str(r.config["seed"])),
                         Cell(BENCHMARKS.get(benchmark, benchmark)),
                         Cell(str(lat["repeats"])), Cell(f"{100 * m['latency_overhead']:+.1f}%"),
                         Cell(f"[{100 * low:+.1f}%, {100 * high:+.1f}%]"),
                         Cell(f"{extra['mean']:+.1f} [{extra['low']:+.1f}, {extra['high']:+.1f}]"),
                         Cell(f"{lat['seconds_per_problem_off']:.3f} / {lat['seconds_per_problem_on']:.3f}"),
                         Cell(f"{lat['extra_tokens']:+d}"), Cell(r.name)))
    if not rows:
        return None
    return Table("latency", "SAAR's latency at test time: off and on interleaved over repeated evaluations",
                 ("model", "seed", "benchmark", "repeats", "overhead (median)", "mean overhead [95% t]",
                  "extra seconds [95% t]", "s / problem (off / on)", "extra tokens", "source"), tuple(rows),
                 ("Each repeat evaluates the same checkpoint, problems and seeds with SAAR off, then on; overhead = "
                  "on / off - 1 per repeat. The tokens are the same in every repeat; extra tokens = SAAR on - off, "
                  "retries included.",))


def tuning(trials: list[Record], records_dir: str) -> Table | None:
    """The learning-rate searches (`sweeps/tune_lr.yaml`, one Optuna study per method): every trial's lr, its order
    of start and validation Pass@1, by lr within each method, the best marked (Optuna's choice: the first trial with
    the highest value; "at the edge" when its lr is the lowest or highest tried), and each trial's difference to the
    best with a 95% interval (normal, from the two stderrs over problems), "within noise" when it holds 0."""
    def started(r: Record) -> str:
        env = r.path / "env.json"
        return _read(env, json.loads)["invocations"][0]["started"] if env.exists() else ""

    studies: dict[str, list[Record]] = {}
    for r in trials:  # a study: its trials differ only in lr
        part = json.loads(group_key(r.config))
        part.get("algo", {}).pop("lr", None)
        studies.setdefault(json.dumps(part, sort_keys=True), []).append(r)
    rows = []
    for g in sorted(studies.values(), key=lambda g: (g[0].saar, label(g[0]))):
        g = sorted(g, key=started)
        order = {r.name: i for i, r in enumerate(g)}
        best = max(g, key=lambda r: r.summary["eval"]["accuracy"])  # max keeps the first of equal values
        lrs = [r.config["algo"]["lr"] for r in g]
        edge = at_the_edge({"lr": best.config["algo"]["lr"]}, [{"lr": lr} for lr in lrs])
        b = best.summary["eval"]
        for r in sorted(g, key=lambda r: r.config["algo"]["lr"]):
            e = r.summary["eval"]
            delta, half = e["accuracy"] - b["accuracy"], 1.96 * math.hypot(e["accuracy_stderr"], b["accuracy_stderr"])
            versus = "" if r is best else (f"{100 * delta:+.1f} [{100 * (delta - half):+.1f}, "
                                           f"{100 * (delta + half):+.1f}]" + (" within noise" if delta + half >= 0
                                                                               else ""))
            mark = ("chosen" + (f", at the edge ({edge['lr']} lr tried)" if edge else "")) if r is best else ""
            rows.append((Cell(label(r)), Cell(str(order[r.name])), Cell(f"{r.config['algo']['lr']:.3g}"),
                         Cell(str(r.steps)), Cell(f"{100 * e['accuracy']:.1f} ± {100 * e['accuracy_stderr']:.1f}"),
                         Cell(str(e["problems"])), Cell(versus), Cell(mark), Cell(r.name)))
    if not rows:
        return None
    return Table("tuning", "Learning-rate search per method, on the validation split", ("method", "trial", "lr",
                 "RL steps", "val Pass@1 (%)", "val problems", "Δ to the chosen (points) [95%]", "", "source"),
                 tuple(rows),
                 ("Optuna (TPE) over lr on a log scale, the same budget per method; Pass@1 on the lab's validation "
                  "split (never the test split), ± stderr over problems. Rows by lr; trial: the order of start.",
                  "Δ: the trial's Pass@1 minus the chosen one's, with a normal 95% interval from the two stderrs "
                  "(unpaired, though the problems are the same: wider than a paired one); within noise: the "
                  "interval holds 0."), records_dir)


def start(measured: dict[str, Any], records: list[Record], record_dir: str, name: str) -> Table | None:
    """The SFT start of the runs' task set, as `harness.lab_regime` measured it (`--start`): Pass@1, failed calls
    per trajectory, the failed calls followed by a successful one within K (with SAAR on: the rollbacks that
    recovered), response lengths and the budget; only when some run trained on that task set."""
    task_set = measured["eval"]["task_set"]
    if not any(r.config.get("data", {}).get("task_set", "lab") == task_set for r in records):
        return None
    k = measured["limits"]["K"]
    rows = []
    for side, saar in (("saar_off", "off"), ("saar_on", "on")):
        m = measured[side]
        recovered, stderr = ((m[f"recovered_within_{k}_share"], m[f"recovered_within_{k}_share_stderr"])
                             if saar == "off" else (m["saar_recovered_share"], None))
        rows.append((Cell(saar), Cell(f"{100 * m['pass_at_1']:.1f} ± {100 * m['pass_at_1_stderr']:.1f}"),
                     Cell(f"{m['failed_calls_per_traj']:.3f} ± {m['failed_calls_per_traj_stderr']:.3f}"),
                     Cell(f"{100 * recovered:.1f}" + (f" ± {100 * stderr:.1f}" if stderr is not None else "")),
                     Cell(f"{m['response_tokens']['p50']} / {m['response_tokens']['p99']}"), Cell(str(m["problems"])),
                     Cell(name)))
    limits, sizing = measured["limits"], measured["limits"]["sizing_percentiles"]
    return Table("start", f"The SFT start of the task set {task_set!r} ({measured['sft']['hash']}), on held-out "
                 "test problems", ("SAAR at test time", "Pass@1 (%)", "failed calls / traj",
                                   f"recovered within {k} (%)", "response tokens p50 / p99", "problems", "source"),
                 tuple(rows),
                 (f"One sample per problem at temperature {measured['eval']['temperature']}, ± stderr over problems "
                  "(recovered: binomial, over failed calls). Recovered, SAAR off: failed calls followed by a "
                  f"successful call within the next {k}; SAAR on: the rollbacks that recovered.",
                  f"Budget {limits['max_response_tokens']} response tokens, the last "
                  f"{limits['overlong_buffer_tokens']} the overlong buffer (from {limits['buffer_starts_at']}); with "
                  f"{limits['sizing_budget']} tokens no response is cut and they run p50 {sizing['p50']}, "
                  f"p99 {sizing['p99']}, max {sizing['max']}."), record_dir)


def build_tables(records: list[Record], results: dict[str, Any]) -> list[Table]:
    tables = [table1(records, results), table2(records, results), table4(records, results), ablation(records),
              budget(records, results), comparison(records), contrasts(records), posthoc(records, results),
              failure_signal(records), latency(records)]
    return [t for t in tables if t is not None]


# -- renderers ----------------------------------------------------------------------------------------------------

def _source_md(cell: Cell, folder: str) -> str:
    return (" ".join(f"[`{n}`]({folder}/{n}{'' if n.endswith('.json') else '/'})" for n in cell.text.split())
            if cell.text != "paper" else "paper")


def to_markdown(t: Table) -> str:
    lines = [f"### {t.title}", "", "| " + " | ".join(t.columns) + " |", "|" + "---|" * len(t.columns)]
    for row in t.rows:
        lines.append("| " + " | ".join([*(c.shown() for c in row[:-1]), _source_md(row[-1], t.records_dir)]) + " |")
    return "\n".join([*lines, "", *t.notes, ""])


def to_csv(t: Table) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(t.columns)
    writer.writerows([c.shown() for c in row] for row in t.rows)
    return buf.getvalue()


_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "_": r"\_", "#": r"\#", "$": r"\$", "{": r"\{",
          "}": r"\}", "±": r"$\pm$", "γ": r"$\gamma$", REPORTED: r"$^\dagger$"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX.get(ch, ch) for ch in text)


def to_latex(t: Table) -> str:
    lines = [r"\begin{table}[t]", r"\centering", r"\small", rf"\caption{{{latex_escape(t.title)}}}",
             rf"\begin{{tabular}}{{l{'r' * (len(t.columns) - 2)}l}}", r"\toprule",
             " & ".join(latex_escape(c) for c in t.columns) + r" \\", r"\midrule"]
    lines += [" & ".join(latex_escape(c.shown()) for c in row) + r" \\" for row in t.rows]
    lines += [r"\bottomrule", r"\end{tabular}", *(f"% {n}" for n in t.notes), r"\end{table}", ""]
    return "\n".join(lines)


def to_html_table(t: Table) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in t.columns)
    body = []
    for row in t.rows:
        cells = [f'<td class="reported">{html.escape(c.shown())}</td>' if c.reported else f"<td>{html.escape(c.text)}</td>"
                 for c in row[:-1]]
        src = row[-1].text
        cells.append("<td>paper</td>" if src == "paper" else
                     "<td>" + " ".join(f'<a href="{t.records_dir}/{n}/">{n}</a>' for n in src.split()) + "</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    notes = "".join(f"<p class=\"note\">{html.escape(n)}</p>" for n in t.notes)
    return (f'<section class="table" id="{t.name}"><h2>{html.escape(t.title)}</h2><table><thead><tr>{head}</tr>'
            f"</thead><tbody>{''.join(body)}</tbody></table>{notes}</section>")


# -- figure -------------------------------------------------------------------------------------------------------

def series(group: list[Record], start: dict[str, Record]) -> tuple[list[tuple[int, float, float]], ...]:
    """The figure's panels for one group of seeds, as (step, mean over seeds, stderr) points: held-out Pass@1
    (`held_out_points`: from the start, at every evaluation; none before the runs finish), training accuracy, tool
    failures per trajectory (the policy's first attempts) and the covariance of advantage and first-attempt
    failure (`failure_signal`) at every step all seeds reached."""
    finished = all("eval" in r.summary for r in group)
    held_out = [(step, *mean_stderr(v)) for step, v in held_out_points(group, start)] if finished else []
    steps = min(len(r.metrics) for r in group)
    per_step = [[(group[0].metrics[i]["step"], *mean_stderr([r.metrics[i][key] for r in group])) for i in range(steps)
                 if all(key in r.metrics[i] for r in group)]  # older records have no adv_failure_cov
                for key in ("accuracy", "first_attempt_failures_per_traj", "adv_failure_cov")]
    return (held_out, *per_step)


def curves(records: list[Record], path: Path) -> bool:
    """One line per method (the mean over seeds, shaded ± stderr) against RL step: held-out Pass@1 (from the start,
    at every evaluation), training accuracy, tool failures per trajectory (the policy's first attempts) and, where
    the records have it, the covariance of advantage and first-attempt failure at every step. False when no record
    has steps to plot."""
    trained = groups(r for r in records if r.metrics)
    if not trained:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    start = starts(records)
    panels = 4 if any("adv_failure_cov" in m for r in records for m in r.metrics) else 3
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 3.6))
    for g in trained:
        color = None
        for ax, points in zip(axes, series(g, start)):
            if not points:
                continue
            x, mean, se = zip(*points)
            line, = ax.plot(x, mean, marker="o" if ax is axes[0] else None, markersize=3, color=color,
                            label=f"{label(g[0])} ({len(g)} seed{'s' * (len(g) > 1)})")
            color = line.get_color()
            ax.fill_between(x, [m - e for m, e in zip(mean, se)], [m + e for m, e in zip(mean, se)], color=color,
                            alpha=0.2)
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].set(xlabel="RL step", ylabel="held-out Pass@1", title="Held-out Pass@1 (SAAR off)")
    axes[1].set(xlabel="RL step", ylabel="training accuracy", title="Training accuracy")
    axes[2].set(xlabel="RL step", ylabel="failed tool calls / trajectory", title="Tool failures (first attempts)")
    if panels == 4:
        axes[3].set(xlabel="RL step", ylabel="cov(advantage, failure)", title="Advantage vs first-attempt failure")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


# -- sample trajectories ------------------------------------------------------------------------------------------

def purified_samples(records: list[Record], limit: int = 4) -> list[tuple[str, Trajectory, Trajectory]]:
    """(run, original, purified) for logged trajectories with a failed call (`samples.jsonl`, from harness.eval
    with SAAR off), purified offline with the run's gamma and K and p = 1, so each sample shows its purification.
    Only those where a failure was recovered (a retry that ran replaced it) are kept."""
    out = []
    for r in records:
        if not (r.path / "samples.jsonl").exists():
            continue
        s = r.config["saar"]
        cfg = SaarConfig(enabled=True, gamma=s["gamma"], max_retries=s["max_retries"], rollback_probability=1.0,
                         similarity=s["similarity"])
        for traj in read_jsonl(r.path / "samples.jsonl"):
            clean = purify(traj, cfg, r.config["seed"])
            if clean.stats["rollbacks_recovered"] > 0 and len(out) < limit:
                out.append((r.name, traj, clean))
    return out


def _turns_html(traj: Trajectory) -> str:
    parts = []
    for turn in traj.turns:
        failed = turn.result is not None and turn.result.status != "ok"
        spans = "".join(f'<span class="{"splice" if s.provenance.value.startswith("spliced") else s.provenance.value}"'
                        f">{html.escape(s.text)}</span>" for s in turn.spans)
        parts.append(f'<div class="turn{" failed" if failed else ""}">{spans}</div>')
    return "".join(parts)


def samples_html(samples: list[tuple[str, Trajectory, Trajectory]]) -> str:
    if not samples:
        return ""
    body = []
    for run, original, clean in samples:
        body.append(f'<div class="sample"><h3>{html.escape(original.id)} (run <a href="runs/{run}/">{run}</a>, '
                    f'{len(original.ids) - len(clean.ids)} tokens removed)</h3><div class="pair">'
                    f'<div><h4>original</h4>{_turns_html(original)}</div>'
                    f'<div><h4>purified</h4>{_turns_html(clean)}</div></div></div>')
    return ('<section id="samples"><h2>Sample trajectories: original and purified</h2><p class="note">Red: a turn '
            'whose tool call failed. Green: tokens spliced in from the successful retry (shallow: the call only; '
            'deep: the whole turn). Grey: tool output.</p>' + "".join(body) + "</section>")


STYLE = """
body { font-family: sans-serif; margin: 2em; max-width: 1400px; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: right; }
td:first-child, th:first-child, td:last-child, th:last-child { text-align: left; }
td.reported { color: #555; font-style: italic; }
.note { font-size: 0.8em; color: #444; }
.pair { display: grid; grid-template-columns: 1fr 1fr; gap: 1em; }
.turn { white-space: pre-wrap; font-family: monospace; font-size: 0.8em; border-left: 3px solid #ccc;
        padding-left: 0.5em; margin: 0.4em 0; overflow-wrap: anywhere; }
.turn.failed { border-left-color: #c62828; background: #fdecea; }
.observation { color: #666; }
.splice { background: #c8e6c9; outline: 1px solid #2e7d32; }
img { max-width: 100%; }
"""


def page(tables: list[Table], figure: bool, samples: list[tuple[str, Trajectory, Trajectory]]) -> str:
    fig = ('<section id="curves"><h2>Learning curves</h2><img src="curves.png" alt="held-out Pass@1, training '
           'accuracy and tool failures per trajectory against RL step"></section>' if figure else "")
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>CLEANER harness report"
            f"</title><style>{STYLE}</style></head><body><h1>CLEANER harness report</h1>"
            + "".join(to_html_table(t) for t in tables) + fig + samples_html(samples) + "</body></html>\n")


# -- the command --------------------------------------------------------------------------------------------------

def write_report(runs_root: Path, paper_results: Path, out: Path, tuning_root: Path | None = None,
                 skip: Callable[[str], None] | None = None, start_record: Path | None = None) -> list[Table]:
    """The report of the records under `runs_root` (and of the learning-rate searches under `tuning_root` and the
    SFT start's measurement `start_record`, cited in place) into `out`; `skip` as for `load_records`."""
    records = load_records(runs_root, skip)
    results = _read(paper_results, yaml.safe_load)
    tables = build_tables(records, results)
    if tuning_root is not None and tuning_root.exists():
        searched = tuning(load_records(tuning_root, skip), os.path.relpath(tuning_root, out))
        tables += [searched] if searched else []
    if start_record is not None and start_record.exists():
        measured = start(_read(start_record, json.loads), records, os.path.relpath(start_record.parent, out),
                         start_record.name)
        tables += [measured] if measured else []
    out.mkdir(parents=True, exist_ok=True)
    # tables written only when they have rows: no stale copy
    for stale in ("comparison", "contrasts", "posthoc", "failure_signal", "latency", "tuning", "start"):
        for suffix in (".md", ".csv", ".tex"):
            (out / f"{stale}{suffix}").unlink(missing_ok=True)
    for t in tables:
        (out / f"{t.name}.md").write_text(to_markdown(t))
        (out / f"{t.name}.csv").write_text(to_csv(t))
        (out / f"{t.name}.tex").write_text(to_latex(t))
    (out / "tables.md").write_text("\n".join(to_markdown(t) for t in tables))
    figure = curves(records, out / "curves.png")
    (out / "index.html").write_text(page(tables, figure, purified_samples(records)))
    if runs_root.resolve() != (out / "runs").resolve():  # the cited records, without checkpoints
        shutil.rmtree(out / "runs", ignore_errors=True)
        for r in records:
            (out / "runs" / r.name).mkdir(parents=True)
            for f in (f for pattern in RECORD_FILES for f in sorted(r.path.glob(pattern))):
                shutil.copy2(f, out / "runs" / r.name / f.name)
    return tables


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=Path, default=LOCAL_RUNS, help=f"folder of run records (default: {LOCAL_RUNS})")
    parser.add_argument("--out", type=Path, default=LOCAL_OUT, help=f"output folder (default: {LOCAL_OUT}; the "
                        f"committed report is {COMMITTED}, written only when named)")
    parser.add_argument("--paper", type=Path, default=PAPER_RESULTS, help="the paper's figures (paper_results.yaml)")
    parser.add_argument("--tuning", type=Path, default=LOCAL_TUNING, help="learning-rate search records, cited in "
                                                                          "place (default: results/tuning, if any)")
    parser.add_argument("--start", type=Path, default=LOCAL_START, help="the SFT start's measurement "
                        "(harness.lab_regime), cited in place when runs trained on its task set (default: "
                        f"{LOCAL_START}, if any)")
    parser.add_argument("--strict", action="store_true", help="exit 2 unless every record reads back and was made "
                                                              "at a clean commit (the committed report is made so)")
    args = parser.parse_args(argv)
    if not args.runs.exists():
        print(f"error: no run records: {args.runs} does not exist. `make run` records some there; the committed "
              f"report is regenerated from its records with python -m harness.report --runs {COMMITTED / 'runs'} "
              f"--out {COMMITTED}", file=sys.stderr)
        return 2
    if not args.paper.exists():
        print(f"error: --paper file {args.paper} does not exist", file=sys.stderr)
        return 2
    skip = None if args.strict else (lambda line: print(f"warning: {line}", file=sys.stderr, flush=True))
    try:
        if args.strict:
            cited = [*load_records(args.runs), *(load_records(args.tuning) if args.tuning.exists() else [])]
            unclean = [f"{r.name} ({why})" for r in cited if (why := provenance(r))]
            if args.start.exists() and _read(args.start, json.loads)["git"]["dirty"]:
                unclean.append(f"{args.start} (made from a tree with uncommitted changes)")
            if unclean:
                raise ReportError("--strict: not made at a clean commit: " + ", ".join(unclean))
        tables = write_report(args.runs, args.paper, args.out, args.tuning, skip, args.start)
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {len(tables)} tables (md, csv, tex), index.html and the cited records to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
