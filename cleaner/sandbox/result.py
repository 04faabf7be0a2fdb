"""What one executed cell returns, and the text the model sees of it."""

from __future__ import annotations

import signal
from dataclasses import asdict, dataclass
from typing import Any

from cleaner.chat import truncate_middle
from cleaner.trajectory import ToolResult

# The sandbox's statuses: the tool statuses of cleaner.trajectory.STATUSES except `malformed` (nothing was run).
# `infra_error` means the sandbox failed; every other status is an outcome of the model's code.
SANDBOX_STATUSES = ("ok", "error", "timeout", "memory_limit", "output_limit", "infra_error")
MAX_ERROR_TYPE_CHARS = 128  # as the supervisor accepts from a cell


@dataclass(frozen=True)
class ExecutionResult:
    """One executed cell. `stdout` is the head of what the cell printed (up to max_output_bytes), `stderr` the
    tail of its error stream, ending with the traceback or the sandbox's note (time-out, output limit, ...).
    `error_type` is the exception class name for status `error` (`NameError`, `SyntaxError`, `SystemExit`, a
    signal name such as `SIGSEGV`), else None. `duration_s` is the cell's wall time in the sandbox, without
    queueing. `backend` says which backend ran it ("bwrap", "rlimit" or "remote")."""

    status: str
    stdout: str = ""
    stderr: str = ""
    error_type: str | None = None
    duration_s: float = 0.0
    backend: str = ""

    def __post_init__(self) -> None:
        if self.status not in SANDBOX_STATUSES:
            raise ValueError(f"unknown sandbox status {self.status!r}; valid: {', '.join(SANDBOX_STATUSES)}")
        if self.error_type is not None and not (isinstance(self.error_type, str) and self.error_type.isidentifier()
                                                and len(self.error_type) <= MAX_ERROR_TYPE_CHARS):
            raise ValueError(f"error_type must be None or a Python identifier of at most {MAX_ERROR_TYPE_CHARS} "
                             f"characters, got {self.error_type!r}")

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def output(self) -> str:
        """stdout, then stderr, as one text (untruncated)."""
        if self.stdout and self.stderr and not self.stdout.endswith("\n"):
            return self.stdout + "\n" + self.stderr
        return self.stdout + self.stderr

    def to_tool_result(self, max_chars: int | None = None) -> ToolResult:
        """The observation for the model: stdout then the stderr tail, whole, or cut in the middle to `max_chars`
        characters. The rollout keeps it whole: the episode cuts what the model is shown to
        `algo.max_tool_response_chars` (the paper's 256), the one place that limit is applied."""
        output = self.output if max_chars is None else truncate_middle(self.output, max_chars)
        return ToolResult(self.status, output, self.error_type)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def signal_name(sig: int) -> str:
    """`SIGSEGV` for a signal Python can name, else `SIG<n>` (the real-time signals 32-63): never raises."""
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"SIG{sig}"


def valid_text(value: object) -> str:
    """`value` if it is a string, as valid Unicode (lone surrogates replaced: they cannot be written as UTF-8), else
    the empty string. For text from outside the sandbox's own supervisor (a remote server's JSON)."""
    return value.encode("utf-8", "replace").decode("utf-8") if isinstance(value, str) else ""


def infra_error(message: str, backend: str = "") -> ExecutionResult:
    """A result for a call the sandbox could not run (could not start, died, pool closed)."""
    return ExecutionResult("infra_error", stderr=f"SandboxError: {message}\n", backend=backend)
