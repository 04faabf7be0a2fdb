"""harness.prepare_data from fixture files written here: Open-AgentRL-30K-format training rows (objects and JSON
strings, math and code, code tests in each form the authors' grader accepts, a LeetCode check-function row),
benchmarks in their upstream formats, malformed inputs, idempotent reruns, the CLI, the authors' difficulty filter
on hand-computed cases, and the output read back by verl's own RLHFDataset."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cleaner import bench, verl_plugin
from cleaner.data import DataError, Problem
from cleaner.lab.tokenizer import lab_tokenizer
from harness import prepare_data
from harness.records import REPO

DAPO_PREFIX = ("Solve the following math problem step by step. The last line of your response should be of the form "
               "Answer: $Answer (without quotes) where $Answer is the answer to the problem.\n\n")
APPS_TESTS = json.dumps({"inputs": ["3\n", "5\n"], "outputs": ["6\n", "10\n"]})
CHECK_TESTS = json.dumps({"import_prefix": "from typing import *\n", "entry_point": "double",
                          "test_code": "def check(f):\n    assert f(1) == 2\n"})
LCB_TESTS = [{"input": "1 2\n", "output": "3\n", "testtype": "stdin"}]


def user(text):
    return [{"role": "user", "content": text}]


def train_row(source="math_dapo", text="What is 6 * 7?", gold="42", **extra):
    return {"data_source": source, "prompt": user(text), "ability": "MATH",
            "reward_model": {"ground_truth": gold, "style": "rule"}, "extra_info": {"index": 7, "split": "train"},
            **extra}


TRAIN_ROWS = [
    train_row(text=DAPO_PREFIX + "What is 6 * 7?"),
    train_row("mega-science", "Give the mass number of carbon-12.", "12", ability="physics"),
    train_row("train-code-taco-easy", "Read n and print 2n.", APPS_TESTS, ability="CODE"),
    train_row("train-code-leetcode-Hard", "Write double(x).", CHECK_TESTS, ability="CODE"),
    # reward_model and extra_info stored as JSON text, no ability: as a third-party converter of the set reads them
    {"data_source": "train-math-deepscaler", "prompt": user("What is 2 + 2?"),
     "reward_model": json.dumps({"ground_truth": "4"}), "extra_info": json.dumps({"index": 3})},
]


def prompt(question, kind):
    """What the project's benchmark evaluation starts a problem of this kind from (cleaner.bench)."""
    return bench.prompt_messages(Problem("x/0", question, "", "x"), kind, "hermes")


def write_parquet(path, rows):
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def benchmark_files(tmp_path):
    aime = write_jsonl(tmp_path / "aime24.jsonl", [
        {"id": 60, "problem": "Find 2 + 3.", "answer": "005", "url": "u", "solution": "It is 5."}])
    gpqa = tmp_path / "gpqa.csv"
    gpqa.write_text("Question,Correct Answer,Incorrect Answer 1,Incorrect Answer 2,Incorrect Answer 3\n"
                    "Which is a noble gas?,Neon,Oxygen,Iron,Sodium\n")
    lcb = write_jsonl(tmp_path / "lcb.jsonl", [
        {"data_source": "lcb", "prompt": user("Print the sum of two numbers."),
         "reward_model": {"ground_truth": json.dumps(LCB_TESTS)}, "extra_info": {"question_id": "abc1"}}])
    return {"aime24": aime, "gpqa_diamond": gpqa, "livecodebench_v6": lcb}


