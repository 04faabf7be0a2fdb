"""Isolated executor for model-written Python: limits enforced from outside the code, a pool, sessions.

    async with SandboxPool(SandboxConfig(timeout_s=4)) as pool:
        result = await pool.run("print(2 + 2)")              # a fresh interpreter
        async with pool.session() as s:                      # a trajectory's interpreter
            await s.run("x = 41")
            result = await s.run("print(x + 1)")
        observation = result.to_tool_result()                # cleaner.trajectory.ToolResult, 256 chars

How it runs. Each worker is one sandbox (bubblewrap; see `backends` for the exact set-up) holding a small
supervisor, the zygote: the real interpreter started with `-I -S` (standard library only; it never imports torch
or the trainer's packages). Each call forks a process from it, so a call costs a fork, not an interpreter start,
and the trainer itself never forks. The zygote, never the cell, enforces the wall-clock limit (SIGKILL of all the
cell's processes), the output cap and the clean-up: after every call, before it takes the next one, it kills
every process the call left behind, including ones that detached with setsid or a double fork (orphans come back
to it, a subreaper). The kernel enforces the limits set before model code runs: RLIMIT_AS, RLIMIT_CPU,
RLIMIT_FSIZE, RLIMIT_NPROC, RLIMIT_NOFILE. The environment is PATH, LANG, and HOME = TMPDIR = the cell's scratch
directory (its working directory, removed afterwards); no variable of the trainer's reaches the sandbox.

Protected against (bwrap backend): code that runs forever or ignores signals (SIGKILL at `timeout_s`, from
outside; disabling `signal.alarm` changes nothing); fork bombs (RLIMIT_NPROC, exact when cells get a uid of their
own, i.e. when the trainer runs as root; the kill sweep in any case); memory bombs (MemoryError under RLIMIT_AS);
floods of output (`output_limit`); the network (a new network namespace: not even the host's 127.0.0.1 is
reachable); writes outside the scratch directory (read-only file system); reading the trainer's HOME (hidden) or
environment (not passed; other processes are invisible in the new pid namespace); processes outliving their
cell; a cell killing its parent (as root: another uid, not allowed; otherwise the supervisor is restarted and the
call reported as error `SandboxKilled`, never run again).
NOT protected against: kernel exploits (no seccomp filter; the kernel is shared); reading world-readable files of
the host (the root file system is visible, read-only); a cell breaking its own session (it runs in the process
that holds the state). Without root, cells share the user's uid: RLIMIT_NPROC then counts all the user's
processes (see SandboxConfig.max_processes) and a cell can write to the sandbox's private /tmp. The rlimit
fallback (no bubblewrap, or no user namespaces) keeps the limits, the time-out, the clean-up and the scrubbed
environment, but does NOT block the network or the file system (beyond file permissions), and a process of the
same user can be read through /proc. It is chosen only with a logged warning and `ExecutionResult.backend ==
"rlimit"`; `strict=True` refuses it (SandboxUnavailable). Needs Linux >= 5.3 (pidfd).

Never re-executed. A call runs at most once: not after a time-out, not after any failure, not when the sandbox
died during it (that call is reported, the sandbox restarted). A caller cancelled while waiting does not cancel
the call: it completes in the sandbox, unseen (for a session, its effect on the state stands).

Results (`ExecutionResult.status`): `ok`; `error`, an exception from the model's code (`error_type` is its class
name; syntax errors included); `timeout` (wall clock, or CPU time); `memory_limit` (MemoryError); `output_limit`
(more than max_output_bytes of stdout + stderr: the cell is stopped); `infra_error` when the sandbox itself
failed (could not start; died or stopped answering where cells cannot signal it; pool or session closed; a
session's state lost to a restart). Everything but `infra_error` is an outcome of the model's code. Decisions:
- `sys.exit()`, `sys.exit(0)`, `sys.exit(None)` -> ok; any other SystemExit -> error `SystemExit`.
- `os._exit(n)`, for any n -> error `SystemExit`: the cell did not finish (in a session its process, so its
  state, is gone: it cannot count as a successful cell).
- killed by a signal -> error named after it (`SIGSEGV`); SIGXCPU, or SIGKILL at the CPU limit -> timeout.
- RecursionError -> error `RecursionError`, with Python's shortened traceback.
- `os.kill(os.getppid(), 9)`: in a one-off cell as root, PermissionError; where cells share the zygote's uid, the
  zygote dies, the call is error `SandboxKilled` and the worker restarts. In a session it kills the holder; the
  cell runs on, and if it succeeds its state is kept (if it fails, the next call reports `SessionLost`).
- output is decoded as UTF-8 with replacement characters; text that cannot be encoded (lone surrogates) is
  written with backslash escapes, as CPython does on stderr. Output written before a kill is kept (line-buffered
  streams). Non-daemon threads are waited for, as at the end of a script.
- tracebacks are Python's own, from the cell down (`File "<cell>", line 1`; `<cell-N>` in a session), with
  source lines, without the sandbox's frames. `stdout` keeps the head, `stderr` the tail; the model sees stdout
  then the stderr tail, cut in the middle to `max_output_chars` (`to_tool_result`).

Sessions (purified history). A session's interpreter state is the state after its successful cells only, in
order: a cell that fails (error, timeout, memory or output limit) leaves no trace, even if it assigned or mutated
variables before failing. Mechanism: the state lives in one process, the holder; each cell runs in a fork of it;
when the cell succeeds, a fork of the cell (a fresh process: no CPU time used, no threads) becomes the holder;
when it fails, it is discarded. So a cell costs the same after 10 cells as after none, and nothing is replayed or
re-executed. `Session.fork()` copies a state in one fork. This differs from a notebook (the SAAR-off baseline,
where a failed cell stays in the context): in Jupyter a failed cell's partial side effects persist (variables
assigned before the exception stay); here they do not, with SAAR on or off, so what the model read (the error)
matches the state its next cell sees. Files written to the scratch directory are NOT rolled back. Threads do not
outlive their cell. A session is pinned to one worker; if that worker restarts, its next call returns
`infra_error` and the session continues from an empty state. Remote sessions (SandboxFusion) replay their
successful cells instead (see `remote`).
"""

from cleaner.sandbox.backends import SandboxUnavailable
from cleaner.sandbox.config import SandboxConfig
from cleaner.sandbox.pool import SandboxPool, Session, open_pool, run_code
from cleaner.sandbox.result import ExecutionResult, truncate_middle

__all__ = ["ExecutionResult", "SandboxConfig", "SandboxPool", "SandboxUnavailable", "Session", "open_pool",
           "run_code", "truncate_middle"]
