"""The async pool: a fixed set of workers (one sandbox and zygote each), sessions pinned to a worker, back-pressure,
restart of a dead sandbox, clean shutdown."""

from __future__ import annotations

import asyncio
import collections
import functools
import itertools
import json
import logging
import os
import signal
import struct
import tempfile
from dataclasses import replace
from typing import Any

from cleaner.sandbox import backends
# The zygote's /proc readers, one copy for both sides (importing _zygote only defines names and opens libc).
from cleaner.sandbox._zygote import _children, _stat
from cleaner.sandbox.backends import SANDBOX_ENV, CgroupTree, LaunchPlan, SandboxUnavailable
from cleaner.sandbox.config import SandboxConfig
from cleaner.sandbox.result import ExecutionResult, infra_error

logger = logging.getLogger("cleaner.sandbox")

_HEADER = struct.Struct(">I")
_START_TIMEOUT_S = 30.0
_STOP_TIMEOUT_S = 2.0
_CONTROL_TIMEOUT_S = 10.0  # open / fork / close of a session: no model code runs


class _WorkerDied(Exception):
    """The zygote's pipe closed: the sandbox process is gone."""


def _process_tree(root: int) -> dict[int, bytes]:
    """`root` and its descendants, each with its start time (so that a reused pid is not taken for it)."""
    tree: dict[int, bytes] = {}
    stack = [root]
    while stack:
        pid = stack.pop()
        fields = _stat(pid)
        if fields is None:
            continue
        tree[pid] = fields[19]
        stack.extend(_children(pid))
    return tree


def _same_process_alive(pid: int, start_time: bytes) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[19] == start_time and fields[0] not in (b"Z", b"X")


def _kill_tree(tree: dict[int, bytes]) -> list[int]:
    """SIGKILL the processes of `tree` that still exist; returns them."""
    alive = [pid for pid, start_time in tree.items() if _same_process_alive(pid, start_time)]
    for pid in alive:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return alive


def _kill_session(sid: int) -> None:
    """SIGKILL every process of session `sid`. The worker was started as a session leader; for rlimit this takes
    whatever the zygote left in its session, should the zygote die without its clean-up."""
    for name in os.listdir("/proc"):
        fields = _stat(int(name)) if name.isdigit() else None
        if fields is not None and int(fields[3]) == sid:
            try:
                os.kill(int(name), signal.SIGKILL)
            except ProcessLookupError:
                pass


async def _remove_tree(path: str) -> None:
    """`rm -rf` (coreutils handles any tree a cell can build: depth, permissions, special files)."""
    if os.path.lexists(path):
        proc = await asyncio.create_subprocess_exec("rm", "-rf", "--one-file-system", "--", path, env=SANDBOX_ENV)
        await proc.wait()


