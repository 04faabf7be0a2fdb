"""harness.report: tables from fixture run records (exact Markdown, CSV, LaTeX), the paper's cells against
paper_results.yaml, the figure, the cited records, and bad records."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cleaner import chat
from cleaner.purify import trajectory_from_messages
from cleaner.trajectory import write_jsonl
from harness import report

REPO = Path(__file__).resolve().parents[2]
PAPER = REPO / "harness" / "paper_results.yaml"  # the paper's reported figures, in the repository

# A small stand-in for paper_results.yaml with the keys the report reads, one row each where it can.
FIXTURE_PAPER = {
    "table1_4b": {"source": "Table 1", "columns": ["aime24", "aime25", "gpqa", "lcb_v6", "lcb_whole", "rl_steps"],
                  "rows": {"DAPO-baseline-4B": [66.7, 59.4, 56.9, 26.6, 49.5, 250],
                           "CLEANER-4B": [72.7, 67.1, 60.2, 26.8, 54.9, 250]}},
    "table2_ablation": {"source": "Table 2", "columns": ["aime24", "aime25", "gpqa", "lcb_v6"],
                        "qwen3_4b": {"plus_tools": [[66.7, 84.4], [59.4, 84.2], 56.9, 26.6]},
                        "qwen2_5_7b": {}},
    "table4_saar_at_test_time_4b": {"source": "Table 4", "columns": ["aime24", "aime25", "gpqa", "lcb_v6",
                                                                     "eval_minutes"],
                                    "rows": {"saar_on": [[72.7, 87.6], [67.1, 84.1], 60.2, 26.8, 115]},
                                    "stated_latency_overhead_percent": 8.8},
    "hyperparameters": {"train_batch_size": 128, "group_size": 16},
    "demyagent_recipe": {"reported_rl_steps": 750, "train_batch_size": 64, "group_size": 16},
}


def eval_metrics(accuracy: float, stderr: float, wall_s: float, pass_k: dict[str, float] | None = None,
                 failures: float = 0.25) -> dict:
    return {"accuracy": accuracy, "accuracy_stderr": stderr, "wall_s": wall_s,
            "pass_at_k": pass_k or {"1": accuracy}, "first_attempt_failures_per_traj": failures}


def write_record(root: Path, name: str, *, model: str = "lab", steps: int = 2, saar: bool = True, seed: int = 0,
                 gamma: float = 0.5, summary_eval: dict | None = None, evaluation: dict | None = None,
                 metrics: list[dict] | None = None) -> Path:
    run = root / name
    run.mkdir(parents=True)
    config = {"model": {"name": model}, "algo": {"name": "lab", "steps": steps, "prompts_per_step": 2,
                                                 "group_size": 4},
              "saar": {"enabled": saar, "gamma": gamma, "max_retries": 3, "rollback_probability": 1.0,
                       "similarity": "difflib_code"},
              "seed": seed, "runs_root": str(root)}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    (run / "summary.json").write_text(json.dumps({"steps": steps, **({"eval": summary_eval} if summary_eval else {})}))
    if evaluation is not None:
        (run / "eval.json").write_text(json.dumps({"benchmarks": evaluation}))
    if metrics is not None:
        (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    (run / "checkpoint").mkdir()  # never copied into the report
    return run


def step(i: int, accuracy: float, failures: float, generated: int) -> dict:
    return {"step": i, "accuracy": accuracy, "first_attempt_failures_per_traj": failures, "problems": 2,
            "trajectories": 8, "generated_tokens": generated}


@pytest.fixture
def runs(tmp_path, tok):
    """Two baseline seeds, one CLEANER seed (all lab, 2 steps), one evaluation-only SmolLM2 record whose
    samples.jsonl holds a trajectory with a failed call and its fix."""
    root = tmp_path / "runs"
    write_record(root, "base0", saar=False, seed=0, summary_eval=eval_metrics(0.9, 0.02, 10, failures=0.1),
                 metrics=[step(1, 0.5, 0.5, 1000), step(2, 0.75, 0.25, 900)])
    write_record(root, "base1", saar=False, seed=1, gamma=0.3, summary_eval=eval_metrics(0.7, 0.03, 10, failures=0.3),
                 metrics=[step(1, 0.25, 0.75, 1100), step(2, 0.5, 0.5, 1000)])
    write_record(root, "clean0", seed=0, summary_eval=eval_metrics(0.85, 0.025, 10),
                 evaluation={"lab": {"saar_off": eval_metrics(0.85, 0.025, 10.0),
                                     "saar_on": eval_metrics(0.9, 0.02, 12.5)}},
                 metrics=[step(1, 0.5, 0.5, 1200), step(2, 1.0, 0.0, 1100)])
    smol = write_record(root, "smol", model="smollm2_135m", steps=0,
                        evaluation={"math500": {"saar_off": eval_metrics(0.125, 0.125, 40.0, {"1": 0.125, "2": 0.25}),
                                                "saar_on": eval_metrics(0.25, 0.16, 44.0, {"1": 0.25, "2": 0.375})}})
    records = map(json.loads, (REPO / "cleaner" / "examples" / "tool_errors.jsonl").read_text().splitlines())
    trajs = [trajectory_from_messages(r, tok, chat.get_format("hermes")) for r in records]
    write_jsonl(smol / "samples.jsonl", [t for t in trajs if t.id == "nameerror-fixed"])
    (root / "unfinished").mkdir()
    (root / "unfinished" / "config.yaml").write_text("seed: 0\n")  # no summary.json: not in the report
    paper = tmp_path / "paper.yaml"
    paper.write_text(yaml.safe_dump(FIXTURE_PAPER, sort_keys=False))
    return root, paper


EXPECTED_TABLES = """\
### Table 1: Pass@1 (%) by method and benchmark, with RL steps

