"""Math benchmarks and training sets: AIME 2024, AIME 2025, MATH-500, DAPO-Math-17k, AIME 1983-2023.

Each reads its upstream row format or the verl format (`cleaner.data.rows`); the format is chosen per file by its
first row (verl when it has `prompt` and `reward_model`), then every row must have that format's columns.

Instruction suffixes: some copies append a fixed chat instruction to the problem (QwQ's AIME25 jsonl: "\\nPlease
reason step by step, and put your final answer within \\boxed{}."; Skywork-OR1's AIME24 parquet: " Let's think
step by step and output the final answer within \\boxed{}."; DAPO-Math-17k as published on Hugging Face wraps the
problem in its "Answer:" instruction). `strip_instruction` removes exactly these known strings, so the question is
the bare problem and the prompt template is chosen elsewhere; what was removed is kept in `meta["instruction"]`.
Any other wording is kept as written.

Ids: AIME24 jsonl `aime24/<id>` (Qwen's 60..89), MATH-500 `math500/<unique_id>`, AIME 1983-2023
`aime_1983_2023/<year>-<aime_number>-<problem_number>` as written (problem_number is 0-based in some years), others
and every verl file `<name>/<row index>`. Skywork's AIME24 parquet is in contest order (I-1..I-15, II-1..II-15)
while Qwen's jsonl is in the string order of its AoPS urls (Problem_1, Problem_10, ...).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cleaner.data.rows import (
    DataError,
    Problem,
    column,
    gold_text,
    is_verl,
    verl_ground_truth,
    verl_meta,
    verl_question,
)

INSTRUCTION_SUFFIXES = (
    "\nPlease reason step by step, and put your final answer within \\boxed{}.",
    " Let's think step by step and output the final answer within \\boxed{}.",
    '\n\nRemember to put your answer on its own line after "Answer:".',
)
INSTRUCTION_PREFIXES = (
    ("Solve the following math problem step by step. The last line of your response should be of the form "
     "Answer: $Answer (without quotes) where $Answer is the answer to the problem.\n\n"),
)


def strip_instruction(text: str) -> tuple[str, str | None]:
    """`text` without a known instruction prefix/suffix (module docstring), and what was removed (None if nothing)."""
    removed = []
    for prefix in INSTRUCTION_PREFIXES:
        if text.startswith(prefix):
            text, removed = text[len(prefix):], removed + [prefix]
    for suffix in INSTRUCTION_SUFFIXES:
        if text.endswith(suffix):
            text, removed = text[: -len(suffix)], removed + [suffix]
    return text, ("".join(removed) if removed else None)


@dataclass(frozen=True)
class Upstream:
    """Where an upstream row keeps its fields: question and answer columns, a native id, extra columns for meta."""

    question: str
    answer: str
    native_id: Callable[[dict, int], str] | None = None  # row, index -> id suffix; None: the row index
    meta: tuple[str, ...] = ()


def math_problems(name: str, path: Path, rows: list[dict], upstream: Upstream | None) -> list[Problem]:
    """Problems from the rows of one file, in file order; `upstream=None` accepts only the verl format."""
    verl = is_verl(rows[0])
    if not verl and upstream is None:
        raise DataError(f"row 0: not a verl row (needs columns 'prompt' and 'reward_model'; columns: "
                        f"{', '.join(map(str, rows[0]))})")
    problems = []
    for i, row in enumerate(rows):
        if verl:
            question, answer, meta, suffix = verl_question(row, i), verl_ground_truth(row, i), verl_meta(row), str(i)
        else:
            question = column(row, upstream.question, i)
            if not isinstance(question, str):
                raise DataError(f"row {i}: column {upstream.question!r} is a {type(question).__name__}, not text")
            answer = gold_text(column(row, upstream.answer, i), i)
            suffix = upstream.native_id(row, i) if upstream.native_id else str(i)
            meta = {k: column(row, k, i) for k in upstream.meta}
        question, instruction = strip_instruction(question)
        if instruction is not None:
            meta["instruction"] = instruction
        problems.append(Problem(f"{name}/{suffix}", question, answer, str(path), meta))
    return problems


def _column_id(key: str) -> Callable[[dict, int], str]:
    return lambda row, i: str(column(row, key, i))


AIME24 = Upstream("problem", "answer", _column_id("id"), ("url", "solution"))
AIME25 = Upstream("prompt", "answer")
MATH500 = Upstream("problem", "answer", _column_id("unique_id"), ("subject", "level", "solution"))
AIME_1983_2023 = Upstream(
    "problem", "answer",
    lambda row, i: "-".join(str(column(row, k, i)) for k in ("year", "aime_number", "problem_number")),
    ("year", "aime_number", "problem_number", "solution", "difficulty"),
)