def test_training_rows_become_verl_rows_with_our_prompt_and_agent(tmp_path):
    src = write_jsonl(tmp_path / "Open-AgentRL-30K.jsonl", TRAIN_ROWS)  # jsonl: a column can mix objects and text
    out, converted, written = prepare_data.prepare("train", src, tmp_path / "out", "hermes")
    table = pq.read_table(out)
    assert written and table.schema.equals(prepare_data.SCHEMA)
    rows = table.to_pylist()
    assert rows == converted.rows and [r["extra_info"]["index"] for r in rows] == [0, 1, 2, 4]  # row 3: left out
    assert dict(converted.left_out) == {"code tests in the LeetCode check-function layout": 1}
    math, _, code, deepscaler = rows
    assert math["prompt"] == prompt("What is 6 * 7?", "math")  # DAPO's instruction prefix is gone
    assert math["prompt"][0]["role"] == "system" and math["prompt"][1]["content"].startswith("What is 6 * 7?\n")
    assert json.loads(math["extra_info"]["upstream"]) == {"index": 7, "split": "train", "instruction": DAPO_PREFIX}
    assert code["prompt"] == prompt("Read n and print 2n.", "code") != prompt("Read n and print 2n.", "math")
    assert [r["data_source"] for r in rows] == ["math_dapo", "mega-science", "train-code-taco-easy",
                                                "train-math-deepscaler"]
    assert [r["reward_model"]["ground_truth"] for r in rows] == ["42", "12", APPS_TESTS, "4"]
    assert [r["extra_info"]["kind"] for r in rows] == ["math", "math", "code", "math"]
    assert [r["ability"] for r in rows] == ["MATH", "physics", "CODE", "math"]
    assert {r["agent_name"] for r in rows} == {verl_plugin.AGENT_NAME}
    assert {r["extra_info"]["split"] for r in rows} == {"train"} and deepscaler["extra_info"]["id"] == "train/4"


def test_benchmarks_are_read_by_cleaner_data_and_keep_their_gold(tmp_path):
    files = benchmark_files(tmp_path)
    rows = {name: prepare_data.prepare(name, path, tmp_path / "out", "hermes")[1].rows[0]
            for name, path in files.items()}
    aime, gpqa, lcb = rows["aime24"], rows["gpqa_diamond"], rows["livecodebench_v6"]
    assert (aime["data_source"], aime["reward_model"]["ground_truth"], aime["extra_info"]["id"]) == (
        "aime24", "005", "aime24/60")
    assert "solution" not in json.loads(aime["extra_info"]["upstream"])  # the worked solution stays out
    choices = json.loads(gpqa["extra_info"]["upstream"])["choices"]
    assert choices["ABCD".index(gpqa["reward_model"]["ground_truth"])] == "Neon"
    assert gpqa["prompt"][1]["content"].endswith(prompt("", "choice")[1]["content"])
    assert json.loads(lcb["reward_model"]["ground_truth"]) == LCB_TESTS
    assert [r["extra_info"]["kind"] for r in rows.values()] == ["math", "choice", "code"]
    assert {r["extra_info"]["split"] for r in rows.values()} == {"test"}


@pytest.mark.parametrize("rows, message", [
    ([{k: v for k, v in train_row().items() if k != "data_source"}], "row 0: missing column 'data_source'"),
    ([train_row(), train_row(prompt="What is 1 + 1?")], "row 1: verl 'prompt' must be a chat list"),
    ([train_row(reward_model={"style": "rule"})], "row 0: reward_model has no 'ground_truth'"),
    ([train_row(reward_model="{not json")], "row 0 reward_model: not JSON"),
    ([train_row("train-code-apps", gold="def f(): pass")], "row 0 reward_model.ground_truth: neither JSON, a Python literal, nor base64"),
    ([train_row("train-code-apps", gold=json.dumps({"inputs": ["1"]}))], "row 0 (train-code-apps): "),
    ([train_row(extra_info=[1, 2])], "row 0 extra_info: expected an object, got a list"),
], ids=["no-data-source", "prompt-text", "no-ground-truth", "reward-model-json", "code-not-json", "code-layout",
        "extra-info"])
def test_malformed_rows_fail_naming_the_row_and_column(tmp_path, rows, message):
    src = write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(DataError, match="^" + str(src).replace(".", r"\.") + ": ") as e:
        prepare_data.prepare("train", src, tmp_path / "out", "hermes")
    assert message in str(e.value)
    assert not (tmp_path / "out").exists()


def test_unreadable_files_fail_naming_the_path(tmp_path):
    for src, message in ((tmp_path / "absent.parquet", "no such file"), (tmp_path / "train.txt", "extension")):
        if src.suffix == ".txt":
            src.write_text("x")
        with pytest.raises(DataError, match=message) as e:
            prepare_data.prepare("train", src, tmp_path / "out", "hermes")
        assert str(src) in str(e.value)
    with pytest.raises(ValueError, match="unknown data set 'aime26'"):
        prepare_data.prepare("aime26", tmp_path / "absent.jsonl", tmp_path / "out", "hermes")


