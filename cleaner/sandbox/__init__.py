"""Isolated executor for model-written Python: limits enforced from outside the code, a pool, sessions.

    async with SandboxPool(SandboxConfig(timeout_s=4)) as pool:
        result = await pool.run("print(2 + 2)")              # a fresh interpreter
        async with pool.session() as s:                      # a trajectory's interpreter
            await s.run("x = 41")
            result = await s.run("print(x + 1)")
        observation = result.to_tool_result()                # cleaner.trajectory.ToolResult, 256 chars

How it runs. Each worker is one bubblewrap sandbox (see `backends` for what it shows and how) holding a small
supervisor, the zygote (`_zygote`): the real interpreter started with `-I -S`, standard library only unless
`preload_modules` asks for more. Each call forks a process from its template (forked by the zygote before its first
request, it never holds a request's code or a reply's output), so a call costs a fork, not an interpreter start, no
call inherits another's data in its memory, and the trainer itself never forks. The zygote alone decides each call's
result: what it observes (the wall clock, the output cap, the memory of all the call's processes, the scratch quota,
signals, the exit status) comes first; "ok" needs a clean exit it saw; a cell's report says only what a script can
choose (an exception or not, and its class name) and is checked. After every call it kills every process the call left
behind, setsid and double-fork daemons included. No cell can open a socket (seccomp: calls and sessions of one worker
share its network namespace, so any socket would be a channel between trajectories; socketpair stays). A call's scratch
directory is out of every later call's reach as soon as the call ends, and removed in the background between calls.
Without bubblewrap the pool refuses to start unless `backend="rlimit"` is set.

Results (`ExecutionResult.status`): `ok`; `error` (`error_type` the exception's class name, a signal's name such as
`SIGSEGV` or `SIG40`, `SystemExit`, or the sandbox's: `SandboxProtocolError` when a cell wrote to the sandbox's
result channel, `SessionLost` when a session's state could not be kept, `SessionTampered` when it was changed where
no cell should reach, `SandboxKilled` / `SandboxFault`);
`timeout` (wall clock or CPU time); `memory_limit` (MemoryError, the call's memory, or its scratch quota);
`output_limit`; `infra_error` when the sandbox itself failed where no cell could have caused it. Everything but
`infra_error` is charged to the model's code. Never re-executed: a call runs at most once, whatever happens.

Sessions (purified history): a session's interpreter state is that of its successful cells only, in order; a
failed cell leaves no trace. The state lives in a holder process, frozen between calls; a call forks a backup of
it, runs the cell in the holder itself, and on success keeps a fork of the cell. Nothing is replayed. Files in
the scratch directory (and MAP_SHARED memory) are not rolled back. A session's call is timed from the thaw of its
holder (timeout_s covers the handshake), the backup counts against its memory_mb, and a process is kept as a
holder only if it waits for the zygote (one thread, blocked on its socket, not dumpable). Remote sessions
(SandboxFusion) replay their successful cells instead (see `remote`).

Verdicts. No cell can turn a failure of another session's cell or of a one-off call into `ok`. Within a session,
an earlier cell cannot decide a later cell's verdict: from the zygote's go to the cell's report, the holder runs
only code that reads its own variables (built-ins bound before any cell); an audit hook installed before the first
cell refuses what could reach that code (tracers, profilers, audit hooks, ctypes, code objects, setting a
function's `__code__`/`__defaults__`, paths through /proc/self/mem); the interpreter's implicit entry points
(signal handlers and timers, exception hooks, builtins, standard streams, garbage to finalize) are restored before
each cell; a holder that finds its descriptors swapped runs nothing (`SessionTampered`). What a later cell itself
calls of its state (a function or module an earlier cell left or patched) is that cell's own code. NOT promised:
code that writes its own process's memory (a bug of CPython or a native module, crafted bytecode) can change
anything in it.

The whole behaviour, what is protected and what is NOT, and measured costs: docs/sandbox.md.
"""

from cleaner.sandbox.backends import SandboxUnavailable
from cleaner.sandbox.config import SandboxConfig
from cleaner.sandbox.pool import SandboxPool, Session, check_ready, open_pool, run_code
from cleaner.sandbox.result import ExecutionResult, truncate_middle

__all__ = ["ExecutionResult", "SandboxConfig", "SandboxPool", "SandboxUnavailable", "Session", "check_ready",
           "open_pool", "run_code", "truncate_middle"]
