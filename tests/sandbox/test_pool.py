"""The pool: backend choice (strict refusal, loud fallback), bounded concurrency, restarts, shutdown."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from dataclasses import replace

import psutil
import pytest

from cleaner.sandbox import SandboxConfig, SandboxPool, SandboxUnavailable

FAST = SandboxConfig(timeout_s=1.0, cpu_time_s=5.0, memory_mb=512, workers=1)

pytestmark = pytest.mark.asyncio


async def test_strict_refuses_when_bwrap_is_missing():
    pool = SandboxPool(replace(FAST, bwrap_path="/nonexistent/bwrap", strict=True))
    with pytest.raises(SandboxUnavailable, match=r"bubblewrap not found \(sandbox.bwrap_path='/nonexistent/bwrap'\)"):
        await pool.start()
    assert pool.backend is None and pool.worker_pids == []


async def test_strict_refuses_when_bwrap_fails_to_start():
    pool = SandboxPool(replace(FAST, bwrap_path="/bin/false", strict=True))
    with pytest.raises(SandboxUnavailable, match=r"/bin/false failed \(exit 1\)"):
        await pool.start()


async def test_backend_bwrap_refuses_a_missing_bwrap_even_without_strict():
    with pytest.raises(SandboxUnavailable, match="namespace isolation is unavailable"):
        await SandboxPool(replace(FAST, backend="bwrap", bwrap_path="/nonexistent/bwrap")).start()


async def test_fallback_to_rlimit_warns_loudly_and_says_which_backend_ran(pools, caplog):
    with caplog.at_level(logging.WARNING, logger="cleaner.sandbox"):
        pool = await pools.start(bwrap_path="/nonexistent/bwrap")
    assert pool.backend == "rlimit"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("WITHOUT namespace isolation" in w and "bubblewrap not found" in w for w in warnings), warnings
    result = await pool.run("print('ran')")
    assert (result.status, result.stdout, result.backend) == ("ok", "ran\n", "rlimit")


async def test_bwrap_auto_picks_bwrap_without_a_warning_when_it_works(pools, caplog):
    with caplog.at_level(logging.WARNING, logger="cleaner.sandbox"):
        pool = await pools.start(backend="auto", strict=True)
    if pool.uid_isolation is False and os.geteuid() == 0:
        pytest.skip("cells share root's uid here; the pool warns about it by design")
    assert pool.backend == "bwrap"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert (await pool.run("print(1)")).backend == "bwrap"


async def test_bwrap_concurrency_is_bounded_by_the_number_of_workers(pools):
    pool = await pools.start(backend="bwrap", strict=True, workers=2, timeout_s=5.0)
    code = "import time\nstart = time.time()\ntime.sleep(0.15)\nprint(start, time.time())"
    results = await asyncio.gather(*(pool.run(code) for _ in range(10)))
    assert [r.status for r in results] == ["ok"] * 10
    spans = [tuple(map(float, r.stdout.split())) for r in results]
    most_at_once = max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans)
    assert most_at_once == 2  # both workers were used, and never more


async def test_bwrap_callers_beyond_the_pool_wait_without_extra_processes(pools):
    pool = await pools.start(backend="bwrap", strict=True, workers=1, timeout_s=5.0)
    idle = pools.idle[id(pool)]
    calls = asyncio.gather(*(pool.run("import time\ntime.sleep(0.1)") for _ in range(20)))
    counts = []
    while not calls.done():
        counts.append(len(pools.remember(pool)))
        await asyncio.sleep(0.01)
    assert [r.status for r in await calls] == ["ok"] * 20
    assert max(counts) == idle + 1  # one cell at a time; the 19 others wait in the trainer, not in the sandbox


async def test_bwrap_close_leaves_no_process_and_later_calls_are_infra_errors(pools):
    pool = await pools.start(backend="bwrap", strict=True, workers=2)
    await pool.run("print(1)")
    processes = [pools.seen[p] for p in await pools.settled(pool)]
    await pool.close()
    assert not [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    after = await pool.run("print(1)")
    assert (after.status, after.stdout) == ("infra_error", "")
    assert "closed" in after.stderr


async def test_bwrap_supervisor_killed_from_outside_is_an_infra_error_and_restarts(pools):
    pool = await pools.start(backend="bwrap", strict=True, timeout_s=5.0)
    session = pool.session()
    assert (await session.run("kept = 1")).status == "ok"
    call = asyncio.ensure_future(pool.run("import time\ntime.sleep(3)\nprint('finished')"))
    await asyncio.sleep(0.3)
    zygote = next(p for p in psutil.Process(pool.worker_pids[0]).children(recursive=True)
                  if p.name() != "bwrap" and p.parent().name() == "bwrap")
    zygote.send_signal(signal.SIGKILL)
    result = await call
    if pool.uid_isolation:
        assert result.status == "infra_error"
        assert "supervisor died" in result.stderr
    else:
        assert (result.status, result.error_type) == ("error", "SandboxKilled")
    assert (await pool.run("print('back')")).stdout == "back\n"
    lost = await session.run("print(kept)")
    assert lost.status == "infra_error" and "state was lost" in lost.stderr
    fresh = await session.run("print('kept' in globals())")
    assert (fresh.status, fresh.stdout) == ("ok", "False\n")


async def test_bwrap_cancelled_caller_does_not_rerun_or_desync_the_worker(pools):
    pool = await pools.start(backend="bwrap", strict=True, timeout_s=5.0)
    async with pool.session() as session:
        call = asyncio.ensure_future(session.run("import time\ntime.sleep(0.3)\nmarks = 1"))
        await asyncio.sleep(0.1)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        result = await session.run("print(marks)")
    assert (result.status, result.stdout) == ("ok", "1\n")  # the call completed once, unseen
