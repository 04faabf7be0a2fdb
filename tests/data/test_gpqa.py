"""GPQA-Diamond from fixture files built here (the real set is not redistributed): upstream CSV and parquet, the
verl / Open-AgentRL parquet, a data root in the Open-AgentRL-Eval layout, and malformed files."""

from __future__ import annotations

import csv

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cleaner.data import DataError, load
from cleaner.data.gpqa import choice_order

ROWS = [
    {"Record ID": "rec1", "Question": "Which gas is a noble gas?", "Correct Answer": " Argon\n",
     "Incorrect Answer 1": "Nitrogen", "Incorrect Answer 2": "Oxygen", "Incorrect Answer 3": "Chlorine",
     "High-level domain": "Chemistry", "Subdomain": "Inorganic"},
    {"Record ID": "rec2", "Question": "What is the spin of an electron?", "Correct Answer": "1/2",
     "Incorrect Answer 1": "1", "Incorrect Answer 2": "0", "Incorrect Answer 3": "3/2",
     "High-level domain": "Physics", "Subdomain": "Quantum"},
    {"Record ID": "rec3", "Question": "Which organelle makes ATP?", "Correct Answer": "Mitochondrion",
     "Incorrect Answer 1": "Ribosome", "Incorrect Answer 2": "Golgi body", "Incorrect Answer 3": "Lysosome",
     "High-level domain": "Biology", "Subdomain": "Cell"},
]
# The documented seed rule (cleaner.seeds.derive of the question) gives the permutations [0, 2, 3, 1], [1, 2, 0, 3]
# and [1, 0, 3, 2] (0 = correct), pinned: a change of the rule reshuffles and makes runs incomparable.
PINNED_GOLD = {"gpqa_diamond/rec1": "A", "gpqa_diamond/rec2": "C", "gpqa_diamond/rec3": "B"}


def write_csv(path, rows):
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_upstream_csv_shuffles_deterministically_and_records_gold(tmp_path):
    problems = load("gpqa_diamond", path=write_csv(tmp_path / "gpqa_diamond.csv", ROWS))
    assert {p.id: p.answer for p in problems} == PINNED_GOLD
    for p, row in zip(problems, ROWS):
        correct = row["Correct Answer"].strip()
        assert p.meta["correct_answer"] == correct
        assert p.meta["choices"]["ABCD".index(p.answer)] == correct
        assert sorted(p.meta["choices"]) == sorted([correct] + [row[f"Incorrect Answer {k}"] for k in (1, 2, 3)])
        lines = p.question.splitlines()
        assert lines[0] == row["Question"] and lines[1] == ""
        assert lines[2:] == [f"{letter}) {choice}" for letter, choice in zip("ABCD", p.meta["choices"])]
    assert problems[0].meta["High-level domain"] == "Chemistry"
    assert problems[0].question.endswith("A) Argon\nB) Oxygen\nC) Chlorine\nD) Nitrogen")


def test_order_depends_on_the_question_only(tmp_path):
    forward = load("gpqa_diamond", path=write_csv(tmp_path / "f.csv", ROWS))
    backward = load("gpqa_diamond", path=write_csv(tmp_path / "b.csv", ROWS[::-1]))
    assert {p.id: p.question for p in forward} == {p.id: p.question for p in backward}
    assert choice_order("Which gas is a noble gas?") == [0, 2, 3, 1]
    assert len({tuple(choice_order(f"question {k}")) for k in range(20)}) > 1  # it does shuffle


def test_upstream_parquet_matches_csv_and_no_record_id_uses_row_index(tmp_path):
    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "gpqa.parquet")
    assert load("gpqa_diamond", path=tmp_path / "gpqa.parquet") == [
        p.__class__(p.id, p.question, p.answer, str(tmp_path / "gpqa.parquet"), p.meta)
        for p in load("gpqa_diamond", path=write_csv(tmp_path / "gpqa.csv", ROWS))]
    rows = [{k: v for k, v in r.items() if k != "Record ID"} for r in ROWS]
    assert [p.id for p in load("gpqa_diamond", path=write_csv(tmp_path / "n.csv", rows))] == [
        "gpqa_diamond/0", "gpqa_diamond/1", "gpqa_diamond/2"]


def verl_row(ground_truth, question="Which gas is noble?\nA) Argon\nB) Neon\nC) Xenon\nD) All of these"):
    return {"data_source": "gpqa_diamond", "prompt": [{"role": "user", "content": question}], "ability": "science",
            "reward_model": {"ground_truth": ground_truth, "style": "rule"}, "extra_info": {"index": 0}}


def test_verl_parquet_in_open_agentrl_eval_layout(tmp_path):
    path = tmp_path / "gpqa-diamond" / "gpqa_diamond.parquet"
    path.parent.mkdir()
    pq.write_table(pa.Table.from_pylist([verl_row("D"), verl_row(" (B) ")]), path)
    problems = load("gpqa_diamond", data_root=tmp_path)
    assert [(p.id, p.answer) for p in problems] == [("gpqa_diamond/0", "D"), ("gpqa_diamond/1", "B")]
    assert problems[0].question.endswith("D) All of these")
    assert problems[0].meta["data_source"] == "gpqa_diamond"


@pytest.mark.parametrize("make, message", [
    (lambda p: pq.write_table(pa.Table.from_pylist([verl_row("Argon")]), p),
     r"row 0: GPQA ground truth 'Argon' is not a single letter A-Z"),
    (lambda p: pq.write_table(pa.Table.from_pylist([{k: v for k, v in ROWS[0].items() if k != "Incorrect Answer 3"}]),
                              p),
     r"row 0: missing column 'Incorrect Answer 3'"),
])
def test_malformed_gpqa(tmp_path, make, message):
    make(tmp_path / "g.parquet")
    with pytest.raises(DataError, match=message):
        load("gpqa_diamond", path=tmp_path / "g.parquet")


def test_empty_csv(tmp_path):
    (tmp_path / "g.csv").write_text("Question,Correct Answer\n")
    with pytest.raises(DataError, match=r"g\.csv: empty file \(no rows\)"):
        load("gpqa_diamond", path=tmp_path / "g.csv")
