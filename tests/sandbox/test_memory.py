"""Memory is limited per call, not per process: all the call's processes together, and what it writes to its
scratch directory (a tmpfs, so memory too), stay under memory_mb; memory a process could hold outside any mapping
(memfds) is refused.

Host-side checks: the `hostile` fixture (no process of the call survives, the next call works)."""

from __future__ import annotations

import os

import pytest

from cleaner.sandbox import backends

pytestmark = pytest.mark.asyncio

# Forks N children that each touch 100 MB and sleep; the parent waits for them.
CHILDREN = (
    "import os, time\n"
    "for _ in range({n}):\n"
    "    if os.fork() == 0:\n"
    "        hog = b'x' * (100 << 20)\n"
    "        time.sleep(5)\n"
    "        os._exit(0)\n"
    "for _ in range({n}):\n"
    "    os.wait()\n"
    "print('all done')\n"
)


async def test_bwrap_processes_of_one_call_share_one_memory_limit(pools, hostile):
    """Six processes of 100 MB each fit under a 256 MB limit per process (RLIMIT_AS), not under 256 MB per call:
    the call is stopped as a memory_limit, not left to run (or time out). Two such processes (200 MB) pass.
    Breakage checked: `_over_limits` without the watchdog (timeout)."""
    pool = await pools.start(backend="bwrap", memory_mb=256, timeout_s=4.0)
    result = await hostile(pool, CHILDREN.format(n=6))
    assert (result.status, result.stdout) == ("memory_limit", ""), result
    assert "MemoryError: the cell's processes used more than 256 MiB together and were stopped" in result.stderr
    within = await hostile(pool, CHILDREN.format(n=2).replace("time.sleep(5)", "time.sleep(0.3)"))
    assert (within.status, within.stdout) == ("ok", "all done\n"), within


async def test_bwrap_many_forks_of_a_large_state_are_not_counted_once_each(pools):
    """A session whose state holds 150 MB forks eight children that only read it: their resident sizes add up to
    1.2 GB, but the pages are shared, so the call is well under 512 MB. Breakage checked: the limit on summed
    RSS (memory_limit)."""
    pool = await pools.start(backend="bwrap", memory_mb=512, timeout_s=4.0)
    async with pool.session() as session:
        assert (await session.run("state = b'x' * (150 << 20)")).status == "ok"
        readers = ("import os, time\nfor _ in range(8):\n    if os.fork() == 0:\n        total = state.count(b'x')\n"
                   "        time.sleep(0.5)\n        os._exit(0)\nfor _ in range(8):\n    os.wait()\nprint('read')")
        result = await session.run(readers)
    assert (result.status, result.stdout) == ("ok", "read\n"), result


async def test_bwrap_scratch_files_count_against_the_call_memory(pools, hostile):
    """Files in the scratch tmpfs are memory: 200 MB of them with memory_mb=128 (and a larger scratch quota) is a
    memory_limit, as a cgroup would count it. Breakage checked: the watchdog's limit without the scratch growth
    (ok)."""
    pool = await pools.start(backend="bwrap", memory_mb=128, max_scratch_mb=1024, timeout_s=4.0)
    code = ("import time\nfor i in range(20):\n    open(f'{i}.bin', 'wb').write(b'x' * (10 << 20))\n"
            "time.sleep(0.2)\nprint('wrote')")
    result = await hostile(pool, code)
    assert (result.status, result.stdout) == ("memory_limit", ""), result


async def test_bwrap_memfds_are_refused(bwrap_pool, hostile):
    """A memfd holds memory in no file system and, written with write(), in no mapping: the watchdog could not
    see it. Breakage checked: memfd_create missing from the seccomp filter (created)."""
    result = await hostile(bwrap_pool, "import os\nos.memfd_create('hidden')")
    assert (result.status, result.error_type) == ("error", "PermissionError"), result


CGROUP_PARENT, CGROUP_REASON = backends.cgroup_parent()


@pytest.mark.skipif(CGROUP_PARENT is None, reason=f"no cgroup v2 memory controller to delegate: {CGROUP_REASON}")
async def test_bwrap_cgroup_v2_limits_each_call_in_a_cgroup_of_its_own_and_leaves_none(pools, hostile):
    """Where the trainer's cgroup (or its parent) passes the memory controller, each call runs in its own cgroup
    with memory.max, the kernel stops it, and the pool removes its cgroups at close. Skipped where no such
    cgroup exists (the hello then says "watchdog", checked in test_pool)."""
    before = {d for d in os.listdir(CGROUP_PARENT) if d.startswith("cleaner-sandbox-")}
    pool = await pools.start(backend="bwrap", memory_mb=256, timeout_s=4.0)
    assert pool.isolation["memory_limit"] == "cgroup"
    where = await hostile(pool, "print(open('/proc/self/cgroup').read().split('0::')[-1].strip())")
    assert "/w0/call-" in where.stdout, where
    result = await hostile(pool, CHILDREN.format(n=6))
    assert result.status == "memory_limit", result
    within = await hostile(pool, CHILDREN.format(n=2).replace("time.sleep(5)", "time.sleep(0.3)"))
    assert (within.status, within.stdout) == ("ok", "all done\n"), within
    await pool.close()
    assert {d for d in os.listdir(CGROUP_PARENT) if d.startswith("cleaner-sandbox-")} == before
