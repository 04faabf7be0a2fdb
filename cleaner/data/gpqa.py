"""GPQA-Diamond (198 four-way multiple-choice questions), from a file the user supplies (it is not redistributed).

Upstream format (the authors' CSV, or a parquet with the same columns): `Question`, `Correct Answer`,
`Incorrect Answer 1..3`, optional `Record ID`, `High-level domain`, `Subdomain`. The four answers are stripped of
surrounding whitespace and shuffled by `random.Random(cleaner.seeds.derive(question text))`: the same question gets
the same order in every file, run and row order. The
question becomes the stem followed by lines "A) ...".."D) ..."; the gold is the letter; `meta["choices"]` holds
the four answers in letter order and `meta["correct_answer"]` the correct text.

verl / Open-AgentRL-Eval format: the user message already lists the lettered choices and
`reward_model.ground_truth` is the gold letter (a single letter A-Z, surrounding whitespace and parentheses
dropped); the prompt is kept as written (its instruction is not stripped, since its wording is not known here).
"""

from __future__ import annotations

import random
import re
from pathlib import Path

from cleaner import seeds
from cleaner.data.rows import (
    DataError,
    Problem,
    column,
    is_verl,
    verl_ground_truth,
    verl_meta,
    verl_question,
)

LETTERS = "ABCD"
ANSWER_COLUMNS = ("Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3")


def choice_order(question: str) -> list[int]:
    """A permutation of 0..3 (0 = the correct answer) seeded by the question text (module docstring)."""
    order = list(range(len(ANSWER_COLUMNS)))
    random.Random(seeds.derive(question)).shuffle(order)
    return order


def gpqa_problems(name: str, path: Path, rows: list[dict]) -> list[Problem]:
    """Problems from GPQA rows in the upstream or the verl format, in file order."""
    if is_verl(rows[0]):
        return [_verl_problem(name, path, row, i) for i, row in enumerate(rows)]
    return [_upstream_problem(name, path, row, i) for i, row in enumerate(rows)]


def _upstream_problem(name: str, path: Path, row: dict, i: int) -> Problem:
    stem = str(column(row, "Question", i)).strip()
    answers = [str(column(row, k, i)).strip() for k in ANSWER_COLUMNS]
    order = choice_order(stem)
    choices = [answers[k] for k in order]
    question = stem + "\n\n" + "\n".join(f"{letter}) {choice}" for letter, choice in zip(LETTERS, choices))
    meta = {"choices": choices, "correct_answer": answers[0]}
    meta.update({k: row[k] for k in ("High-level domain", "Subdomain") if k in row})
    native = row.get("Record ID") or str(i)
    return Problem(f"{name}/{native}", question, LETTERS[order.index(0)], str(path), meta)


def _verl_problem(name: str, path: Path, row: dict, i: int) -> Problem:
    gold = verl_ground_truth(row, i).strip().strip("()").strip()
    if not re.fullmatch(r"[A-Z]", gold):
        raise DataError(f"row {i}: GPQA ground truth {gold!r} is not a single letter A-Z")
    return Problem(f"{name}/{i}", verl_question(row, i), gold, str(path), verl_meta(row))