def test_a_rerun_keeps_identical_output_and_a_changed_input_gets_its_own_file(tmp_path):
    src = write_parquet(tmp_path / "train.parquet", TRAIN_ROWS[:2])
    first, _, written = prepare_data.prepare("train", src, tmp_path / "out", "hermes")
    stamp = first.stat().st_mtime_ns
    again, _, rewritten = prepare_data.prepare("train", src, tmp_path / "out", "hermes")
    assert written and not rewritten and again == first and first.stat().st_mtime_ns == stamp
    write_parquet(src, TRAIN_ROWS[:1])
    changed = prepare_data.prepare("train", src, tmp_path / "out", "hermes")[0]
    assert changed != first and first.exists() and pq.read_table(changed).num_rows == 1
    assert first.name.startswith("train.hermes.") and first.suffix == ".parquet"


def test_the_output_is_what_verls_rlhf_dataset_reads(tmp_path):
    from omegaconf import OmegaConf
    from verl.utils.dataset.rl_dataset import RLHFDataset

    out = prepare_data.prepare("train", write_parquet(tmp_path / "t.parquet", TRAIN_ROWS[:4]), tmp_path / "o",
                               "hermes")[0]
    config = OmegaConf.create({"prompt_key": "prompt", "max_prompt_length": 2560, "filter_overlong_prompts": True,
                               "truncation": "error", "return_raw_chat": True, "cache_dir": str(tmp_path / "cache")})
    dataset = RLHFDataset([str(out)], lab_tokenizer(), config)
    item = dataset[2]
    assert len(dataset) == 3
    assert item["raw_prompt"][1]["content"].startswith("Read n and print 2n.")
    assert (item["agent_name"], item["data_source"], item["index"]) == (verl_plugin.AGENT_NAME,
                                                                        "train-code-taco-easy", 2)
    assert item["reward_model"]["ground_truth"] == APPS_TESTS


