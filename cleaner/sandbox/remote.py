"""A SandboxFusion server as a sandbox backend, behind the same interface as the local pool.

SandboxFusion (bytedance/SandboxFusion) runs code over HTTP: `POST {remote_url}/run_code` with
`{"code", "language": "python", "run_timeout", "memory_limit_MB"}` (older servers ignore the last field). The
response schema used here is the server's `RunCodeResponse`:

    {"status": "Success" | "Failed" | "SandboxError", "message": str,
     "compile_result": null | CommandRunResult, "run_result": null | CommandRunResult, ...}
    CommandRunResult = {"status": "Finished" | "Error" | "TimeLimitExceeded", "execution_time": float | null,
                        "return_code": int | null, "stdout": str | null, "stderr": str | null}

Mapping to our statuses: `SandboxError`, a missing run result, run status `Error` (the server could not run the
command), an HTTP error or an unreachable server -> `infra_error`; `TimeLimitExceeded` -> `timeout`; `Finished`
with return code 0 -> `ok`; otherwise `error`, with `error_type` from the traceback's last line (`MemoryError`
-> `memory_limit`), a signal name for a negative return code, else `SystemExit`. Output beyond max_output_bytes
-> `output_limit` (the server ran to its end; we only cut what we keep).

The server is stateless, so a remote session replays its successful cells (output discarded) before each new
cell, in one request. Unlike the local backend this re-executes earlier cells: their cost grows with the history,
and code with side effects or randomness may not replay to the same state. Isolation, limits and time-out
enforcement are the server's (SandboxFusion's defaults are weak: run it in its own container); none of the local
backend's guarantees (docs/sandbox.md) apply. Text from the server is made valid Unicode, and an error_type is
at most a short identifier.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from typing import Any

from cleaner.sandbox.config import SandboxConfig
from cleaner.sandbox.result import MAX_ERROR_TYPE_CHARS, ExecutionResult, signal_name, valid_text

_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*)(?::|$)")


def replay_program(history: list[str], code: str) -> str:
    """One program that runs `history` silently, then `code` as cell <cell-N>, with a traceback that starts at
    the cell (like the local backend's)."""
    n = len(history) + 1
    return "\n".join([
        "import contextlib as _contextlib, io as _io, linecache as _linecache, sys as _sys, traceback as _tb",
        "_ns = {'__name__': '__main__'}",
        "def _compile(_src, _name):",
        "    _linecache.cache[_name] = (len(_src), None, _src.splitlines(True), _name)",
        "    return compile(_src, _name, 'exec', dont_inherit=True)",
        f"_history = {json.dumps(history)}",
        "with _contextlib.redirect_stdout(_io.StringIO()), _contextlib.redirect_stderr(_io.StringIO()):",
        "    for _i, _src in enumerate(_history, 1):",
        "        exec(_compile(_src, f'<cell-{_i}>'), _ns)",
        "try:",
        f"    exec(_compile({json.dumps(code)}, '<cell-{n}>'), _ns)",
        "except SystemExit:",
        "    raise",
        "except BaseException as _e:",
        "    _tb.print_exception(type(_e), _e, _e.__traceback__.tb_next)",
        "    _sys.exit(1)",
        "",
    ])


def map_response(body: dict[str, Any], max_output_bytes: int) -> tuple[str, str, str, str | None, float]:
    """(status, stdout, stderr, error_type, duration_s) for a SandboxFusion `/run_code` response body."""
    run = body.get("run_result")
    if body.get("status") == "SandboxError" or not isinstance(run, dict) or run.get("status") == "Error":
        message = body.get("message") or (run or {}).get("stderr") or "no run result"
        return "infra_error", "", f"SandboxError: the SandboxFusion server failed: {message}\n", None, 0.0
    stdout, stderr = valid_text(run.get("stdout")), valid_text(run.get("stderr"))
    duration_s = float(run.get("execution_time") or 0.0)
    if len(stdout.encode()) + len(stderr.encode()) > max_output_bytes:
        stdout = stdout.encode()[:max_output_bytes].decode("utf-8", "replace")
        stderr = stderr.encode()[-max_output_bytes:].decode("utf-8", "replace")
        note = f"OutputLimitError: the cell wrote more than {max_output_bytes} bytes of output\n"
        return "output_limit", stdout, stderr + note, None, duration_s
    if run.get("status") == "TimeLimitExceeded":
        return "timeout", stdout, stderr + "TimeoutError: the cell did not finish in time and was stopped\n", None, \
            duration_s
    code = run.get("return_code")
    if code == 0:
        return "ok", stdout, stderr, None, duration_s
    lines = [line for line in stderr.splitlines() if line.strip()]
    match = _EXCEPTION_LINE.match(lines[-1]) if lines else None
    if match is not None:
        error_type = match.group(1).rsplit(".", 1)[-1][:MAX_ERROR_TYPE_CHARS]
        return ("memory_limit" if error_type == "MemoryError" else "error"), stdout, stderr, \
            (None if error_type == "MemoryError" else error_type), duration_s
    if isinstance(code, int) and code < 0:
        return "error", stdout, stderr, signal_name(-code), duration_s
    return "error", stdout, stderr, "SystemExit", duration_s


class RemoteSandboxPool:
    """The pool interface over a SandboxFusion server: `run`, `session`, `close`, async context manager. At most
    `config.workers` requests are in flight (default os.cpu_count()); callers beyond that wait."""

    backend = "remote"

    def __init__(self, config: SandboxConfig):
        if config.backend != "remote" or not config.remote_url:
            raise ValueError("RemoteSandboxPool needs backend='remote' and remote_url")
        self.config = config
        self._slots = asyncio.Semaphore(config.workers or os.cpu_count() or 1)
        self._client = None
        self._closed = False

    async def start(self) -> RemoteSandboxPool:
        import httpx

        if self._client is None:
            self._client = httpx.AsyncClient(base_url=self.config.remote_url.rstrip("/"),
                                             timeout=self.config.timeout_s + self.config.remote_request_timeout_s)
        return self

    async def close(self) -> None:
        self._closed = True
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def __aenter__(self) -> RemoteSandboxPool:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def run(self, code: str) -> ExecutionResult:
        return await self._run_program(replay_program([], code))

    def session(self) -> RemoteSession:
        return RemoteSession(self)

    async def _run_program(self, program: str) -> ExecutionResult:
        import httpx

        if self._closed:
            return self._result("infra_error", "", "SandboxError: the sandbox pool is closed\n", None, 0.0)
        await self.start()
        request = {"code": program, "language": "python", "run_timeout": self.config.timeout_s,
                   "memory_limit_MB": self.config.memory_mb}
        async with self._slots:
            try:
                response = await self._client.post("/run_code", json=request)  # type: ignore[union-attr]
                response.raise_for_status()
                body = response.json()
            except (httpx.HTTPError, ValueError) as exc:
                return self._result("infra_error", "", f"SandboxError: request to the SandboxFusion server failed: "
                                    f"{type(exc).__name__}: {exc}\n", None, 0.0)
        return self._result(*map_response(body, self.config.max_output_bytes))

    def _result(self, status: str, stdout: str, stderr: str, error_type: str | None,
                duration_s: float) -> ExecutionResult:
        return ExecutionResult(status, stdout, stderr, error_type, duration_s, "remote")


class RemoteSession:
    """A remote session: the successful cells so far, replayed (output discarded) before each new cell."""

    def __init__(self, pool: RemoteSandboxPool, history: list[str] | None = None):
        self._pool = pool
        self.history: list[str] = list(history or [])
        self.closed = False

    async def run(self, code: str) -> ExecutionResult:
        if self.closed:
            return self._pool._result("infra_error", "", "SandboxError: the session is closed\n", None, 0.0)
        result = await self._pool._run_program(replay_program(self.history, code))
        if result.ok:
            self.history.append(code)
        return result

    async def fork(self) -> RemoteSession:
        return RemoteSession(self._pool, self.history)

    async def close(self) -> None:
        self.closed = True

    async def __aenter__(self) -> RemoteSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