| method | AIME24 | AIME25 | GPQA | LCB v6 | MATH-500 | lab held-out | RL steps | source |
|---|---|---|---|---|---|---|---|---|
| DAPO-baseline-4B | 66.7† | 59.4† | 56.9† | 26.6† |  |  | 250† | paper |
| CLEANER-4B | 72.7† | 67.1† | 60.2† | 26.8† |  |  | 250† | paper |
| lab DAPO baseline |  |  |  |  |  | 80.0 ± 10.0 (2 seeds) | 2 | [`base0`](runs/base0/) [`base1`](runs/base1/) |
| lab CLEANER (γ 0.5, K 3, rollback prob. 1.0) |  |  |  |  |  | 85.0 ± 2.5 | 2 | [`clean0`](runs/clean0/) |
| smollm2_135m (no RL) |  |  |  |  | 12.5 ± 12.5 |  | 0 | [`smol`](runs/smol/) |

Measured: SAAR off at test time; ± is the stderr (over seeds when pooled, else over problems).
† reported by the paper (Table 1; Qwen3-4B setting; RL steps at batch 128).

### Table 2: tools and SAAR, P@1 / P@k (%)

| setting | AIME24 | AIME25 | GPQA | LCB v6 | MATH-500 | lab held-out | source |
|---|---|---|---|---|---|---|---|
| qwen3_4b plus_tools | 66.7 / 84.4† | 59.4 / 84.2† | 56.9† | 26.6† |  |  | paper |
| lab DAPO baseline |  |  |  |  |  | 80.0 | [`base0`](runs/base0/) [`base1`](runs/base1/) |
| lab CLEANER (γ 0.5, K 3, rollback prob. 1.0) |  |  |  |  |  | 85.0 | [`clean0`](runs/clean0/) |

P@k is the unbiased estimator 1 - C(n-c,k)/C(n,k) with k = the samples per problem; measured rows: SAAR off at \
test time, averaged over seeds.
† reported by the paper (Table 2; AIME cells P@1 / P@16, GPQA and LCB P@1).

### Table 4: SAAR at test time, Pass@1 (%) and evaluation time

| model, SAAR at test time | AIME24 | AIME25 | GPQA | LCB v6 | MATH-500 | lab held-out | eval time | latency overhead \
| source |
|---|---|---|---|---|---|---|---|---|---|
| CLEANER-4B, SAAR on | 72.7 / 87.6† | 67.1 / 84.1† | 60.2† | 26.8† |  |  | 115 min† |  | paper |
| CLEANER-4B, stated overhead |  |  |  |  |  |  |  | +8.8%† | paper |
| lab CLEANER (γ 0.5, K 3, rollback prob. 1.0), SAAR on |  |  |  |  |  | 90.0 ± 2.0 | 12.5 s | +25.0% | [`clean0`](runs/clean0/) |
| lab CLEANER (γ 0.5, K 3, rollback prob. 1.0), SAAR off |  |  |  |  |  | 85.0 ± 2.5 | 10.0 s |  | [`clean0`](runs/clean0/) |
| smollm2_135m (no RL), SAAR on |  |  |  |  | 25.0 ± 16.0 |  | 44.0 s | +10.0% | [`smol`](runs/smol/) |
| smollm2_135m (no RL), SAAR off |  |  |  |  | 12.5 ± 12.5 |  | 40.0 s |  | [`smol`](runs/smol/) |

Measured: the same checkpoint and seeds with SAAR off and on; eval time is the rollout wall time summed over \
benchmarks, and overhead = on / off - 1, each the median over the repeats of an evaluation repeated off, on, off, \
on, ... (the latency table has their intervals), then the mean over seeds.
† reported by the paper (Table 4; AIME cells P@1 / P@16; the stated +8.8% does not follow from 115 / 106 min, \
which is +8.5%).

### SAAR's gamma, K and p: lab held-out Pass@1 (%) and tool failures per trajectory

| method | γ | K | rollback prob. | lab Pass@1 | tool failures / traj | seeds | source |
|---|---|---|---|---|---|---|---|
| lab DAPO baseline | off | off | off | 80.0 ± 10.0 (2 seeds) | 0.200 ± 0.100 | 2 | [`base0`](runs/base0/) \
[`base1`](runs/base1/) |
| lab CLEANER (γ 0.5, K 3, rollback prob. 1.0) | 0.5 | 3 | 1.0 | 85.0 ± 2.5 | 0.250 | 1 | [`clean0`](runs/clean0/) |

Held-out, SAAR off at test time; failures are the policy's own (first attempts). The paper reports no such grid: \
it fixes γ 0.5 and K 3, with p 1.0 (4B) and 0.7 (7B).

### Step budget: RL steps, prompts and sampled tokens

| recipe | RL steps | prompts / step | group size | prompts seen | trajectories | sampled tokens | source |
|---|---|---|---|---|---|---|---|
| CLEANER-4B | 250† | 128† | 16† | 32,000† | 512,000† |  | paper |
| DAPO-baseline-4B | 250† | 128† | 16† | 32,000† | 512,000† |  | paper |
| DemyAgent-4B | 750† | 64† | 16† | 48,000† | 768,000† |  | paper |
| lab DAPO baseline | 2 | 2 | 4 | 4 | 16 | 2000 ± 100 | [`base0`](runs/base0/) [`base1`](runs/base1/) |
| lab CLEANER (γ 0.5, K 3, rollback prob. 1.0) | 2 | 2 | 4 | 4 | 16 | 2300 | [`clean0`](runs/clean0/) |

