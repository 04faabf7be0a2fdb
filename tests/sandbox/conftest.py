"""Fixtures for the sandbox tests: pools with short limits, and a checker that a hostile call left nothing behind
and that the same pool still works afterwards."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import types
from dataclasses import replace
from pathlib import Path

import psutil
import pytest
import pytest_asyncio

import cleaner
from cleaner.sandbox import ExecutionResult, SandboxConfig, SandboxPool

# Short limits keep the battery fast; memory stays well above what the interpreter needs.
FAST = SandboxConfig(timeout_s=1.0, cpu_time_s=5.0, memory_mb=512, workers=1, max_output_bytes=1 << 20)
BWRAP_MISSING_REASON = "bubblewrap (bwrap) is not installed here; `apt-get install bubblewrap` to run this test"


def sandbox_pids(pool: SandboxPool) -> set[int]:
    """Every process of the pool's sandboxes: each worker's process and all its descendants."""
    pids: set[int] = set()
    for pid in pool.worker_pids:
        try:
            root = psutil.Process(pid)
            pids.add(pid)
            pids.update(p.pid for p in root.children(recursive=True) if p.status() != psutil.STATUS_ZOMBIE)
        except psutil.NoSuchProcess:
            continue
    return pids


def zygote(pool: SandboxPool, index: int = 0) -> psutil.Process:
    """The supervisor of worker `index`: the first process of its tree that is not bubblewrap."""
    root = psutil.Process(pool.worker_pids[index])
    return next(p for p in [root, *root.children(recursive=True)] if p.name() != "bwrap")


def sandbox_cpu_s(pool: SandboxPool) -> float:
    """CPU time used so far by every live process of the pool's sandboxes."""
    total = 0.0
    for pid in sandbox_pids(pool):
        try:
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            continue
    return total


SOURCE = Path(cleaner.__file__).resolve().parents[1]  # the directory that holds the package under test


# A cell's last lines forging the supervisor's report: `ok`, naming the process in the variable `child` as the
# session's next holder, written to every descriptor the cell may have inherited, then an exit without cleanup.
FORGED_HOLDER_REPORT = (
    "frame = json.dumps({'status': 'ok', 'error_type': None, 'holder': child}).encode()\n"
    "for fd in range(3, 40):\n"
    "    try:\n"
    "        os.write(fd, struct.pack('>I', len(frame)) + frame)\n"
    "    except OSError:\n"
    "        pass\n"
    "os._exit(0)\n"
)


def readable_python() -> str | None:
    """An interpreter (3.11 or later) that users other than root can run: the rlimit backend started as root runs
    cells under an unprivileged uid, and refuses an interpreter those cannot read. This one if it qualifies,
    else the system's."""
    for candidate in (os.path.realpath(sys.executable), "/usr/bin/python3", "/usr/local/bin/python3"):
        path = Path(os.path.realpath(candidate))
        if not path.exists() or not all(os.stat(p).st_mode & 0o001 for p in [path.parent, *path.parent.parents]):
            continue
        version = subprocess.run([str(path), "-c", "import sys; print(sys.version_info >= (3, 11))"],
                                 capture_output=True, text=True)
        if version.stdout.strip() == "True":
            return str(path)
    return None


# Runs cells in a rlimit pool and prints one JSON line per event; see run_rlimit_script.
RLIMIT_DRIVER = """
import asyncio, json, logging, os, signal, sys
from cleaner.sandbox import SandboxConfig, SandboxPool
logging.basicConfig(level=logging.WARNING, format="LOG %(levelname)s %(message)s", stream=sys.stdout)
def emit(**kw):
    print(json.dumps(kw), flush=True)
async def main(steps):
    pool = await SandboxPool(SandboxConfig(backend="rlimit", timeout_s=2.0, cpu_time_s=5.0, memory_mb=512,
                                           workers=1)).start()
    session = pool.session()
    for kind, code in steps:
        if kind == "kill_zygote":
            os.kill(pool.worker_pids[0], signal.SIGKILL)
            continue
        if kind == "isolation":
            emit(isolation=pool.isolation)
            continue
        if kind == "first_output_exists":  # a host-side check, while the pool runs
            emit(exists=os.path.exists(first_output))
            continue
        result = await (pool.run(code) if kind == "run" else session.run(code))
        emit(result=result.to_dict(), zygote=pool.worker_pids[0])
        first_output = first_output if "first_output" in locals() else result.stdout.strip()
    await pool.close()
    emit(closed=True)
asyncio.run(main(json.loads(sys.argv[1])))
"""