class _Worker:
    """One sandbox holding one zygote, which runs one cell at a time. `generation` counts (re)starts: a session
    opened in an earlier generation has lost its state."""

    def __init__(self, index: int, plan: LaunchPlan, cgroups: CgroupTree | None):
        self.index = index
        self.plan = plan
        self.cgroups = cgroups
        self.proc: asyncio.subprocess.Process | None = None
        self.generation = 0
        self.lock = asyncio.Lock()
        self.load = 0  # calls running on or waiting for this worker
        self.sessions = 0  # open sessions pinned to it
        self.hello: dict[str, Any] = {}  # what the zygote reported about itself when it started
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=40)
        self._stderr_task: asyncio.Task[None] | None = None

    @property
    def cells_share_uid(self) -> bool:
        """Whether cells run under the zygote's uid (so they could signal it)."""
        return not self.hello.get("cell_uid_isolation", False)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    @property
    def pid(self) -> int | None:
        """Pid of the process this worker started (bwrap, or the zygote itself for rlimit)."""
        return None if self.proc is None else self.proc.pid

    def stderr_tail(self) -> str:
        return "".join(self._stderr_tail).strip()[-2000:]

    async def start(self) -> None:
        cgroup = None if self.cgroups is None else await asyncio.to_thread(self.cgroups.worker, self.index)
        self.proc = await asyncio.create_subprocess_exec(
            *self.plan.argv(cgroup), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=SANDBOX_ENV, cwd="/", start_new_session=True)
        self._stderr_task = asyncio.ensure_future(self._drain_stderr(self.proc))
        try:
            hello = await asyncio.wait_for(self._read(), _START_TIMEOUT_S)
        except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError) as exc:
            await self.kill()
            raise _WorkerDied(f"the sandbox did not start ({type(exc).__name__}): {self.stderr_tail()}") from exc
        if not hello["hello"]:
            await self.kill()
            raise _WorkerDied(f"the sandbox refused to start: {hello['error']}")
        self.hello = hello
        self.generation += 1

    async def request(self, msg: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        """Send one request, return its reply. Raises _WorkerDied or asyncio.TimeoutError."""
        try:
            await self._send(msg)
            async with asyncio.timeout(timeout_s):  # no task per call, unlike wait_for on Python 3.11
                return await self._read()
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            raise _WorkerDied(str(exc) or type(exc).__name__) from exc

    async def _send(self, msg: dict[str, Any]) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        data = json.dumps(msg).encode()
        self.proc.stdin.write(_HEADER.pack(len(data)) + data)
        await self.proc.stdin.drain()

    async def _read(self) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        header = await self.proc.stdout.readexactly(_HEADER.size)
        return json.loads(await self.proc.stdout.readexactly(_HEADER.unpack(header)[0]))

    async def _drain_stderr(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stderr is not None
        while line := await proc.stderr.readline():
            self._stderr_tail.append(line.decode("utf-8", "replace"))

    async def stop(self) -> None:
        """Ask the zygote to end (it kills its cells and holders), then make sure everything is gone."""
        tree = _process_tree(self.proc.pid) if self.alive else {}  # type: ignore[union-attr]
        if self.alive:
            try:
                await self._send({"op": "exit"})
            except ConnectionError:
                pass
            try:
                await asyncio.wait_for(self.proc.wait(), _STOP_TIMEOUT_S)  # type: ignore[union-attr]
            except asyncio.TimeoutError:
                pass
        await self.kill(tree)

    async def kill(self, tree: dict[int, bytes] | None = None) -> None:
        """SIGKILL the sandbox and wait until none of its processes exists. Under bwrap the pid namespace's init
        is its own process group and can outlive the outer bwrap for a moment, so wait for each process."""
        if self.proc is None:
            return
        tree = {**(tree or {}), **_process_tree(self.proc.pid)}
        _kill_tree(tree)
        _kill_session(self.proc.pid)
        await self.proc.wait()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 3 * _STOP_TIMEOUT_S
        while alive := _kill_tree(tree):
            if loop.time() > deadline:
                logger.warning("cleaner.sandbox: processes %s of worker %d did not die", alive, self.index)
                break
            await asyncio.sleep(0.002)
        if self._stderr_task is not None:
            await self._stderr_task
            self._stderr_task = None
        if self.plan.backend == "rlimit" and self.hello:  # its scratch directories are on the host
            await _remove_tree(self.hello["scratch_root"])


class Session:
    """A trajectory's interpreter: cells run one after another in the state left by its successful cells. Bound
    to one worker of its pool; its state holder is created by the first call. Use `async with pool.session()`
    or call close()."""

    def __init__(self, pool: SandboxPool, worker: _Worker, session_id: int):
        self._pool = pool
        self._worker = worker
        self.id = session_id
        self.generation: int | None = None  # the worker generation in which the state exists; None: not yet
        self.cells = 0  # cells sent so far (names the next cell "<cell-N>" in tracebacks)
        self.closed = False
        self._lost = False  # a call found the state gone (the session then went on from an empty state)

    @property
    def state_lost(self) -> bool:
        """Whether the state of this session's successful cells is gone: its sandbox died or was restarted after
        the state was made. Such a session runs its next cell from an empty state (after one `infra_error` that
        says so), so a caller that needs the purified history's state cannot carry on with it."""
        if self._lost:
            return True
        return self.generation is not None and (self.generation != self._worker.generation or not self._worker.alive)

    async def run(self, code: str) -> ExecutionResult:
        """Run one cell in this session's state. Never re-executed; see the package docstring for semantics."""
        if self.closed:
            return self._pool._infra("the session is closed")
        return await self._pool._call(self._worker, {"op": "run", "code": code}, self)

    async def fork(self) -> Session:
        """A new session starting from a copy of this one's state and scratch files (one fork, no re-execution).
        The copy shares this session's uid, so the two share their RLIMIT_NPROC budget."""
        if self.closed:
            raise RuntimeError("cannot fork a closed session")
        return await self._pool._fork(self)

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._worker.sessions -= 1
        await self._pool._close_session(self)

    async def __aenter__(self) -> Session:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class SandboxPool:
    """Runs model code in `config.workers` sandboxes (default os.cpu_count()), one cell at a time each. Callers
    beyond that wait their turn in order (back-pressure; nothing is queued in the sandboxes). Use as
    `async with SandboxPool(config) as pool:`; `run` starts the pool on first use if needed."""

    def __init__(self, config: SandboxConfig | None = None):
        self.config = config or SandboxConfig()
        if self.config.backend == "remote":
            raise ValueError("backend 'remote' is served by RemoteSandboxPool; use cleaner.sandbox.open_pool")
        self._plan: LaunchPlan | None = None
        self._workers: list[_Worker] = []
        self._cgroups: CgroupTree | None = None
        self._scratch_root: str | None = None  # rlimit: the host directory of the workers' scratch directories
        self._start_lock = asyncio.Lock()
        self._closed = False
        self._ids = itertools.count(1)
        # A call that gets no answer within this is the supervisor's failure: it enforces timeout_s itself, and
        # waits at most a few seconds more for a session's holder.
        self._backstop_s = self.config.timeout_s * 1.5 + 15.0

    # -- lifecycle ------------------------------------------------------------------------------------------------

    @property
    def backend(self) -> str | None:
        """"bwrap" or "rlimit" once started."""
        return None if self._plan is None else self._plan.backend

    @property
    def uid_isolation(self) -> bool | None:
        """True when cells run under uids of their own (root trainer), so they cannot signal the supervisor."""
        return None if not self._workers else not self._workers[0].cells_share_uid

    @property
    def isolation(self) -> dict[str, Any]:
        """What protects cells here, as the sandbox reported it when it started: backend, cell_uid_isolation,
        memory_limit ("cgroup" or "watchdog") and pids_limit ("cgroup" or "rlimit"), seccomp, scratch_quota,
        preloaded modules; cgroup_reason says why memory is not limited by a cgroup. Empty before start."""
        if not self._workers:
            return {}
        hello = self._workers[0].hello
        keys = ("cell_uid_isolation", "memory_limit", "pids_limit", "seccomp", "scratch_quota", "preloaded")
        return {"backend": self.backend, **{k: hello[k] for k in keys},
                "cgroup_reason": self._plan.cgroup_reason if self._plan else ""}

    @property
    def worker_pids(self) -> list[int]:
        """Pids of the processes the pool started (one per worker), for monitoring."""
        return [w.pid for w in self._workers if w.pid is not None]

    async def start(self) -> SandboxPool:
        """Start every worker. Raises SandboxUnavailable when the configured isolation cannot be had here (see
        `backends`), RuntimeError when the sandbox cannot start."""
        async with self._start_lock:
            if self._closed:
                raise RuntimeError("the sandbox pool is closed")
            if self._plan is not None:
                return self
            if self.config.backend == "rlimit":
                self._scratch_root = tempfile.mkdtemp(prefix="cleaner-sandbox-")
                os.chmod(self._scratch_root, 0o711)
            try:
                plan = await asyncio.to_thread(backends.plan, self.config, self._scratch_root)
                self._cgroups = None if plan.cgroup_parent is None else await asyncio.to_thread(
                    CgroupTree, plan.cgroup_parent)
                workers = [_Worker(i, plan, self._cgroups) for i in range(self.config.workers or os.cpu_count() or 1)]
                started = await asyncio.gather(*(w.start() for w in workers), return_exceptions=True)
                failed = [r for r in started if isinstance(r, BaseException)]
                if failed:
                    await asyncio.gather(*(w.kill() for w in workers))
                    raise RuntimeError(f"could not start the {plan.backend} sandbox: {failed[0]}") from failed[0]
            except BaseException:
                await self._remove_host_state()
                raise
            self._plan, self._workers = plan, workers
            self._announce(workers[0])
            return self

    def _announce(self, worker: _Worker) -> None:
        """Log what protects cells (the hello); a warning naming what is NOT protected where cells share a uid."""
        isolation = self.isolation
        logger.info("cleaner.sandbox: %s", json.dumps(isolation))
        if self.backend == "rlimit":
            logger.warning(
                "cleaner.sandbox runs model code WITHOUT namespace isolation (backend 'rlimit', %s). NOT protected: "
                "the network (any host or port), the host's file system (the cells read and write what %s can), "
                "scratch quotas; protected: time-outs, memory (%s), rlimits, seccomp, clean-up.",
                "as requested", "their own unprivileged uid" if not worker.cells_share_uid else "this user",
                isolation["memory_limit"])
        elif worker.cells_share_uid:
            logger.warning(
                "cleaner.sandbox: cells share this user's uid with their supervisor (bubblewrap in a user "
                "namespace). NOT protected: a cell can signal the supervisor (the worker restarts, its sessions "
                "lose their state, and the call is an error SandboxKilled), and can leave files in the worker's "
                "private /tmp for later calls. Run as root to give every session its own uid.")

    async def _remove_host_state(self) -> None:
        """Remove what the pool made on the host: the cgroups and the rlimit backend's scratch directory."""
        if self._cgroups is not None:
            await asyncio.to_thread(self._cgroups.remove)
            self._cgroups = None
        if self._scratch_root is not None:
            await _remove_tree(self._scratch_root)
            self._scratch_root = None

    async def close(self) -> None:
        """Stop every worker after its current call; later calls return `infra_error`. No process is left, nor
        any cgroup or host directory of the pool's."""
        self._closed = True
        async with self._start_lock:
            async def stop(worker: _Worker) -> None:
                async with worker.lock:
                    await worker.stop()

            await asyncio.gather(*(stop(w) for w in self._workers))
            await self._remove_host_state()

    async def __aenter__(self) -> SandboxPool:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- calls ----------------------------------------------------------------------------------------------------

    async def run(self, code: str) -> ExecutionResult:
        """Run one cell in a fresh interpreter. Never re-executed, whatever happens."""
        if self._closed:
            return self._infra("the sandbox pool is closed")
        try:
            if self._plan is None:
                await self.start()
        except RuntimeError as exc:
            if isinstance(exc, SandboxUnavailable):
                raise
            return self._infra(str(exc))
        worker = min(self._workers, key=lambda w: w.load)
        return await self._call(worker, {"op": "run", "code": code, "filename": "<cell>", "session": None}, None)

    def session(self) -> Session:
        """A new, empty session on the least used worker. Its state holder starts with its first cell."""
        if self._closed:
            raise RuntimeError("the sandbox pool is closed")
        if self._plan is None:
            raise RuntimeError("start the pool first (`async with SandboxPool(...) as pool`)")
        worker = min(self._workers, key=lambda w: (w.sessions, w.load))
        worker.sessions += 1
        return Session(self, worker, next(self._ids))

    def _infra(self, message: str) -> ExecutionResult:
        return infra_error(message, self.backend or "")

    def _result(self, reply: dict[str, Any]) -> ExecutionResult:
        return ExecutionResult(
            status=reply["status"], stdout=reply["stdout"], stderr=reply["stderr"], error_type=reply["error_type"],
            duration_s=reply["duration_s"], backend=self.backend or "")

    async def _call(self, worker: _Worker, msg: dict[str, Any], session: Session | None) -> ExecutionResult:
        """Run `msg` on `worker` when its turn comes. Shielded: a caller that is cancelled stops waiting, but the
        call completes in the sandbox (it is not run twice, and the protocol stays in step)."""
        worker.load += 1
        task = asyncio.ensure_future(self._locked_call(worker, msg, session))
        return await asyncio.shield(task)

    async def _locked_call(self, worker: _Worker, msg: dict[str, Any], session: Session | None) -> ExecutionResult:
        try:
            async with worker.lock:
                if self._closed:
                    return self._infra("the sandbox pool is closed")
                if not worker.alive:
                    try:
                        await worker.start()
                    except _WorkerDied as exc:
                        return self._infra(f"the sandbox could not be restarted: {exc}")
                if session is not None:
                    lost = await self._ensure_session(worker, session)
                    if lost is not None:
                        return lost
                    session.cells += 1
                    msg = {**msg, "session": session.id, "filename": f"<cell-{session.cells}>"}
                try:
                    reply = await worker.request(msg, self._backstop_s)
                except (_WorkerDied, asyncio.TimeoutError) as exc:
                    return await self._recover(worker, exc)
                return self._result(reply)
        finally:
            worker.load -= 1

    async def _ensure_session(self, worker: _Worker, session: Session) -> ExecutionResult | None:
        """Open the session's state holder if it has none in this generation of the worker. Returns a result to
        give instead of running the cell when the state was lost."""
        if session.generation == worker.generation:
            return None
        if session.generation is not None:
            session.generation, session._lost = None, True
            return self._infra("the session's state was lost because its sandbox restarted; this cell did not "
                               "run, and the next one starts from an empty state")
        try:
            await worker.request({"op": "open", "session": session.id}, _CONTROL_TIMEOUT_S)
        except (_WorkerDied, asyncio.TimeoutError) as exc:
            await self._recover(worker, exc)
            return self._infra(f"could not open a session: {exc}")
        session.generation = worker.generation
        return None

    async def _recover(self, worker: _Worker, exc: BaseException) -> ExecutionResult:
        """The zygote died or stopped answering during a call: restart the worker, report the call."""
        what = "stopped answering" if isinstance(exc, asyncio.TimeoutError) else "died"
        tail = worker.stderr_tail()
        cells_could_do_it = worker.cells_share_uid
        await worker.kill()
        try:
            await worker.start()
            restarted = "it was restarted"
        except _WorkerDied as start_exc:
            restarted = f"restarting it failed ({start_exc})"
        logger.warning("cleaner.sandbox worker %d %s during a call; %s. %s", worker.index, what, restarted, tail)
        if cells_could_do_it:
            return ExecutionResult(
                "error", stderr=f"SandboxKilled: the sandbox's supervisor {what} while this cell ran (cells can "
                f"signal it here); {restarted}, and the state of its sessions was lost\n",
                error_type="SandboxKilled", backend=self.backend or "")
        return self._infra(f"the sandbox's supervisor {what} during the call; {restarted}")

    async def _fork(self, session: Session) -> Session:
        worker = session._worker
        new = Session(self, worker, next(self._ids))
        worker.sessions += 1
        async with worker.lock:
            if session.generation != worker.generation or not worker.alive:
                return new  # nothing to copy: the origin has no state (yet, or any more)
            try:
                reply = await worker.request({"op": "fork", "session": session.id, "new": new.id},
                                             _CONTROL_TIMEOUT_S)
            except (_WorkerDied, asyncio.TimeoutError) as exc:
                await self._recover(worker, exc)
                raise RuntimeError(f"could not fork the session: the sandbox {exc!r}") from exc
        if not reply["ok"]:
            raise RuntimeError(f"could not fork the session: {reply['error']}")
        new.generation, new.cells = worker.generation, session.cells
        return new

    async def _close_session(self, session: Session) -> None:
        worker = session._worker
        async with worker.lock:
            if self._closed or session.generation != worker.generation or not worker.alive:
                return
            try:
                await worker.request({"op": "close", "session": session.id}, _CONTROL_TIMEOUT_S)
            except (_WorkerDied, asyncio.TimeoutError) as exc:
                await self._recover(worker, exc)


def open_pool(config: SandboxConfig | None = None):  # -> SandboxPool | RemoteSandboxPool
    """The pool for `config.backend`: local (auto, bwrap, rlimit) or remote (a SandboxFusion server)."""
    config = config or SandboxConfig()
    if config.backend == "remote":
        from cleaner.sandbox.remote import RemoteSandboxPool

        return RemoteSandboxPool(config)
    return SandboxPool(config)


def run_code(code: str, config: SandboxConfig | None = None) -> ExecutionResult:
    """Run one cell synchronously in a one-worker pool started for it (for scripts and one-off use; a trainer
    should keep one pool open). Must not be called from a running event loop."""
    config = replace(config or SandboxConfig(), workers=1)

    async def once() -> ExecutionResult:
        async with open_pool(config) as pool:
            return await pool.run(code)

    return asyncio.run(once())


@functools.lru_cache(maxsize=None)
def check_ready(config: SandboxConfig) -> str:
    """The prerequisite check every entry point runs before its work: start the sandbox `config` asks for (one
    worker, its preloaded modules imported) and run one trivial cell. Returns the backend that ran it; raises
    SandboxUnavailable with one line naming what is missing and the fix (install bubblewrap, enable user
    namespaces, or `sandbox.backend=rlimit` and what it gives up; a remote server that does not answer). Once per
    configuration and process. Must not be called from a running event loop."""
    try:
        result = run_code("pass", config)
    except SandboxUnavailable:
        raise
    except (RuntimeError, ValueError, OSError) as e:  # a preloaded module missing or failing, a pool that cannot start
        raise SandboxUnavailable(f"the sandbox (backend {config.backend!r}) could not start: {e}") from None
    if not result.ok:
        last = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "no output"
        raise SandboxUnavailable(f"the sandbox (backend {config.backend!r}) did not run a trivial cell: "
                                 f"{result.status}: {last}")
    return result.backend
