"""LiveCodeBench v6 (2025-02..2025-05) code generation, from a file the user supplies (no shared copy has tests).

Every problem gets `answer=""` and its tests in `meta["tests"]`: a list of {input, output, testtype} with testtype
`stdin` (input fed to stdin, output compared with stdout) or `functional` (input: one JSON value per line, the
arguments of `meta["func_name"]`; output: the JSON of the return value). Public tests come first;
`meta["num_public_tests"]` says how many. `meta["starter_code"]` is the stub to complete ("" for stdin problems).
Rows are not filtered by date: the file decides which problems are in the set.

Upstream format (`code_generation_lite` rows): question_title, question_content, platform, question_id, contest_id,
contest_date, starter_code, difficulty, public_test_cases (JSON list of tests), private_test_cases (the same, as
plain JSON or as base64(zlib(pickle(json string)))), metadata (JSON; LeetCode rows name `func_name`). The id is
`<name>/<question_id>`.

verl / Open-AgentRL format: the question is the user message (kept as written); `reward_model.ground_truth` holds
the tests in any form the authors' grader accepts: JSON text, the object itself (a dict or list, as a parquet struct
or a JSON file stores it), or a Python literal (`"{'inputs': [...], ...}"`, read with `ast.literal_eval`, which
evaluates no code), or the compressed form above; in one of two layouts:
- a list of {input, output, testtype} tests, as upstream; `func_name` and `starter_code` then come from
  `extra_info` (or `extra_info.metadata`, a dict or its JSON) when present;
- the APPS layout {"inputs": [...], "outputs": [...], "fn_name"?: name}: tests are functional when `fn_name` is
  given, else stdin. A functional input that is a list of arguments becomes one JSON argument per line and a
  non-string output becomes its JSON, so both layouts give the same test form.
All tests of a verl row count as public (the format does not tell them apart). The id is
`<name>/<extra_info.question_id>` when present, else the row index.

Decoding the compressed form unpickles data from the file with an unpickler that refuses every global, so only
plain values (a str) load; a file cannot run code through it. `decode_tests` is the one parser of tests, for the
loaders, `harness.prepare_data` and the reward function alike.
"""

from __future__ import annotations

import ast
import base64
import binascii
import io
import json
import pickle
import zlib
from pathlib import Path
from typing import Any

from cleaner.data.rows import (
    DataError,
    Problem,
    column,
    is_verl,
    verl_gold,
    verl_meta,
    verl_question,
)

TEST_TYPES = ("stdin", "functional")
UPSTREAM_COLUMNS = ("question_title", "question_content", "platform", "question_id", "contest_id", "contest_date",
                    "starter_code", "difficulty", "public_test_cases", "private_test_cases", "metadata")


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")


def decode_tests(value: Any, where: str) -> Any:
    """The tests in `value`: a dict or list as it is; text as JSON, else as a Python literal holding a dict or a list
    (`ast.literal_eval`), else as base64(zlib(pickle(json string))), LiveCodeBench's compressed form."""
    if isinstance(value, (dict, list)):
        return value
    if not isinstance(value, str):
        raise DataError(f"{where}: expected tests as text, an object or a list, got {type(value).__name__}")
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        pass
    try:
        literal = ast.literal_eval(value)
    except (ValueError, SyntaxError, RecursionError):  # not a literal (a base64 blob is not one either)
        literal = None
    if isinstance(literal, (dict, list)):
        return literal
    try:
        inner = _PlainUnpickler(io.BytesIO(zlib.decompress(base64.b64decode(value, validate=True)))).load()
        return json.loads(inner)
    except (binascii.Error, zlib.error, pickle.UnpicklingError, EOFError, TypeError, ValueError) as e:
        raise DataError(f"{where}: neither JSON, a Python literal, nor base64(zlib(pickle(json))) "
                        f"({type(e).__name__}: {e})") from None