† reported by the paper (steps, batch and group sizes; prompts seen and trajectories are their products). \
DemyAgent's 750 steps are as the CLEANER paper states them.
Measured: summed over the run's steps (mean ± stderr over seeds); sampled tokens count every token the policy \
generated, SAAR retries included.
"""


def test_the_tables_from_fixture_records_are_exactly_the_expected_markdown(runs, tmp_path):
    root, paper = runs
    out = tmp_path / "report"
    report.write_report(root, paper, out)
    assert (out / "tables.md").read_text() == EXPECTED_TABLES
    # one file per table and format; the CSV holds the same cells as the Markdown
    names = ("table1", "table2", "table4", "ablation", "budget")
    assert {p.name for p in out.iterdir() if p.suffix in (".md", ".csv", ".tex")} == {
        f"{n}.{ext}" for n in names for ext in ("md", "csv", "tex")} | {"tables.md"}
    rows = list(csv.reader(io.StringIO((out / "table1.csv").read_text())))
    assert rows[0][-1] == "source" and rows[3] == ["lab DAPO baseline", "", "", "", "", "", "80.0 ± 10.0 (2 seeds)",
                                                   "2", "base0 base1"]
    assert rows[1][1] == "66.7†"


def test_latex_escapes_and_marks_reported_cells(runs, tmp_path):
    root, paper = runs
    report.write_report(root, paper, tmp_path / "report")
    tex = (tmp_path / "report" / "table4.tex").read_text()
    assert r"\begin{tabular}{lrrrrrrrrl}" in tex and r"\toprule" in tex and r"\bottomrule" in tex
    assert r"CLEANER-4B, stated overhead &  &  &  &  &  &  &  & +8.8\%$^\dagger$ & paper \\" in tex
    assert r"lab CLEANER ($\gamma$ 0.5, K 3, rollback prob. 1.0), SAAR on &  &  &  &  &  & 90.0 $\pm$ 2.0 & 12.5 s & +25.0\% & clean0 \\" in tex
    assert report.latex_escape("a_b & 5% {x} #1 $") == r"a\_b \& 5\% \{x\} \#1 \$"


def test_every_cited_record_is_copied_without_its_checkpoint(runs, tmp_path):
    root, paper = runs
    out = tmp_path / "report"
    report.write_report(root, paper, out)
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["base0", "base1", "clean0", "smol"]
    assert sorted(p.name for p in (out / "runs" / "smol").iterdir()) == ["config.yaml", "eval.json", "samples.jsonl",
                                                                      "summary.json"]
    assert not (out / "runs" / "base0" / "checkpoint").exists()
    # rebuilding the report from its own copies gives the same tables
    again = tmp_path / "again"
    report.write_report(out / "runs", paper, again)
    assert (again / "tables.md").read_text() == EXPECTED_TABLES


def test_the_figure_plots_accuracy_and_failures_per_step(runs, tmp_path):
    root, paper = runs
    out = tmp_path / "report"
    report.write_report(root, paper, out)
    import matplotlib.image

    image = matplotlib.image.imread(out / "curves.png")
    assert image.shape[:2] == (432, 1800)  # 15 x 3.6 inches at 120 dpi
    assert image[..., :3].std() > 0.05  # lines, not a blank canvas


def test_reported_cells_match_paper_results_yaml():
    """Every reported cell of the real paper_results.yaml, read back from the tables (no records)."""
    results = yaml.safe_load(PAPER.read_text())
    t1, t2, t4, _, budget = report.build_tables([], results)
    for row, (method, values) in zip(t1.rows, results["table1_4b"]["rows"].items()):
        assert row[0].text == method and row[-1].text == "paper"
        expected = dict(zip(results["table1_4b"]["columns"], values))
        for key, cell in zip(("aime24", "aime25", "gpqa", "lcb_v6", "rl_steps"), row[1:-1]):
            assert cell.text == ("" if expected[key] is None else str(expected[key]))
            assert cell.reported == (expected[key] is not None)
    assert len(t1.rows) == 15 and t1.rows[-1][1].shown() == "72.7†"
    ablation = [(f"{m} {s}", v) for m in ("qwen3_4b", "qwen2_5_7b") for s, v in results["table2_ablation"][m].items()]
    for row, (setting, values) in zip(t2.rows, ablation, strict=True):
        aime24 = values[0]
        assert row[0].text == setting and row[1].text == f"{aime24[0]} / {aime24[1]}" and row[3].text == str(values[2])
    on, off, stated = t4.rows
    assert on[5].text == "115 min" and off[5].text == "106 min" and stated[6].text == "+8.8%"
    assert on[1].text == "72.7 / 87.6" and off[2].text == "64.6 / 84.3"
    demy = budget.rows[2]
    assert [c.text for c in demy[:6]] == ["DemyAgent-4B", "750", "64", "16", "48,000", "768,000"]
    assert int(demy[4].text.replace(",", "")) == results["demyagent_recipe"]["prompts_seen_at_750_steps"]


def test_a_broken_record_is_named_and_left_out_or_refused_with_strict(runs, tmp_path):
    """A truncated metrics.jsonl (a run killed while its file was copied, a disk that filled up): the report names
    the file and leaves the record out; with --strict it refuses. Breakage checked: reading metrics.jsonl without the
    record check crashed with a JSONDecodeError naming no file."""
    root, paper = runs
    (root / "clean0" / "eval.json").write_text("{not json")
    with pytest.raises(report.ReportError, match=r"clean0/eval.json: not readable \(Expecting property name"):
        report.load_records(root)
    (root / "clean0" / "eval.json").write_text(json.dumps({"saar_off": {}, "saar_on": {}}))
    with pytest.raises(report.ReportError, match=r"clean0/eval.json: no 'benchmarks' key"):
        report.load_records(root)
    (root / "clean0" / "eval.json").unlink()
    metrics = root / "clean0" / "metrics.jsonl"
    metrics.write_text(metrics.read_text()[:-40])  # the last line cut in the middle
    command = [sys.executable, "-m", "harness.report", "--runs", str(root), "--paper", str(paper), "--out",
               str(tmp_path / "out")]
    lenient = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert lenient.returncode == 0, lenient.stderr
    assert lenient.stderr.strip() == f"warning: left out clean0: {metrics}: line 2 is not JSON"
    assert "clean0" not in (tmp_path / "out" / "tables.md").read_text()
    strict = subprocess.run([*command, "--strict"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert strict.returncode == 2 and strict.stderr.strip() == f"error: {metrics}: line 2 is not JSON"
    missing = subprocess.run([sys.executable, "-m", "harness.report", "--runs", str(tmp_path / "nowhere")], cwd=REPO,
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and missing.stderr.startswith(f"error: no run records: {tmp_path / 'nowhere'} "
                                                                 "does not exist")


CHROMIUM = Path("/usr/bin/chromium")  # Debian's package; .ci/run installs it


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (apt-get install chromium)")
def test_the_html_report_loads_in_headless_chromium_with_tables_and_a_highlighted_splice(runs, tmp_path):
    from playwright.sync_api import sync_playwright

    root, paper = runs
    out = tmp_path / "report"
    report.write_report(root, paper, out)
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1300, "height": 900})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("requestfailed", lambda r: errors.append(f"failed to load {r.url}"))
        page.goto((out / "index.html").as_uri(), wait_until="load")
        assert page.locator("section.table table").count() == 5
        assert page.locator("td.reported").first.inner_text() == "66.7†"
        assert page.locator("img[src='curves.png']").evaluate("img => img.naturalWidth") == 1800
        # the sample: its failed turn on the left, the spliced fix highlighted on the right
        sample = page.locator("#samples .sample").first
        assert sample.locator(".turn.failed").count() == 1
        splice = sample.locator(".splice").first
        splice.scroll_into_view_if_needed()
        assert splice.is_visible() and "print(total)" in splice.inner_text() and "print(totl)" not in splice.inner_text()
        assert splice.evaluate("e => getComputedStyle(e).backgroundColor") == "rgb(200, 230, 201)"
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        browser.close()
    assert errors == []
    import matplotlib.image

    shot = matplotlib.image.imread(tmp_path / "report.png")
    assert shot.shape[1] == 1300 and shot.shape[0] > 900  # the whole page, taller than one screen


def test_on_a_fresh_clone_a_bare_report_points_at_both_ways_and_the_committed_one_regenerates(tmp_path):
    """A fresh clone has no results/runs: a bare `python -m harness.report` says so in one line, naming `make run`
    and the command that regenerates the committed report, and writes nothing; that command writes the same tables,
    byte for byte, from the committed records alone (and the paper's figures in the repository, no ../shared).
    Breakage checked: the old default switched to results/report/runs and rewrote the committed report."""
    committed = REPO / "results" / "report"
    shutil.copytree(committed, tmp_path / "results" / "report")
    shutil.copytree(REPO / "results" / "tuning", tmp_path / "results" / "tuning")  # cited in place
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    bare = subprocess.run([sys.executable, "-m", "harness.report"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600, env=env)
    assert bare.returncode == 2 and bare.stderr.count("\n") == 1, bare.stderr
    assert "make run" in bare.stderr and "--runs results/report/runs --out results/report" in bare.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"] and not (tmp_path / "results" / "runs").exists()
    again = subprocess.run([sys.executable, "-m", "harness.report", "--runs", "results/report/runs", "--out",
                            "results/report", "--strict"], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                           env=env)
    assert again.returncode == 0, again.stderr
    tables = sorted(p.name for p in committed.iterdir() if p.suffix in (".md", ".csv", ".tex"))
    assert len(tables) == 25  # eight tables (comparison, latency, tuning included) in three formats, and tables.md
    for name in tables:
        assert (tmp_path / "results" / "report" / name).read_bytes() == (committed / name).read_bytes(), name


def test_p_values_keep_two_significant_digits():
    """p = 0.004 must not read 0.00. Breakage checked: the old format, two decimals."""
    assert [report.p_value({"p_value": p}) for p in (0.0041, 0.09, 0.1834, 0.0004)] == ["0.0041", "0.09", "0.18",
                                                                                          "< 0.001"]


def test_the_two_by_two_of_method_and_overlong_penalty_by_hand(tmp_path):
    """Baseline and CLEANER, each with the overlong penalty on and off, seeds 0-2 (CLEANER with it on also on seed
    3, unpaired; CLEANER at p = 0.7 with it on only: no 2x2). Held-out Pass@1, on: baseline .5 .6 .7, CLEANER .6 .6
    .8 (differences .1 0 .1: mean +6.7, stderr 3.33, t = 2 on 2 df, half-width 4.303 x 3.33 = 14.3, p = 0.18); off:
    baseline .55 .65 .75, CLEANER the same (0). The interaction is then the penalty-on difference; the penalty's
    effect is -5 on each baseline seed, and .05 -.05 .05 for CLEANER (mean +1.7, stderr 3.33, t = 0.5, p = 0.67).
    Failures: on, baseline .3 .2 .1 and CLEANER .2 .2 .1 (mean -0.033, t = -1, p = 0.42); off, both .3 .2 .1.
    Breakages checked: on and off swapped in the interaction, the seeds of any arm taken instead of those all four
    share (unpaired seed 3 kept)."""
    def summary(accuracy, failures):
        return {"accuracy": accuracy, "accuracy_stderr": 0.01, "final_failures_per_traj": failures}

    arms = {("base", False): ((0.5, 0.6, 0.7), (0.3, 0.2, 0.1)), ("clean", False): ((0.6, 0.6, 0.8), (0.2, 0.2, 0.1)),
            ("base", True): ((0.55, 0.65, 0.75), (0.3, 0.2, 0.1)), ("clean", True): ((0.55, 0.65, 0.75), (0.3, 0.2, 0.1))}
    for (method, off), (accuracies, failures) in arms.items():
        for seed, (accuracy, fails) in enumerate(zip(accuracies, failures)):
            name = f"{method}{'_off' if off else ''}{seed}"
            run = write_record(tmp_path, name, steps=20, saar=method == "clean", seed=seed,
                               summary_eval=summary(accuracy, fails))
            config = yaml.safe_load((run / "config.yaml").read_text())
            config["algo"]["overlong_penalty_factor"] = 0.0 if off else 1.0
            (run / "config.yaml").write_text(yaml.safe_dump(config))
    write_record(tmp_path, "clean3", steps=20, seed=3, summary_eval=summary(0.1, 0.9))
    for seed in range(2):
        run = write_record(tmp_path, f"p07_{seed}", steps=20, seed=seed, summary_eval=summary(0.5, 0.5))
        config = yaml.safe_load((run / "config.yaml").read_text())
        config["saar"]["rollback_probability"] = 0.7
        (run / "config.yaml").write_text(yaml.safe_dump(config))
    table = report.contrasts(report.load_records(tmp_path))
    cleaner = "lab CLEANER (γ 0.5, K 3, rollback prob. 1.0)"
    assert [[c.text for c in row[:-1]] for row in table.rows] == [
        [f"{cleaner} - baseline, penalty on", "3", "+6.7 [-7.7, +21.0]", "0.18", "-0.033 [-0.177, +0.110]", "0.42"],
        [f"{cleaner} - baseline, penalty off", "3", "+0.0 [+0.0, +0.0]", "1", "+0.000 [+0.000, +0.000]", "1"],
        ["the two differences: on - off (interaction)", "3", "+6.7 [-7.7, +21.0]", "0.18",
         "-0.033 [-0.177, +0.110]", "0.42"],
        ["penalty on - off, baseline", "3", "-5.0 [-5.0, -5.0]", "< 0.001", "+0.000 [+0.000, +0.000]", "1"],
        ["penalty on - off, CLEANER", "3", "+1.7 [-12.7, +16.0]", "0.67", "-0.033 [-0.177, +0.110]", "0.42"]]
    assert table.rows[0][-1].text.split() == ["base0", "base_off0", "clean0", "clean_off0", "base1", "base_off1",
                                              "clean1", "clean_off1", "base2", "base_off2", "clean2", "clean_off2"]
    labels = {report.label(r) for r in report.load_records(tmp_path)}
    assert {"lab DAPO baseline, no overlong penalty", f"{cleaner}, no overlong penalty"} <= labels


def test_saar_switched_on_mid_training_is_set_beside_the_papers_post_hoc_experiment(tmp_path):
    """A baseline (seeds 0, 1; first-attempt failures 0.6 and 0.4 at step 2) and runs with SAAR from step 3
    (from_step 2) on the same seeds: Pass@1 .5 .6 against .6 .8, differences .1 .2: mean +15.0, stderr 5.0,
    t = 3 on 1 df (half-width 12.706 x 5 = 63.5; p = 1 - 2 atan(3) / pi = 0.20); failures before the switch, mean
    0.500. CLEANER from step 1 (from_step 0) is not a post-hoc row. The paper's row first, from its figures.
    Breakages checked: the failures read at the first step with SAAR (step 3) instead of the last one without it;
    the from_step 0 group listed too."""
    def record(name, saar, seed, accuracy, failures_at_2=0.0, from_step=0):
        run = write_record(tmp_path, name, steps=4, saar=saar, seed=seed, summary_eval={"accuracy": accuracy},
                           metrics=[{"step": i, "first_attempt_failures_per_traj": failures_at_2 if i == 2 else 9.0}
                                    for i in range(1, 5)])
        config = yaml.safe_load((run / "config.yaml").read_text())
        config["saar"]["from_step"] = from_step
        (run / "config.yaml").write_text(yaml.safe_dump(config))

    for seed, (base, post, fails) in enumerate(((0.5, 0.6, 0.6), (0.6, 0.8, 0.4))):
        record(f"base{seed}", False, seed, base, fails)
        record(f"post{seed}", True, seed, post, from_step=2)
        record(f"clean{seed}", True, seed, 0.9)
    results = yaml.safe_load((REPO / "harness" / "paper_results.yaml").read_text())
    table = report.posthoc(report.load_records(tmp_path), results)
    assert [c.text for c in table.rows[0]] == ["Qwen3-4B DAPO baseline, then CLEANER", "201", "", "0.6",
                                               "+5.2 (AIME24) / +1.0 (AIME25)", "", "paper"]
    assert [c.text for c in table.rows[1]] == [
        "lab CLEANER (γ 0.5, K 3, rollback prob. 1.0, SAAR from step 3)", "3", "2", "0.500", "+15.0 [-48.5, +78.5]",
        "0.2", "post0 base0 post1 base1"]
    assert len(table.rows) == 2


def test_the_failure_signal_per_arm_by_hand(tmp_path):
    """Two seeds of CLEANER with the per-step covariance -0.1, -0.3 (mean -0.2) and 0, -0.2 (-0.1): mean -0.15,
    stderr 0.05, t_0.975 on 1 df 12.706, so [-0.7853, +0.4853]; the failed ones' mean advantage -0.5 on each seed
    (seed 0's second step had no failure: skipped, not counted as 0). One baseline seed: its value alone. A record
    without the metric (made before it existed) is left out. Breakage checked: the step with no failure counted as
    0 (seed 0's mean becomes -0.25)."""
    write_record(tmp_path, "c0", seed=0, summary_eval={"accuracy": 0.5}, metrics=[
        {"step": 1, "adv_failure_cov": -0.1, "adv_mean_failed": -0.5},
        {"step": 2, "adv_failure_cov": -0.3, "adv_mean_failed": None}])
    write_record(tmp_path, "c1", seed=1, summary_eval={"accuracy": 0.5}, metrics=[
        {"step": 1, "adv_failure_cov": 0.0, "adv_mean_failed": -0.7},
        {"step": 2, "adv_failure_cov": -0.2, "adv_mean_failed": -0.3}])
    write_record(tmp_path, "b0", saar=False, seed=0, summary_eval={"accuracy": 0.5}, metrics=[
        {"step": 1, "adv_failure_cov": -0.4, "adv_mean_failed": -1.0},
        {"step": 2, "adv_failure_cov": -0.4, "adv_mean_failed": -1.0}])
    write_record(tmp_path, "old", saar=False, gamma=0.3, seed=5, summary_eval={"accuracy": 0.5},
                 metrics=[{"step": 1}, {"step": 2}])
    table = report.failure_signal(report.load_records(tmp_path))
    assert [[c.text for c in row] for row in table.rows] == [
        ["lab DAPO baseline", "1", "-0.4000", "-1.000", "b0"],
        ["lab CLEANER (γ 0.5, K 3, rollback prob. 1.0)", "2", "-0.1500 [-0.7853, +0.4853]", "-0.500 [-0.500, -0.500]",
         "c0 c1"]]


def test_the_paired_comparison_by_hand(tmp_path):
    """Baseline and CLEANER on seeds 0-2 (CLEANER also on seed 3, which has no pair), 20 steps, evaluated at
    step 10 and at the end. Pass@1 differences 0.1, 0, 0.1: mean 0.0667, stderr 0.0333, t = 2.0 on 2 degrees of
    freedom (t_0.975 = 4.303, p = 0.18). Failure differences -0.1, 0, 0: mean -0.0333, t = -1.0 (p = 0.42). The
    SFT start, evaluated per seed on the same held-out problems (another problem count does not count), is 0.5,
    0.6, 0.7: mean 0.6. The baseline's final mean is 0.7; CLEANER's mean at step 10 is 0.733, the baseline's 0.6:
    steps 10 / 20; with a start of 0.8 on every seed both methods "reach" it at step 0. Each method has its own
    learning rate, as after tuning: they still pair. Breakage checked: a start matched without its seed (every
    seed then gets one start) gives 70.0, not 60.0."""
    def summary(accuracy, failures):
        return {"accuracy": accuracy, "accuracy_stderr": 0.01, "wall_s": 1.0, "pass_at_k": {"1": accuracy},
                "final_failures_per_traj": failures}

    def start(name, seed, accuracy, problems=None):
        off = summary(accuracy, 0.0)
        run = write_record(tmp_path, name, steps=0, saar=False, seed=seed,
                           evaluation={"lab": {"saar_off": off, "saar_on": off}})
        if problems:
            config = yaml.safe_load((run / "config.yaml").read_text())
            config["algo"]["eval_problems"] = problems
            (run / "config.yaml").write_text(yaml.safe_dump(config))

    rows = {("base", 0): (0.6, 0.3, 0.5), ("base", 1): (0.7, 0.2, 0.6), ("base", 2): (0.8, 0.1, 0.7),
            ("clean", 0): (0.7, 0.2, 0.7), ("clean", 1): (0.7, 0.2, 0.7), ("clean", 2): (0.9, 0.1, 0.8),
            ("clean", 3): (0.1, 0.9, 0.1)}
    for (method, seed), (accuracy, failures, at_10) in rows.items():
        write_record(tmp_path, f"{method}{seed}", steps=20, saar=method == "clean", seed=seed,
                     summary_eval=summary(accuracy, failures),
                     metrics=[{"step": 10, "eval": {"accuracy": at_10}}, {"step": 20}])
        config = tmp_path / f"{method}{seed}" / "config.yaml"  # each method with its own (tuned) learning rate
        values = yaml.safe_load(config.read_text())
        values["algo"]["lr"] = 5e-5 if method == "clean" else 1e-4
        config.write_text(yaml.safe_dump(values))
    for seed, accuracy in enumerate((0.5, 0.6, 0.7)):
        start(f"start{seed}", seed, accuracy)
    start("other0", 0, 1.0, problems=50)  # another held-out set: not seed 0's start
    records = report.load_records(tmp_path)
    table = report.comparison(records)
    assert table is not None and len(table.rows) == 1
    cells = [c.text for c in table.rows[0]]
    assert cells == ["lab CLEANER (γ 0.5, K 3, rollback prob. 1.0), lr 5e-05 vs the baseline's 0.0001", "3", "60.0 / 70.0 / 76.7",
                     "+6.7 [-7.7, +21.0]", "0.18", "-0.033 [-0.177, +0.110]", "0.42", "10 / 20",
                     "clean0 base0 start0 clean1 base1 start1 clean2 base2 start2"]
    assert report.comparison(report.load_records(tmp_path)) == table
    # the figure's held-out curve, seed by seed: from the start when every seed has one (not CLEANER's seed 3)
    by_name = {r.name: r for r in records}
    starts = report.starts(records)
    assert report.held_out_points([by_name[f"base{i}"] for i in range(3)], starts) == [
        (0, [0.5, 0.6, 0.7]), (10, [0.5, 0.6, 0.7]), (20, [0.6, 0.7, 0.8])]
    assert report.held_out_points([by_name[f"clean{i}"] for i in range(4)], starts) == [
        (10, [0.7, 0.7, 0.8, 0.1]), (20, [0.7, 0.7, 0.9, 0.1])]
    for seed in range(3):  # a start at or above the baseline's final Pass@1: both methods are there at step 0
        shutil.rmtree(tmp_path / f"start{seed}")
        start(f"start{seed}", seed, 0.8)
    cells = [c.text for c in report.comparison(report.load_records(tmp_path)).rows[0]]
    assert (cells[2], cells[7]) == ("80.0 / 70.0 / 76.7", "0 / 0")
    (tmp_path / "clean2").rename(tmp_path / "x")  # one pair left: no comparison
    for name in ("clean1", "x"):
        (tmp_path / name / "summary.json").unlink()
    assert report.comparison(report.load_records(tmp_path)) is None


def test_the_latency_table_by_hand(tmp_path):
    """A run evaluated 3 times, SAAR off and on interleaved (`harness.eval.compare` writes what harness.eval
    writes): off 10, 10, 10 s, on 11, 12, 13 s over 100 problems. Overheads 10, 20, 30%: median +20.0%; mean 20%,
    stderr 5.77%, t_0.975 on 2 df 4.303: [-4.8%, +44.8%]. Extra seconds 1, 2, 3: +2.0 [-0.5, +4.5]. Seconds per
    problem: the medians over 100 problems, 0.100 / 0.120. Extra tokens 1200 - 1000. A run evaluated once has no
    row; with no repeated evaluation there is no table."""
    from harness.eval import compare

    def side(wall, tokens):
        return {"accuracy": 0.5, "accuracy_stderr": 0.05, "wall_s": wall, "problems": 100,
                "generated_tokens": tokens, "retry_tokens": tokens - 1000, "pass_at_k": {"1": 0.5}}

    repeated = compare(side(10.0, 1000), side(11.0, 1200), {False: [10.0, 10.0, 10.0], True: [11.0, 12.0, 13.0]})
    write_record(tmp_path, "clean0", evaluation={"lab": repeated})
    write_record(tmp_path, "once", seed=1, evaluation={"lab": compare(side(10.0, 1000), side(11.0, 1200))})
    table = report.latency(report.load_records(tmp_path))
    assert [[c.text for c in row] for row in table.rows] == [[
        "lab CLEANER (γ 0.5, K 3, rollback prob. 1.0)", "0", "lab held-out", "3", "+20.0%", "[-4.8%, +44.8%]", "+2.0 [-0.5, +4.5]",
        "0.100 / 0.120", "+200", "clean0"]]
    shutil.rmtree(tmp_path / "clean0")
    assert report.latency(report.load_records(tmp_path)) is None


def test_strict_refuses_records_not_made_at_one_clean_commit(runs, tmp_path):
    """`--strict` (the committed report's mode) exits 2 naming each record without a clean provenance: no
    env.json, an invocation from a dirty tree, a run resumed at another commit, an evaluation from a dirty tree.
    With every record clean it writes the report."""
    root, paper = runs

    def env(name, *invocations):
        (root / name / "env.json").write_text(json.dumps({"git": {"commit": "a", "dirty": []}, "invocations": [
            {"commit": commit, "dirty": dirty} for commit, dirty in invocations]}))

    env("base0", ("a", False))
    env("base1", ("a", False), ("b", False))
    env("clean0", ("a", True))
    env("smol", ("a", False))
    evaluation = json.loads((root / "smol" / "eval.json").read_text())
    (root / "smol" / "eval.json").write_text(json.dumps({**evaluation, "git": {"commit": "a", "dirty": True}}))
    shutil.rmtree(root / "unfinished")

    def cli():
        return subprocess.run([sys.executable, "-m", "harness.report", "--runs", str(root), "--paper", str(paper),
                               "--out", str(tmp_path / "out"), "--strict"], cwd=REPO, capture_output=True, text=True,
                              timeout=300)

    proc = cli()
    assert proc.returncode == 2 and not (tmp_path / "out").exists()
    assert proc.stderr.strip() == ("error: --strict: not made at a clean commit: base1 (resumed at another commit), "
                                   "clean0 (made from a tree with uncommitted changes), smol (made from a tree with "
                                   "uncommitted changes)")
    env("base1", ("a", False))
    env("clean0", ("a", False))
    (root / "smol" / "eval.json").write_text(json.dumps({**evaluation, "git": {"commit": "a", "dirty": False}}))
    (root / "base0" / "env.json").unlink()
    assert cli().stderr.strip() == "error: --strict: not made at a clean commit: base0 (no env.json)"
    env("base0", ("a", False))
    assert cli().returncode == 0 and (tmp_path / "out" / "tables.md").exists()


def test_the_tuning_table_lists_trials_by_lr_marks_the_first_best_its_edge_and_what_is_within_noise(tmp_path):
    """Trials of two studies, started in the order 2, 0, 1 (baseline) and 0, 1, 2 (CLEANER): rows by lr, the start
    order in the trial column; the best of each marked, of two equal bests the one that started first (Optuna's
    choice), "at the edge" when its lr is the highest or lowest tried; each other trial's Δ to it with a 95%
    interval (stderr 2 points each: ±1.96·√2·2 = ±5.5 points), "within noise" when it holds 0. Breakage checked:
    the last of equal values marked, the edge judged against the space's bounds, within noise judged on Δ alone."""
    trials = {"b0": (False, 1e-4, 0.90, "08:10"), "b1": (False, 3e-5, 0.95, "08:20"), "b2": (False, 4e-4, 0.95, "08:00"),
              "c0": (True, 1e-4, 0.70, "08:00"), "c1": (True, 2e-5, 0.85, "08:30"), "c2": (True, 5e-6, 0.75, "08:40")}
    for name, (saar, lr, accuracy, started) in trials.items():
        run = write_record(tmp_path / "tuning", name, steps=20, saar=saar,
                           summary_eval={"accuracy": accuracy, "accuracy_stderr": 0.02, "problems": 100})
        config = yaml.safe_load((run / "config.yaml").read_text())
        config["algo"]["lr"] = lr
        (run / "config.yaml").write_text(yaml.safe_dump(config))
        (run / "env.json").write_text(json.dumps({"invocations": [{"started": f"2026-12-05T{started}:00+0000"}]}))
    table = report.tuning(report.load_records(tmp_path / "tuning"), "../tuning")
    base, cleaner = "lab DAPO baseline", "lab CLEANER (γ 0.5, K 3, rollback prob. 1.0)"
    assert [[c.text for c in row] for row in table.rows] == [
        [base, "2", "3e-05", "20", "95.0 ± 2.0", "100", "+0.0 [-5.5, +5.5] within noise", "", "b1"],
        [base, "1", "0.0001", "20", "90.0 ± 2.0", "100", "-5.0 [-10.5, +0.5] within noise", "", "b0"],
        [base, "0", "0.0004", "20", "95.0 ± 2.0", "100", "", "chosen, at the edge (highest lr tried)", "b2"],
        [cleaner, "2", "5e-06", "20", "75.0 ± 2.0", "100", "-10.0 [-15.5, -4.5]", "", "c2"],
        [cleaner, "1", "2e-05", "20", "85.0 ± 2.0", "100", "", "chosen", "c1"],
        [cleaner, "0", "0.0001", "20", "70.0 ± 2.0", "100", "-15.0 [-20.5, -9.5]", "", "c0"]]
    assert "[`b2`](../tuning/b2/)" in report.to_markdown(table)


def test_a_run_with_saar_from_step_is_labelled_with_the_step_saar_starts_at():
    """`saar.from_step=200` (0-based): SAAR from step 201 as the metrics count steps; a record made before the key
    existed, or with from_step 0, is labelled as before. Breakage caught: the suffix left out of `label`."""
    from types import SimpleNamespace

    saar = {"enabled": True, "gamma": 0.5, "max_retries": 3, "rollback_probability": 1.0}
    label = lambda s: report.label(SimpleNamespace(config={"model": {"name": "lab"}, "saar": s}, steps=300, saar=True))
    assert label({**saar, "from_step": 200}) == "lab CLEANER (γ 0.5, K 3, rollback prob. 1.0, SAAR from step 201)"
    assert label(saar) == label({**saar, "from_step": 0}) == "lab CLEANER (γ 0.5, K 3, rollback prob. 1.0)"


def test_a_run_on_another_task_set_than_the_lab_s_is_labelled_with_it():
    """A run on the regime task set says so; one on "lab", or a record made before data.task_set existed, does not.
    Breakage caught: the task set left out of `label`."""
    from types import SimpleNamespace

    def label(data):
        config = {"model": {"name": "lab"}, "saar": {"enabled": False}, **({"data": data} if data else {})}
        return report.label(SimpleNamespace(config=config, steps=120, saar=False))

    assert label({"task_set": "regime"}) == "lab (regime set) DAPO baseline"
    assert label({"task_set": "lab"}) == label(None) == "lab DAPO baseline"


def measured_start(dirty: bool = False) -> dict:
    """A harness.lab_regime record with round numbers."""
    side = {"problems": 400, "pass_at_1": 0.5, "pass_at_1_stderr": 0.025, "failed_calls_per_traj": 0.6,
            "failed_calls_per_traj_stderr": 0.04, "recovered_within_3_share": 0.55,
            "recovered_within_3_share_stderr": 0.033, "response_tokens": {"p50": 130, "p99": 640}}
    return {"git": {"commit": "c" * 40, "dirty": dirty}, "sft": {"hash": "abcdef012345"},
            "eval": {"task_set": "regime", "temperature": 1.0}, "saar_off": side,
            "saar_on": {**side, "pass_at_1": 0.52, "saar_recovered_share": 0.6, "response_tokens": {"p50": 120,
                                                                                                   "p99": 260}},
            "limits": {"K": 3, "max_response_tokens": 960, "overlong_buffer_tokens": 192, "buffer_starts_at": 768,
                       "sizing_budget": 2048, "sizing_percentiles": {"p50": 130, "p99": 640, "max": 1100}}}


def test_the_start_table_gives_the_measured_start_of_the_runs_task_set_and_strict_refuses_a_dirty_one(tmp_path):
    """The SFT start (harness.lab_regime's record) as a table, cited in place, only when a run trained on its task
    set (a record without data.task_set is of the lab set); --strict refuses a start record made from a dirty tree.
    Breakage caught: the table shown for lab runs; SAAR on reporting the within-K share instead of SAAR's own; the
    dirty flag not checked."""
    root = tmp_path / "runs"
    run = write_record(root, "lab0", summary_eval=eval_metrics(0.9, 0.02, 10))
    path = tmp_path / "lab" / "regime_sft_eval.json"
    path.parent.mkdir()
    path.write_text(json.dumps(measured_start()))
    assert report.start(measured_start(), report.load_records(root), "../lab", path.name) is None
    config = yaml.safe_load((run / "config.yaml").read_text())
    (run / "config.yaml").write_text(yaml.safe_dump({**config, "data": {"task_set": "regime"}}))
    table = report.start(measured_start(), report.load_records(root), "../lab", path.name)
    assert [[c.text for c in row] for row in table.rows] == [
        ["off", "50.0 ± 2.5", "0.600 ± 0.040", "55.0 ± 3.3", "130 / 640", "400", "regime_sft_eval.json"],
        ["on", "52.0 ± 2.5", "0.600 ± 0.040", "60.0", "120 / 260", "400", "regime_sft_eval.json"]]
    assert "abcdef012345" in table.title and "recovered within 3 (%)" in table.columns
    assert "from 768" in table.notes[1] and "p99 640, max 1100" in table.notes[1]
    assert "[`regime_sft_eval.json`](../lab/regime_sft_eval.json)" in report.to_markdown(table)
    (root / "lab0" / "env.json").write_text(json.dumps({"git": {"commit": "c" * 40, "dirty": []}}))
    out = tmp_path / "report"
    assert report.main(["--runs", str(root), "--out", str(out), "--paper", str(PAPER), "--start", str(path),
                        "--tuning", str(tmp_path / "none"), "--strict"]) == 0
    assert (out / "start.md").exists()
    path.write_text(json.dumps(measured_start(dirty=True)))
    assert report.main(["--runs", str(root), "--out", str(out), "--paper", str(PAPER), "--start", str(path),
                        "--tuning", str(tmp_path / "none"), "--strict"]) == 2
