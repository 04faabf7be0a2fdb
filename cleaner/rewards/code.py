"""Code answers (LiveCodeBench style): the last ```python block of a response, run against a problem's tests in
the project's sandbox (`cleaner.sandbox`). A problem passes only if all its tests pass; grading stops at the
first failure.

Test format (LiveCodeBench `public_test_cases` / `private_test_cases`): `{"input": str, "output": str,
"testtype": "stdin" | "functional"}`.
- stdin: the program is run as a script with `input` on its standard input; its stdout must equal `output` after
  stripping trailing whitespace on every line and at the end.
- functional (LeetCode): the code defines `class Solution` with a method `func_name`; `input` holds one JSON
  value per line, the method's arguments; its return value, as JSON, must equal the JSON value `output`.

How stdin is fed: the sandbox runs a cell with stdin on /dev/null and has no stdin parameter, so the cell is
wrapped: it writes the input to an unnamed file in its scratch directory (`tempfile.TemporaryFile`; the sandbox
refuses memfds), puts it on file descriptor 0 and rebuilds
`sys.stdin`, then runs the solution with `exec` as `__main__` (`if __name__ == "__main__":` holds). Unlike an
`io.StringIO`, this also serves `sys.stdin.buffer`, `open(0)` and `os.read(0, ...)`. The solution's source is
compiled on its own (`<solution>`), so its line numbers and `from __future__` imports are its own. An input
larger than SandboxConfig.max_file_bytes cannot be fed (the cell dies with SIGXFSZ, reported as an error).

Departs from LiveCodeBench's grader: each test is a fresh sandbox cell (a fork; no state shared between tests);
stdin programs get no extra imports; functional code runs after `from typing import *` and the star-imports of
collections, heapq, bisect, itertools, functools, plus `import math` (as LeetCode provides `List`, `deque`, ...),
a smaller set than LiveCodeBench's. The per-test time limit is checked on the sandbox's measured duration; the
hard stop is the pool's SandboxConfig.timeout_s, so `timeout_s` may not exceed it.

Statuses: "passed"; "wrong_answer"; or the sandbox's status of the failing test: "error" (an exception,
`sys.exit(1)`, `os._exit(...)`), "timeout", "memory_limit", "output_limit", "infra_error" (the sandbox failed,
not the program: callers should not count it as the model's failure).

NOT protected against: code that patches the harness inside its own cell (e.g. replaces `json.dumps` or
`print`, or searches its stack for the expected value of a functional test: it is never in the cell, but the
arguments are) to forge a result line; the result line is marked with a random token, which plain prints
cannot guess.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable

_FENCE = re.compile(r"^\s*```\s*([\w+-]*)")

_FEED_STDIN = """\
import os as _os, sys as _sys, tempfile as _tempfile
with _tempfile.TemporaryFile() as _file:
    _file.write({data!r})
    _file.flush()
    _os.lseek(_file.fileno(), 0, _os.SEEK_SET)
    _os.dup2(_file.fileno(), 0)
_sys.stdin = _sys.__stdin__ = open(0, encoding="utf-8", closefd=False)
del _os, _sys, _tempfile, _file
"""
_LEETCODE_IMPORTS = """\
from typing import *
from collections import *
from heapq import *
from bisect import *
from itertools import *
from functools import *
import math
"""
_RUN_SOLUTION = "exec(compile({code!r}, '<solution>', 'exec', dont_inherit=True), globals())\n"
_CALL_SOLUTION = """\
import json as _json
print({marker!r} + _json.dumps(Solution().{func_name}(*_json.loads({args!r}))))
"""


def extract_code(text: str) -> str | None:
    """The body of the last ```python (or ```py, ```python3) fenced block of `text`, or None when there is none
    or when a python block is still open at the end (a truncated response: no fall-back to an earlier draft)."""
    blocks, current, language = [], None, ""
    for line in text.splitlines():
        fence = _FENCE.match(line)
        if current is None and fence:
            current, language = [], fence.group(1).lower()
        elif current is not None and line.strip() == "```":
            if language in ("python", "py", "python3"):
                blocks.append("\n".join(current) + "\n")
            current = None
        elif current is not None:
            current.append(line)
    if current is not None and language in ("python", "py", "python3"):
        return None
    return blocks[-1] if blocks else None


def _normalise(output: str) -> str:
    """Output without trailing whitespace on each line and at the end."""
    return "\n".join(line.rstrip() for line in output.rstrip().splitlines())


def _check(code: str, test: dict, func_name: str | None) -> tuple[str, Callable[[str], bool]]:
    """The cell that runs one test, and the judge of its stdout (-> bool)."""
    if test["testtype"] == "stdin":
        program = _FEED_STDIN.format(data=test["input"].encode()) + _RUN_SOLUTION.format(code=code)
        return program, lambda stdout: _normalise(stdout) == _normalise(test["output"])
    if test["testtype"] != "functional":
        raise ValueError(f"unknown testtype {test['testtype']!r}; valid: stdin, functional")
    if func_name is None or not func_name.isidentifier():
        raise ValueError(f"functional tests need func_name, a Python identifier; got {func_name!r}")
    args = [json.loads(line) for line in test["input"].strip().split("\n")]
    expected = json.loads(test["output"])
    marker = f"@@result-{secrets.token_hex(8)}@@"
    program = (_LEETCODE_IMPORTS + _RUN_SOLUTION.format(code=code)
               + _CALL_SOLUTION.format(marker=marker, func_name=func_name, args=json.dumps(args)))

    def judge(stdout: str) -> bool:
        results = [line[len(marker):] for line in stdout.splitlines() if line.startswith(marker)]
        return bool(results) and json.loads(results[-1]) == expected

    return program, judge


async def code_reward(code: str, tests: list[dict], pool, func_name: str | None = None,
                      timeout_s: float | None = None) -> dict:
    """Run `code` on `tests`, in order, in `pool` (a started SandboxPool or RemoteSandboxPool), stopping at the
    first failure. `timeout_s`: per-test limit in seconds (default and maximum: the pool's timeout_s).
    Returns {"passed": bool, "tests": number of tests, "failed_at": index of the failing test or None,
    "status": "passed" | "wrong_answer" | the sandbox status of the failing test}."""
    if not tests:
        raise ValueError("a problem needs at least one test")
    if timeout_s is not None and not 0 < timeout_s <= pool.config.timeout_s:
        raise ValueError(f"timeout_s must be in (0, pool.config.timeout_s={pool.config.timeout_s}], got "
                         f"{timeout_s}: the sandbox stops a cell at its own limit")
    for index, test in enumerate(tests):
        program, judge = _check(code, test, func_name)
        result = await pool.run(program)
        if result.status == "ok" and timeout_s is not None and result.duration_s > timeout_s:
            status = "timeout"
        elif result.status == "ok":
            status = "passed" if judge(result.stdout) else "wrong_answer"
        else:
            status = result.status
        if status != "passed":
            return {"passed": False, "tests": len(tests), "failed_at": index, "status": status}
    return {"passed": True, "tests": len(tests), "failed_at": None, "status": "passed"}
