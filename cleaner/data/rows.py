"""The `Problem` record, the `DataError` every loader raises, file readers and the verl row format.

A file is read whole into a list of row dicts by its extension (`.jsonl`, `.json`, `.parquet`, `.csv`); a file
that cannot be read, holds no rows, or holds a row that is not an object fails with a `DataError` naming the path
and what was wrong. Rows are never skipped: a blank line in a `.jsonl` file is not a row, every other line is.

verl format (one row per problem): `data_source`, `prompt` (a chat list of {role, content}), `ability`,
`reward_model` {ground_truth, style}, `extra_info`. The question is the content of the last `user` message.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

READERS = (".jsonl", ".json", ".parquet", ".csv")


class DataError(ValueError):
    """A data file that is missing, unreadable or not in an expected format; the message names the path."""


@dataclass(frozen=True)
class Problem:
    """One benchmark or training problem.

    id: `<data set name>/<native id or row index>`, stable for a given file.
    question: the problem text, without a copy's own instruction suffix (see `strip_instruction`).
    answer: the gold as written in the file (AIME24's "025" stays "025"; GPQA: the gold letter; LiveCodeBench: "",
        its tests are in `meta["tests"]`).
    source: the path of the file it was read from.
    meta: everything else worth keeping (solution, url, choices, tests, ...).
    """

    id: str
    question: str
    answer: str
    source: str
    meta: dict = field(default_factory=dict)


def read_rows(path: Path) -> list[dict]:
    """All rows of `path` as dicts, by extension; a `DataError` for a missing, unreadable or empty file."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    ext = path.suffix.lower()
    if ext not in READERS:
        raise DataError(f"{path}: unsupported file extension {ext or '(none)'!r}; expected one of {', '.join(READERS)}")
    if ext == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(path).to_pylist()
        except (pa.ArrowException, OSError) as e:
            raise DataError(f"{path}: not a readable parquet file ({e})") from None
    else:
        text = path.read_text(encoding="utf-8")
        if ext == ".jsonl":
            lines = enumerate(text.splitlines(), 1)
            rows = [json_value(line, f"{path}: line {n}") for n, line in lines if line.strip()]
        elif ext == ".json":
            if not text.strip():
                raise DataError(f"{path}: empty file")
            rows = json_value(text, str(path), list, "a JSON list of objects")
        else:
            rows = list(csv.DictReader(text.splitlines()))
    if not rows:
        raise DataError(f"{path}: empty file (no rows)")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DataError(f"{path}: row {i} is a {type(row).__name__}, not an object")
    return rows


def json_value(text: str, where: str, expected: type = object, what: str = "") -> Any:
    """`text` parsed as JSON, checked to be an `expected` (described as `what`); a DataError naming `where`."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: not JSON ({e})") from None
    if not isinstance(value, expected):
        raise DataError(f"{where}: expected {what}, got a {type(value).__name__}")
    return value


def column(row: dict, key: str, i: int) -> Any:
    """`row[key]`, or a `DataError` naming the missing column and the row index."""
    if key not in row:
        raise DataError(f"row {i}: missing column {key!r} (columns: {', '.join(map(str, row))})")
    return row[key]


def gold_text(value: Any, i: int) -> str:
    """A gold answer as a string: strings as written, integers as decimal; anything else is an error."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise DataError(f"row {i}: answer {value!r} is a {type(value).__name__}, expected a string or an integer")


def is_verl(row: dict) -> bool:
    """Whether a row is in verl format (it has `prompt` and `reward_model`)."""
    return "reward_model" in row and "prompt" in row


def verl_question(row: dict, i: int) -> str:
    """The content of the last `user` message of a verl row's chat `prompt`."""
    prompt = column(row, "prompt", i)
    if not isinstance(prompt, list):
        raise DataError(f"row {i}: verl 'prompt' must be a chat list of {{role, content}}, got {type(prompt).__name__}")
    users = [m for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
    if not users or not isinstance(users[-1].get("content"), str):
        raise DataError(f"row {i}: verl 'prompt' has no user message with text content")
    return users[-1]["content"]


def verl_gold(row: dict, i: int) -> Any:
    """`reward_model.ground_truth` of a verl row, as stored (text, or an object for code tests)."""
    reward_model = column(row, "reward_model", i)
    if not isinstance(reward_model, dict) or "ground_truth" not in reward_model:
        raise DataError(f"row {i}: verl 'reward_model' has no 'ground_truth'")
    return reward_model["ground_truth"]


def verl_ground_truth(row: dict, i: int) -> str:
    """`reward_model.ground_truth` of a verl row, as a string."""
    return gold_text(verl_gold(row, i), i)


def verl_meta(row: dict) -> dict:
    """What a verl row carries besides its question and gold: data_source, ability, extra_info, a system prompt."""
    meta = {k: row[k] for k in ("data_source", "ability", "extra_info") if row.get(k) is not None}
    system = [m["content"] for m in row["prompt"] if isinstance(m, dict) and m.get("role") == "system"]
    if system:
        meta["system"] = system[-1]
    return meta