def _tests(value: Any, where: str) -> list[dict]:
    if not isinstance(value, list):
        raise DataError(f"{where}: expected a list of tests, got {type(value).__name__}")
    tests = []
    for k, t in enumerate(value):
        if not isinstance(t, dict) or not {"input", "output", "testtype"} <= t.keys():
            raise DataError(f"{where}: test {k} is not an object with input, output and testtype")
        if t["testtype"] not in TEST_TYPES:
            raise DataError(f"{where}: test {k} has testtype {t['testtype']!r}; valid: {', '.join(TEST_TYPES)}")
        tests.append({"input": t["input"], "output": t["output"], "testtype": t["testtype"]})
    return tests


def _json_dict(value: Any, where: str) -> dict:
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else {}
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: not JSON ({e})") from None
    if not isinstance(value, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(value).__name__}")
    return value


def _check_func_name(tests: list[dict], func_name: str | None, i: int) -> None:
    if func_name is None and any(t["testtype"] == "functional" for t in tests):
        raise DataError(f"row {i}: functional tests but no func_name")


def lcb_problems(name: str, path: Path, rows: list[dict]) -> list[Problem]:
    """Problems from LiveCodeBench rows in the upstream or the verl format, in file order."""
    if is_verl(rows[0]):
        return [_verl_problem(name, path, row, i) for i, row in enumerate(rows)]
    return [_upstream_problem(name, path, row, i) for i, row in enumerate(rows)]


def _upstream_problem(name: str, path: Path, row: dict, i: int) -> Problem:
    f = {k: column(row, k, i) for k in UPSTREAM_COLUMNS}
    public = _tests(decode_tests(f["public_test_cases"], f"row {i} public_test_cases"), f"row {i} public_test_cases")
    private = _tests(decode_tests(f["private_test_cases"], f"row {i} private_test_cases"),
                     f"row {i} private_test_cases")
    func_name = _json_dict(f["metadata"], f"row {i} metadata").get("func_name")
    _check_func_name(public + private, func_name, i)
    meta = {"tests": public + private, "num_public_tests": len(public), "func_name": func_name,
            "starter_code": f["starter_code"] or ""}
    meta.update({k: f[k] for k in ("question_title", "platform", "contest_id", "contest_date", "difficulty")})
    return Problem(f"{name}/{f['question_id']}", f["question_content"], "", str(path), meta)


def _apps_tests(gt: dict, where: str) -> list[dict]:
    inputs, outputs = gt.get("inputs"), gt.get("outputs")
    if not isinstance(inputs, list) or not isinstance(outputs, list) or len(inputs) != len(outputs):
        raise DataError(f"{where}: 'inputs' and 'outputs' must be lists of the same length")
    functional = gt.get("fn_name") is not None
    tests = []
    for x, y in zip(inputs, outputs):
        if functional and isinstance(x, list):
            x = "\n".join(json.dumps(arg) for arg in x)
        tests.append({"input": x if isinstance(x, str) else json.dumps(x),
                      "output": y if isinstance(y, str) else json.dumps(y),
                      "testtype": "functional" if functional else "stdin"})
    return tests


def _verl_problem(name: str, path: Path, row: dict, i: int) -> Problem:
    where = f"row {i} reward_model.ground_truth"
    question = verl_question(row, i)
    gt = decode_tests(verl_gold(row, i), where)
    extra = {k: v for k, v in (row.get("extra_info") or {}).items() if v is not None}  # parquet fills None
    info = {**_json_dict(extra.get("metadata") or {}, f"row {i} extra_info.metadata"), **extra}
    if isinstance(gt, dict):
        tests, func_name = _apps_tests(gt, where), gt.get("fn_name") or info.get("func_name")
    else:
        tests, func_name = _tests(gt, where), info.get("func_name")
    _check_func_name(tests, func_name, i)
    meta = {**verl_meta(row), "tests": tests, "num_public_tests": len(tests), "func_name": func_name,
            "starter_code": info.get("starter_code") or ""}
    native = extra.get("question_id", i)
    return Problem(f"{name}/{native}", question, "", str(path), meta)
