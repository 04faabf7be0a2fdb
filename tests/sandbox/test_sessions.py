"""Sessions: the interpreter state is that of the successful cells only; a call is never executed twice."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from cleaner.sandbox import _zygote

pytestmark = pytest.mark.asyncio

# Prints the session's user-visible state: names and reprs of everything defined by the cells.
FINGERPRINT = (
    "print(sorted((k, repr(v)) for k, v in globals().items() "
    "if not k.startswith('__') and not callable(v) and type(v).__name__ != 'module'))"
)


async def test_bwrap_failed_cell_that_defined_variables_leaves_no_trace(bwrap_pool):
    async with bwrap_pool.session() as session:
        failed = await session.run("x = 1\ny = [2]\nraise ValueError('after defining x and y')")
        assert (failed.status, failed.error_type) == ("error", "ValueError")
        assert 'File "<cell-1>", line 3' in failed.stderr
        check = await session.run("print('x' in globals(), 'y' in globals())")
    assert (check.status, check.stdout) == ("ok", "False False\n")


async def test_bwrap_successful_cell_state_persists(bwrap_pool):
    async with bwrap_pool.session() as session:
        assert (await session.run("total = 40\ndef add(a):\n    return total + a")).status == "ok"
        result = await session.run("print(add(2))")
    assert (result.status, result.stdout) == ("ok", "42\n")


async def test_bwrap_state_after_failures_equals_the_successful_only_history(bwrap_pool):
    """Breakage checked: the backup left in the holder's process group, which becomes the cell's (killed with
    the failed cell: the state was lost)."""
    cells = [
        ("items = [1, 2]", "ok"),
        ("items.append(99)\nnew = 'partial'\n1 / 0", "error"),  # mutates existing state, then fails
        ("items.append(3)\ncount = len(items)", "ok"),
        ("items.clear()\nwhile True:\n    pass", "timeout"),
        ("items.append(4)\nhog = bytearray(8 * 1024 ** 3)", "memory_limit"),
        ("items.pop()\nprint('y' * 2_000_000)", "output_limit"),
        ("label = f'{count} items'", "ok"),
        ("del items\nimport sys\nsys.exit(2)", "error"),
    ]
    async with bwrap_pool.session() as with_failures, bwrap_pool.session() as successful_only:
        for code, expected in cells:
            assert (await with_failures.run(code)).status == expected, code
            if expected == "ok":
                assert (await successful_only.run(code)).status == "ok"
        left = await with_failures.run(FINGERPRINT)
        right = await successful_only.run(FINGERPRINT)
    assert left.status == right.status == "ok"
    assert left.stdout == right.stdout
    assert left.stdout == "[('count', '3'), ('items', '[1, 2, 3]'), ('label', \"'3 items'\")]\n"


async def test_bwrap_timed_out_cell_is_never_re_executed(bwrap_pool):
    """Each execution of the cell appends to a file in the session's scratch directory, which (unlike the
    interpreter state) is not rolled back: exactly one mark after the time-out means one execution."""
    async with bwrap_pool.session() as session:
        slow = await session.run("open('runs.txt', 'a').write('x')\nwhile True:\n    pass")
        assert slow.status == "timeout"
        failing = await session.run("open('runs.txt', 'a').write('y')\nraise RuntimeError")
        assert failing.status == "error"
        count = await session.run("print(open('runs.txt').read())")
    assert (count.status, count.stdout) == ("ok", "xy\n")


async def test_bwrap_a_cell_that_kills_every_process_it_can_reach_breaks_at_most_its_own_session(bwrap_pool):
    """A cell SIGKILLs every other process of its uid (its parent is the supervisor, root's), which takes the
    frozen copy of its state: the cell itself succeeds and its state is kept; when it fails instead, its
    session is reset, and nothing else is touched."""
    killer = ("import os, signal\nfor pid in map(int, filter(str.isdigit, os.listdir('/proc'))):\n"
              "    if pid != os.getpid():\n        try:\n            os.kill(pid, signal.SIGKILL)\n"
              "        except OSError:\n            pass\n")
    async with bwrap_pool.session() as session, bwrap_pool.session() as bystander:
        await bystander.run("kept = 'intact'")
        await session.run("a = 1")
        survived = await session.run(killer + "b = 2")
        assert survived.status == "ok", survived
        assert (await session.run("print(a, b)")).stdout == "1 2\n"
        failed = await session.run(killer + "raise ValueError")
        assert (failed.status, failed.error_type) == ("error", "ValueError"), failed
        assert "SessionLost: the cell killed the copy of its session's state" in failed.stderr
        after = await session.run("print('a' in globals())")
        assert (after.status, after.stdout) == ("ok", "False\n")
        assert (await bystander.run("print(kept)")).stdout == "intact\n"


async def test_a_copy_of_state_counts_as_kept_only_while_it_sleeps_with_no_kill_on_the_way():
    """After a failed cell the supervisor keeps the copy made before it only if the cell did not kill it; a SIGKILL
    takes effect once the process is scheduled, so "not exited yet" is not the test (under load the copy was kept
    while it died, and the next cell lost the session). A SIGKILL wakes a sleeping process at once: the copy is
    kept only while it still sleeps (stopped or blocked) with no SIGKILL pending."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        deadline = time.monotonic() + 10
        while _zygote._stat(sleeper.pid)[0] != b"S" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _zygote._frozen(sleeper.pid)
        sleeper.send_signal(signal.SIGSTOP)
        while _zygote._stat(sleeper.pid)[0] != b"T" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _zygote._frozen(sleeper.pid)
        assert not _zygote._frozen(spinner.pid)  # running, as a killed process is until it exits
        sleeper.kill()
        while _zygote._stat(sleeper.pid)[0] != b"Z" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not _zygote._frozen(sleeper.pid)
    finally:
        for process in (sleeper, spinner):
            process.kill()
            process.wait()
    assert not _zygote._frozen(sleeper.pid)  # reaped: gone


async def test_bwrap_fork_copies_the_state_without_re_execution(bwrap_pool):
    async with bwrap_pool.session() as origin:
        await origin.run("import itertools\ncounter = itertools.count()\nfirst = next(counter)\n"
                         "open('note.txt', 'w').write('from origin')")
        async with await origin.fork() as copy:
            on_copy = await copy.run("print(next(counter), open('note.txt').read())\ncopied = True")
            on_origin = await origin.run("print(next(counter), 'copied' in globals())")
    assert (on_copy.status, on_copy.stdout) == ("ok", "1 from origin\n"), on_copy  # not 2: nothing replayed
    assert (on_origin.status, on_origin.stdout) == ("ok", "1 False\n")


async def test_bwrap_cells_are_named_in_tracebacks_with_their_source(bwrap_pool):
    async with bwrap_pool.session() as session:
        await session.run("def half(n):\n    return n / 0")
        result = await session.run("half(4)")
    assert (result.status, result.error_type) == ("error", "ZeroDivisionError")
    assert result.stderr.startswith(
        'Traceback (most recent call last):\n  File "<cell-2>", line 1, in <module>\n    half(4)\n')
    assert 'File "<cell-1>", line 2, in half\n    return n / 0\n' in result.stderr


async def test_rlimit_failed_cell_leaves_no_trace_in_the_rlimit_backend_too(host):
    events, _logs = host.rlimit([("session", "kept = 'yes'"), ("session", "lost = 'no'\nundefined_name"),
                                 ("session", "print(kept, 'lost' in globals())")])
    failed, check = events[1]["result"], events[2]["result"]
    assert (failed["status"], failed["error_type"]) == ("error", "NameError")
    assert (check["status"], check["stdout"]) == ("ok", "yes False\n")


async def test_bwrap_closed_session_refuses_calls(bwrap_pool):
    session = bwrap_pool.session()
    await session.run("x = 1")
    await session.close()
    result = await session.run("print(x)")
    assert result.status == "infra_error"
    assert "session is closed" in result.stderr