def test_cli_converts_reports_and_refuses_malformed_input(tmp_path):
    src = write_parquet(tmp_path / "train.parquet", TRAIN_ROWS[:4])
    aime = benchmark_files(tmp_path)["aime24"]
    cmd = [sys.executable, "-m", "harness.prepare_data", "--out", str(tmp_path / "out"), "--train", str(src),
           "--eval", f"aime24={aime}"]
    env = {**os.environ, "CLEANER_DATA_ROOT": str(tmp_path / "no-root")}
    first = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert first.returncode == 0, first.stderr
    lines = first.stdout.splitlines()
    assert lines[0].startswith("wrote train: 3 rows -> ") and lines[0].endswith(
        "; left out 1: code tests in the LeetCode check-function layout")
    assert lines[1].startswith("wrote aime24: 1 rows -> ")
    # again, with a benchmark that has no file: the converted ones are unchanged, then one clear error
    again = subprocess.run(cmd + ["--eval", "aime25"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
                           check=False)
    assert again.returncode == 2 and "Traceback" not in again.stderr
    assert [line.split()[0] for line in again.stdout.splitlines()] == ["unchanged", "unchanged"]
    assert "\nerror: aime25: aime25: no data file found" in "\n" + again.stderr


@pytest.mark.parametrize("gold", [APPS_TESTS, json.loads(APPS_TESTS), repr(json.loads(APPS_TESTS))],
                         ids=["json", "object", "literal"])
def test_code_tests_in_any_accepted_form_are_written_as_json(tmp_path, gold):
    """Checked red: with the ground truth written as given, the object row fails (parquet string column) and the
    literal row is written as a Python literal."""
    src = write_jsonl(tmp_path / "train.jsonl", [train_row("train-code-taco-easy", "Read n and print 2n.", gold)])
    row = prepare_data.prepare("train", src, tmp_path / "out", "hermes")[1].rows[0]
    assert row["reward_model"]["ground_truth"] == APPS_TESTS


# The difficulty filter, hand-computed (authors' shares): row -> (data source, success rate; None: no statistics)
FILTER_ROWS = [("math_dapo", 0.0),                              # 0: rate 0, share 0: dropped
               *[("math_dapo", 0.125)] * 5,                     # 1-5: share 0.8 of 5 = 4 kept, one drawn out
               *[("train-code-taco-easy", 0.25)] * 3,           # 6-8: share 0.9 of 3 = int(2.7) = 2 kept
               ("train-code-taco-easy", 1.0),                   # 9: rate 1, share 0: dropped
               ("mega-science", 0.5),                           # 10: share 1: kept
               ("math_dapo", None)]                             # 11: no statistics: dropped
# the draws, numpy's RandomState: seed 43 + 125 (not code) over rows 1-5 leaves out row 2; seed 42 + 250 (code) over
# rows 6-8 leaves out row 6 (the non-code seed, 43 + 250, would leave out row 8)
FILTER_KEPT = [1, 3, 4, 5, 7, 8, 10]


def filter_files(tmp_path, rows=FILTER_ROWS):
    train = write_parquet(tmp_path / "train.parquet", [
        train_row(source, f"Problem {i}.", APPS_TESTS if "code" in source else str(i))
        for i, (source, _) in enumerate(rows)])
    stats = write_jsonl(tmp_path / "stats.jsonl", [{"uid": str(i), "data_source": source, "success_rate": rate,
                                                    "successes": int(rate * 8), "attempts": 8}
                                                   for i, (source, rate) in enumerate(rows) if rate is not None])
    return train, stats


def test_the_difficulty_filter_keeps_the_authors_shares(tmp_path):
    """Checked red: seeds swapped between code and the rest (row 8 dropped instead of 6), round() in place of int()
    (3 x 0.9 keeps all three), rows without statistics kept, a share of 0 applied as 1."""
    train, stats = filter_files(tmp_path)
    kept, left_out = prepare_data.difficulty_filter(prepare_data.read_rows(train), prepare_data.read_stats(stats),
                                                    prepare_data.AUTHORS_KEEP)
    assert kept == FILTER_KEPT
    assert dict(left_out) == {"difficulty filter, success rate 0": 1, "difficulty filter, success rate 0.125": 1,
                              "difficulty filter, success rate 0.25": 1, "difficulty filter, success rate 1": 1,
                              "no difficulty statistics": 1}
    # other shares: everything with statistics kept; a uid column, when there is one, joins instead of the row number
    everything = {r: 1.0 for r in (0.0, 0.125, 0.25, 0.5, 1.0)}
    rows = prepare_data.read_rows(train)
    assert prepare_data.difficulty_filter(rows, prepare_data.read_stats(stats), everything)[0] == list(range(11))
    by_uid = [{**row, "uid": 100 + i} for i, row in enumerate(rows)]
    assert prepare_data.difficulty_filter(by_uid, {"110": 0.5, "103": 0.125}, everything)[0] == [3, 10]


def test_the_filter_refuses_rates_without_a_share_and_bad_shares(tmp_path):
    train, stats = filter_files(tmp_path, [("math_dapo", 0.3)])
    with pytest.raises(DataError, match=r"row 0 \(uid 0\): success rate 0.3 has no share in --filter-keep \(rates: "
                                        r"0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1\)"):
        prepare_data.difficulty_filter(prepare_data.read_rows(train), prepare_data.read_stats(stats),
                                       prepare_data.AUTHORS_KEEP)
    with pytest.raises(DataError, match="'0.5:2' is not rate:share with both in"):
        prepare_data.parse_keep("0:0,0.5:2")
    assert prepare_data.parse_keep("0:0,0.125:0.8,1:1") == {0.0: 0.0, 0.125: 0.8, 1.0: 1.0}


def test_cli_filters_then_converts(tmp_path):
    train, stats = filter_files(tmp_path)
    cmd = [sys.executable, "-m", "harness.prepare_data", "--out", str(tmp_path / "out"), "--train", str(train),
           "--filter", str(stats)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    filtered_line, wrote_line = done.stdout.splitlines()
    filtered = Path(filtered_line.split(" -> ")[1].split(";")[0])
    assert filtered_line.startswith("filtered train: 7 rows -> ") and filtered.name.startswith("train.filtered.")
    assert "; left out 1: no difficulty statistics" in filtered_line
    assert pq.read_table(filtered).equals(pq.read_table(train).take(FILTER_KEPT))  # the input's rows, as they were
    assert wrote_line.startswith("wrote train: 7 rows -> ")


def test_a_jsonl_input_is_filtered_to_json_lines(tmp_path):
    train, stats = filter_files(tmp_path)
    rows = prepare_data.read_rows(train)
    src = write_jsonl(tmp_path / "train.jsonl", rows)
    out, kept, _ = prepare_data.filter_train(src, stats, prepare_data.AUTHORS_KEEP, tmp_path / "out")
    assert out.suffix == ".jsonl" and kept == len(FILTER_KEPT)
    assert [json.loads(line) for line in out.read_text().splitlines()] == [rows[i] for i in FILTER_KEPT]
