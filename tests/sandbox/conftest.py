"""Fixtures for the sandbox tests: pools with short limits, and a checker that a hostile call left nothing behind
and that the same pool still works afterwards."""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import replace

import psutil
import pytest
import pytest_asyncio

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
        """The pool's processes once they number `expected` (default: as many as when idle). The zygote replies
        as soon as a cell's result is known and reaps, sweeps and cleans up right after (always before it reads
        the next request), so a cell may take a moment to disappear; a process still there after `timeout_s` is
        a leak, and the caller's comparison fails."""
        expected = self.idle[id(pool)] if expected is None else expected
        deadline = asyncio.get_running_loop().time() + timeout_s
        while len(pids := self.remember(pool)) != expected and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
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
    return await pools.start(backend="bwrap", strict=True)


@pytest_asyncio.fixture
async def rlimit_pool(pools: Pools) -> SandboxPool:
    return await pools.start(backend="rlimit")


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
