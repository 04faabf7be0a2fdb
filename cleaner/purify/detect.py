"""Which tool outputs are failures: the log's own record of the outcome first, then the text.

1. A mark the log wrote itself decides (`log_mark`), on the output message or in a JSON execution result that
   is its whole content (`{"stdout": ..., "stderr": ..., "exit_code": ...}`): a `status`, an error flag
   (`is_error`, `error`), an exit code (`exit_code`, `returncode`), an exception name and value (`ename`,
   `evalue`, Jupyter's error output).
2. Else the text (`classify_output`): a Python traceback header, a line `SomeError: ...` (or `...Exception`,
   `...Exit`, `...Interrupt`), possibly after a label on the same line (`Error: NameError: ...`, `[stderr] ...`),
   or a time-out message, anywhere in the output; ANSI colour codes are ignored and a JSON-escaped traceback
   (`\\n` written as two characters) is read as lines. An `--error-pattern` ADDS failures: an output is also a
   failure when the pattern matches it.

A failure is named by its last exception class (`TimeoutError` and time-out messages are `timeout`, `MemoryError`
is `memory_limit`). What is NOT protected: a program that prints a line like `KeyError: 'x'` on purpose reads as
a failure, and a failure whose output shows none of these (a bare message) needs `--error-pattern` or a mark.
"""

from __future__ import annotations

import json
import re
from typing import Any

from cleaner.purify.log import PurifyInputError
from cleaner.trajectory import STATUSES, ToolResult

STATUS_ALIASES = {"success": "ok", "failure": "error"}  # accepted on a message's `status`, besides STATUSES
_RESULT_STATUSES = {  # the `status` of a JSON execution result (free text in the wild): only these are read
    "ok": "ok", "success": "ok", "succeeded": "ok", "completed": "ok", "done": "ok",
    "error": "error", "failure": "error", "failed": "error", "exception": "error",
    "timeout": "timeout", "timed_out": "timeout",
}
_RESULT_KEYS = ("stdout", "stderr", "exit_code", "returncode", "ename", "evalue", "traceback", "status", "error",
                "is_error")  # a JSON object content holding one of these is an execution result

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
_LABEL = r"(?:[A-Za-z][\w .-]{0,30}:\s*|\[[\w .-]{1,30}\]\s*)?"  # `Error: `, `stderr: `, `[stderr] `
_EXCEPTION_LINE = re.compile(rf"^{_LABEL}(?:[A-Za-z_]\w*\.)*([A-Z]\w*(?:Error|Exception|Exit|Interrupt))\b(?::.*)?$")
_EXCEPTION_WORDS = ("Error", "Exception", "Exit", "Interrupt")  # one is in every line _EXCEPTION_LINE matches
_TIMEOUT = re.compile(r"(?i)\b(timed out|time limit exceeded|execution timeout)\b")
_TRACEBACK = "Traceback (most recent call last)"


def _lines_of(output: str) -> str:
    """The output as the search reads it: without ANSI codes, with JSON-escaped line breaks as line breaks."""
    text = _ANSI.sub("", output) if "\x1b" in output else output
    return text.replace("\\n", "\n") if "\\n" in text else text


def traceback_failure(output: str) -> ToolResult | None:
    """The failure a traceback, an exception line or a time-out message anywhere in `output` shows; else None."""
    text = _lines_of(output)
    exceptions = [m.group(1) for ln in text.splitlines() if (m := _EXCEPTION_LINE.match(ln.strip()))] \
        if any(word in text for word in _EXCEPTION_WORDS) else []
    if exceptions:
        name = exceptions[-1]
        status = {"TimeoutError": "timeout", "MemoryError": "memory_limit"}.get(name, "error")
        return ToolResult(status, output, name)
    if _TIMEOUT.search(text):
        return ToolResult("timeout", output, "Timeout")
    if _TRACEBACK in text:
        return ToolResult("error", output, None)
    return None


def classify_output(output: str, error_pattern: re.Pattern[str] | None = None) -> ToolResult:
    """Status of a tool output the log marks no outcome for: a traceback search, plus the pattern when given."""
    return classify_text(output, error_pattern)[0]


