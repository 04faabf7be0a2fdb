"""A cell cannot crash or stall the supervisor, nor make a process survive its call: every exchange with a
session's processes has a deadline, a pid is accepted only from the expected parent in the expected process group,
holders are frozen between calls, and a session broken by its own cell is reset without touching others.

Host-side checks: the worker's supervisor is the same process throughout, a bystander session on the same worker
keeps its state, processes found by their command line are gone, CPU time used while no call runs."""

from __future__ import annotations

import asyncio
import uuid

import psutil
import pytest

pytestmark = pytest.mark.asyncio

# SIGSTOPs every other process of the cell's uid: in a session, the process holding the session's state.
STOP_OTHERS = (
    "import os, signal\n"
    "for pid in map(int, filter(str.isdigit, os.listdir('/proc'))):\n"
    "    if pid != os.getpid():\n"
    "        try:\n"
    "            os.kill(pid, signal.SIGSTOP)\n"
    "        except OSError:\n"
    "            pass\n"
)


async def test_bwrap_a_cell_that_stops_its_sessions_processes_stalls_nothing(bwrap_pool, host):
    """A stopped state holder used to block the supervisor (a send without deadline, then a ~20 s wait) and lose
    the session. Holders are frozen between calls anyway and thawed for the next one, so the session goes on
    with its state. Breakages checked: no SIGCONT before the request (SessionLost after the grace time)."""
    supervisor = host.zygote(bwrap_pool)
    async with bwrap_pool.session() as session, bwrap_pool.session() as bystander:
        await bystander.run("kept = 'intact'")
        await session.run("x = 1")
        stopped_ok = await session.run(STOP_OTHERS + "y = 2")
        assert stopped_ok.status == "ok", stopped_ok
        stopped_failed = await session.run(STOP_OTHERS + "raise ValueError")
        assert (stopped_failed.status, stopped_failed.error_type) == ("error", "ValueError"), stopped_failed
        after = await session.run("print(x, y)")
        assert (after.status, after.stdout) == ("ok", "1 2\n"), after
        assert (await bystander.run("print(kept)")).stdout == "intact\n"
    assert host.zygote(bwrap_pool).pid == supervisor.pid


async def test_bwrap_a_forged_successor_pid_is_refused_and_does_not_survive(
        bwrap_pool, forged_holder_report):
    """A session cell names, in a forged report, a detached process of its own as the session's next state
    holder. The supervisor accepts only the cell's own child in the cell's process group: the call is an error,
    the session keeps its state from before the cell, and the detached process is killed with the call (it used
    to be spared by the sweep as the new holder, and kept running). Breakage checked: accepting any existing pid
    as the successor (ok, and the sleeper survived as the session's holder)."""
    token = f"{uuid.uuid4().int % 10**6 + 10**6}.25"  # a unique sleep length, to find the process by argv
    code = (
        "import json, os, struct, subprocess\n"
        f"child = subprocess.Popen(['setsid', 'sleep', '{token}']).pid\n"
        + forged_holder_report
    )
    async with bwrap_pool.session() as session, bwrap_pool.session() as bystander:
        await bystander.run("kept = 'intact'")
        await session.run("x = 1")
        forged = await session.run("x = 2\n" + code)
        assert (forged.status, forged.error_type) == ("error", "SessionLost"), forged
        assert (await session.run("print(x)")).stdout == "1\n"
        survivors = [p.pid for p in psutil.process_iter(["cmdline"]) if token in (p.info["cmdline"] or [])]
        assert survivors == []
        assert (await bystander.run("print(kept)")).stdout == "intact\n"


async def test_bwrap_holders_run_no_code_between_calls(bwrap_pool, host):
    """A fork hook set by a cell runs in the process that takes over the session's state, and there spins
    forever: it used to burn a CPU between calls (a profile hook did the same, before sessions refused them).
    Holders are frozen between calls, so the sandbox uses no CPU while idle, and a would-be holder that does not
    wait for the supervisor (one thread blocked on its socket) is refused at the end of the cell that made it
    (before, the next call found it not answering): the cell is an error, the session keeps its state from before, the bystander is untouched and nothing runs.
    Breakages checked: no SIGSTOP of holders (neither when made nor by the sweep: the idle sandbox used a CPU), no
    deadline on the holder's answer (the call hung until the pool's backstop: infra_error; the handshake's
    deadline is now test_hostile_2's wall-time test)."""
    spin = (
        "import os\n"
        "def spin():\n"
        "    while True:\n"
        "        pass\n"
        "os.register_at_fork(after_in_child=spin)\n"
    )
    async with bwrap_pool.session() as session, bwrap_pool.session() as bystander:
        await bystander.run("kept = 'intact'")
        lost = await session.run(spin + "x = 1")
        assert (lost.status, lost.error_type) == ("error", "SessionLost"), lost
        before = host.cpu_s(bwrap_pool)
        await asyncio.sleep(0.5)
        assert host.cpu_s(bwrap_pool) - before < 0.1  # a spinning process would add ~0.5 s
        fresh = await session.run("print('x' in globals())")
        assert (fresh.status, fresh.stdout) == ("ok", "False\n")
        assert (await bystander.run("print(kept)")).stdout == "intact\n"
        before = host.cpu_s(bwrap_pool)
        await asyncio.sleep(0.3)
        assert host.cpu_s(bwrap_pool) - before < 0.1
