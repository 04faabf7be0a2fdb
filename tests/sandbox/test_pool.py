"""The pool: no silent unisolated mode, what it reports about its isolation, bounded concurrency, restarts,
shutdown."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from dataclasses import replace

import psutil
import pytest

from cleaner.sandbox import SandboxConfig, SandboxPool, SandboxUnavailable
from cleaner.sandbox import backends

FAST = SandboxConfig(timeout_s=1.0, cpu_time_s=5.0, memory_mb=512, workers=1)

pytestmark = pytest.mark.asyncio


@pytest.mark.parametrize("backend", ["auto", "bwrap"])
async def test_refuses_without_bubblewrap_unless_rlimit_is_asked_for(backend):
    """No silent fallback: without bubblewrap the pool refuses and says how to opt in. Breakage checked: the old
    fallback to rlimit for "auto" (started, with a warning)."""
    pool = SandboxPool(replace(FAST, backend=backend, bwrap_path="/nonexistent/bwrap"))
    with pytest.raises(SandboxUnavailable, match=r"bubblewrap not found \(sandbox.bwrap_path='/nonexistent/bwrap'\)"
                                                 r".*sandbox.backend='rlimit'"):
        await pool.start()
    assert pool.backend is None and pool.worker_pids == []


async def test_refuses_when_bubblewrap_fails_to_start():
    pool = SandboxPool(replace(FAST, bwrap_path="/bin/false"))
    with pytest.raises(SandboxUnavailable, match=r"bubblewrap cannot start a sandbox here: /bin/false failed "
                                                 r"\(exit 1\)"):
        await pool.start()


@pytest.mark.skipif(os.geteuid() != 0, reason="the refusal concerns a trainer running as root")
async def test_rlimit_as_root_refuses_an_interpreter_other_users_cannot_read(monkeypatch, tmp_path):
    """As root the rlimit backend must drop cells to an unprivileged uid, which cannot run an interpreter under a
    directory other users cannot enter (pyenv under /root): it refuses, rather than run cells as root. A copy of
    this interpreter's installation under a 0700 directory stands in for such a home. Breakage checked: the old
    `drop_uid = ... all(readable)` (cells ran as root)."""
    hidden = tmp_path / "home"
    hidden.mkdir(mode=0o700)
    monkeypatch.setattr(backends, "needed_paths", lambda config: [str(hidden)])
    with pytest.raises(SandboxUnavailable, match=f"not readable by other users: {hidden}"):
        await SandboxPool(replace(FAST, backend="rlimit")).start()


async def test_rlimit_runs_only_when_asked_and_warns_naming_what_is_not_protected(host):
    """backend="rlimit" starts, logs a warning that names what it does not protect, reports itself as such, and
    (as root) runs cells under an unprivileged uid. Breakages checked: no warning; cells as root (uid 0)."""
    events, logs = host.rlimit([("isolation", ""), ("run", "import os\nprint(os.getuid())")])
    assert events[0]["isolation"]["backend"] == "rlimit"
    warning = next(line for line in logs if "WITHOUT namespace isolation" in line)
    assert "NOT protected: the network" in warning and "the host's file system" in warning
    result = events[1]["result"]
    assert (result["status"], result["backend"]) == ("ok", "rlimit")
    if os.geteuid() == 0:
        assert int(result["stdout"]) != 0 and events[0]["isolation"]["cell_uid_isolation"] is True


async def test_bwrap_reports_how_memory_is_limited(pools, caplog):
    """The hello says how memory is limited, and it is what this machine allows: a cgroup where the trainer's
    cgroup (or its parent) passes the memory controller, the watchdog elsewhere. Breakage checked: a hello
    always saying "watchdog" (red on a machine with a delegated cgroup v2)."""
    with caplog.at_level(logging.INFO, logger="cleaner.sandbox"):
        pool = await pools.start(backend="bwrap")
    parent, reason = backends.cgroup_parent()
    isolation = pool.isolation
    assert isolation["memory_limit"] == ("cgroup" if parent else "watchdog")
    assert isolation["cgroup_reason"] == reason
    assert isolation["seccomp"] is (os.uname().machine in ("x86_64", "aarch64"))
    assert isolation["scratch_quota"] is True and isolation["preloaded"] == []
    assert any('"memory_limit": "%s"' % isolation["memory_limit"] in r.getMessage() for r in caplog.records)


async def test_bwrap_auto_picks_bwrap_without_a_warning_when_it_works(pools, caplog):
    with caplog.at_level(logging.WARNING, logger="cleaner.sandbox"):
        pool = await pools.start(backend="auto")
    if pool.uid_isolation is False:
        pytest.skip("cells share the trainer's uid here (not root); the pool warns about it by design")
    assert pool.backend == "bwrap"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert (await pool.run("print(1)")).backend == "bwrap"


async def test_bwrap_concurrency_is_bounded_by_the_number_of_workers(pools):
    pool = await pools.start(backend="bwrap", workers=2, timeout_s=5.0)
    code = "import time\nstart = time.time()\ntime.sleep(0.15)\nprint(start, time.time())"
    results = await asyncio.gather(*(pool.run(code) for _ in range(10)))
    assert [r.status for r in results] == ["ok"] * 10
    spans = [tuple(map(float, r.stdout.split())) for r in results]
    most_at_once = max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans)
    assert most_at_once == 2  # both workers were used, and never more


async def test_bwrap_callers_beyond_the_pool_wait_without_extra_processes(pools):
    pool = await pools.start(backend="bwrap", workers=1, timeout_s=5.0)
    idle = pools.idle[id(pool)]
    calls = asyncio.gather(*(pool.run("import time\ntime.sleep(0.1)") for _ in range(20)))
    counts = []
    while not calls.done():
        counts.append(len(pools.remember(pool)))
        await asyncio.sleep(0.01)
    assert [r.status for r in await calls] == ["ok"] * 20
    assert max(counts) == idle + 1  # one cell at a time; the 19 others wait in the trainer, not in the sandbox


async def test_bwrap_close_leaves_no_process_and_later_calls_are_infra_errors(pools):
    pool = await pools.start(backend="bwrap", workers=2)
    await pool.run("print(1)")
    processes = [pools.seen[p] for p in await pools.settled(pool)]
    await pool.close()
    assert not [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    after = await pool.run("print(1)")
    assert (after.status, after.stdout) == ("infra_error", "")
    assert "closed" in after.stderr


async def test_bwrap_supervisor_killed_from_outside_is_an_infra_error_and_restarts(pools):
    pool = await pools.start(backend="bwrap", timeout_s=5.0)
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
    pool = await pools.start(backend="bwrap", timeout_s=5.0)
    async with pool.session() as session:
        call = asyncio.ensure_future(session.run("import time\ntime.sleep(0.3)\nmarks = 1"))
        await asyncio.sleep(0.1)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        result = await session.run("print(marks)")
    assert (result.status, result.stdout) == ("ok", "1\n")  # the call completed once, unseen