def classify_text(output: str, error_pattern: re.Pattern[str] | None) -> tuple[ToolResult, str]:
    """(result, the rule that decided it: `traceback`, `error pattern`, or for an ok output the rules tried)."""
    found = traceback_failure(output)
    if found is not None:
        return found, "traceback"
    if error_pattern is not None and error_pattern.search(_ANSI.sub("", output) if "\x1b" in output else output):
        return ToolResult("error", output, None), "error pattern"
    return ToolResult("ok", output), "traceback" if error_pattern is None else "traceback, error pattern"


def _failed(status: str, output: str, error_type: Any, text: str, refine: bool = True) -> ToolResult:
    """A failure the log marked: its exception class from the mark, else from `text`; unless the mark named the
    status (`refine` False), a time-out or memory error the text shows refines a plain `error`."""
    found = traceback_failure(text)
    if refine and status == "error" and found is not None and found.status != "error":
        status = found.status
    if isinstance(error_type, str) and error_type:
        return ToolResult(status, output, error_type)
    return ToolResult(status, output, found.error_type if found is not None and status == "error" else None)


def _mark(fields: dict[str, Any], output: str, text: str, where: str,
          strict_status: bool) -> tuple[ToolResult, str] | None:
    """The outcome `fields` mark, or None; `text` is where an exception class is looked for. `strict_status`: an
    unknown `status` is an error in the record (a message's field) rather than free text to ignore (a JSON
    result's)."""
    if isinstance(fields.get("status"), str) or (strict_status and "status" in fields):
        raw = fields["status"]
        if not isinstance(raw, str):
            raise PurifyInputError(f"{where}: status and error_type must be strings")
        status = STATUS_ALIASES.get(raw, raw) if strict_status else _RESULT_STATUSES.get(raw.lower())
        if strict_status and status not in STATUSES:
            raise PurifyInputError(f"{where} has unknown status {raw!r}; valid: "
                                   f"{', '.join(STATUSES + tuple(STATUS_ALIASES))}")
        if status is not None:
            if status == "ok" or status == "infra_error":
                return ToolResult(status, output, fields.get("error_type") if status != "ok" else None), "status"
            error_type = fields.get("error_type") or fields.get("ename")
            return _failed(status, output, error_type, text, refine=False), "status"
    if isinstance(fields.get("is_error"), bool):
        return (_failed("error", output, fields.get("ename"), text) if fields["is_error"] else ToolResult("ok", output),
                "error flag")
    for key in ("exit_code", "returncode"):
        code = fields.get(key)
        if isinstance(code, int) and not isinstance(code, bool):
            return (ToolResult("ok", output) if code == 0 else _failed("error", output, fields.get("ename"), text),
                    "exit code")
    if isinstance(fields.get("ename"), str) and fields["ename"]:
        return _failed("error", output, fields["ename"], text), "exception name"
    if not strict_status and "error" in fields:  # a JSON result's `error`: a message, an object, or a flag
        error = fields["error"]
        failed = error not in (None, "", False, {}, [])
        return _failed("error", output, None, text) if failed else ToolResult("ok", output), "error flag"
    return None


def execution_result(content: str) -> dict[str, Any] | None:
    """`content` parsed when it is a JSON execution result (an object holding one of `_RESULT_KEYS`); else None."""
    if not content.startswith("{"):
        return None
    try:
        value = json.loads(content)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) and any(key in value for key in _RESULT_KEYS) else None


def log_mark(message: dict[str, Any], output: str, where: str) -> tuple[ToolResult, str] | None:
    """The outcome the log recorded for one call, on its output message or in the JSON result it holds; None
    when the log marks none (then the text decides, `classify_text`)."""
    result = execution_result(output)
    streams = output if result is None else "\n".join(
        v if isinstance(v, str) else "\n".join(map(str, v)) for key in ("stderr", "traceback", "error", "evalue")
        if isinstance(v := result.get(key), (str, list)))
    mark = _mark(message, output, streams, where, strict_status=True)
    if mark is not None or result is None:
        return mark
    mark = _mark(result, output, streams, where, strict_status=False)
    if mark is not None:
        return mark
    found = traceback_failure(streams)
    return (ToolResult(found.status, output, found.error_type), "stderr") if found is not None else None