def run_rlimit_script(steps: list[tuple[str, str]]) -> tuple[list[dict], list[str]]:
    """Run `steps` (("run" | "session", code), or ("kill_zygote" | "isolation" | "first_output_exists", ""): the
    last checks on the host whether the path the first cell printed exists) in a fresh process holding a rlimit
    pool,
    with an interpreter other users can read (see readable_python). Returns the JSON events and the log lines."""
    python = readable_python()
    if python is None:
        pytest.skip("no Python 3.11+ here that other users can run (the rlimit backend as root needs one)")
    proc = subprocess.run([python, "-c", RLIMIT_DRIVER, json.dumps(steps)], capture_output=True, text=True,
                          timeout=120, env={"PATH": os.environ["PATH"], "PYTHONPATH": str(SOURCE)}, cwd="/")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")], [l for l in lines if l.startswith("LOG")]


class Pools:
    """Starts pools for a test and, at teardown, closes them and checks that none of their processes is left."""

    def __init__(self) -> None:
        self.pools: list[SandboxPool] = []
        self.seen: dict[int, psutil.Process] = {}  # Process objects: a reused pid is not mistaken for ours
        self.idle: dict[int, int] = {}  # id(pool) -> its process count before any call

    async def start(self, **overrides: object) -> SandboxPool:
        config = replace(FAST, **overrides)
        if config.backend == "bwrap" and shutil.which(config.bwrap_path) is None:
            pytest.skip(BWRAP_MISSING_REASON)
        pool = await SandboxPool(config).start()
        self.pools.append(pool)
        self.idle[id(pool)] = len(self.remember(pool))
        return pool

    def remember(self, pool: SandboxPool) -> set[int]:
        pids = sandbox_pids(pool)
        for pid in pids - self.seen.keys():
            try:
                self.seen[pid] = psutil.Process(pid)
            except psutil.NoSuchProcess:
                pass
        return pids

    async def settled(self, pool: SandboxPool, expected: int | None = None, timeout_s: float = 2.0) -> set[int]:
        """The pool's processes once they number `expected` (default: once their number stops changing). The
        zygote replies as soon as a cell's result is known and reaps, sweeps and cleans up right after (always
        before it reads the next request), so a cell may take a moment to disappear; a process still there after
        `timeout_s` is a leak, and the caller's comparison fails."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        previous: set[int] | None = None
        while asyncio.get_running_loop().time() < deadline:
            pids = self.remember(pool)
            if (len(pids) == expected) if expected is not None else (pids == previous):
                return pids
            previous = pids
            await asyncio.sleep(0.02)
        return pids

    async def close_all(self) -> None:
        for pool in self.pools:
            self.remember(pool)
            await pool.close()
        alive = [p for p in self.seen.values() if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert not alive, f"sandbox processes still alive after close: {alive}"


@pytest_asyncio.fixture
async def pools():
    manager = Pools()
    yield manager
    await manager.close_all()


@pytest_asyncio.fixture
async def bwrap_pool(pools: Pools) -> SandboxPool:
    return await pools.start(backend="bwrap")


@pytest.fixture
def hostile(pools: Pools):
    """run(pool, code) -> result of one hostile call, after checking that it left no process behind (the
    sandbox's own processes are the same before and after, or as many when `restarted`), and that the next call
    on the same pool works and leaves nothing either."""

    async def run(pool: SandboxPool, code: str, restarted: bool = False) -> ExecutionResult:
        warm = await pool.run("print('warm')")
        assert warm.status == "ok", warm
        before = await pools.settled(pool)
        result = await pool.run(code)
        after = await pools.settled(pool, len(before))
        if restarted:
            assert len(after) == len(before) and after != before, (before, after)
        else:
            assert after == before, f"processes left behind: {after - before}, gone: {before - after}"
        following = await pool.run("print('next call works')")
        assert (following.status, following.stdout) == ("ok", "next call works\n"), following
        assert await pools.settled(pool, len(after)) == after
        return result

    return run


@pytest.fixture
def host():
    """Host-side views for the tests: host.zygote(pool), host.cpu_s(pool), host.pids(pool), host.rlimit(steps)."""
    return types.SimpleNamespace(zygote=zygote, cpu_s=sandbox_cpu_s, pids=sandbox_pids, rlimit=run_rlimit_script)


@pytest.fixture
def forged_holder_report() -> str:
    """The end of a hostile cell (FORGED_HOLDER_REPORT): a forged `ok` naming `child` as the next holder."""
    return FORGED_HOLDER_REPORT
