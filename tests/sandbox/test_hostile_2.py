"""The second hostile battery: one call, session or trajectory reaching another, or deciding more than
its own result. Each test is judged from the host: the ExecutionResult the trainer gets for a call that was not
given the secret, wall time measured around the call, /proc, random tokens only the test knows.

Classes: (1) a call reading earlier callers' output from memory it inherited; (2) calls and sessions of one
worker talking over sockets; (3) an earlier cell deciding a later cell's verdict; (4) resources: the backup's
memory, clean-up on the request path, a previous call's files, grace periods outside timeout_s, forged holders."""

from __future__ import annotations

import asyncio
import os
import random
import time
import uuid

import psutil
import pytest

from tests.sandbox.conftest import zygote

pytestmark = pytest.mark.asyncio


def secret() -> str:
    return f"LEAK{uuid.uuid4().hex}"


# -- (1) heap isolation --------------------------------------------------------------------------------------------

# Searches its own heap and anonymous mappings for "LEAK" + 32 hex digits (the literal is not in this code).
SCAN_OWN_MEMORY = (
    "import ctypes, re\n"
    "pattern = re.compile(bytes.fromhex('4c45414b') + rb'[0-9a-f]{32}')\n"
    "found = set()\n"
    "for line in open('/proc/self/maps').read().splitlines():\n"
    "    fields = line.split()\n"
    "    if fields[1].startswith('rw') and (len(fields) == 5 or fields[5] == '[heap]'):\n"
    "        low, high = (int(x, 16) for x in fields[0].split('-'))\n"
    "        found.update(pattern.findall(ctypes.string_at(low, high - low)))\n"
    "print(sorted(found))\n"
)


def found_in_memory(pid: int, token: str) -> bool:
    """Whether `token` is in the writable memory of process `pid`, read by the host through /proc (as root)."""
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        for line in maps:
            fields = line.split()
            if not fields[1].startswith("rw"):
                continue
            low, high = (int(x, 16) for x in fields[0].split("-"))
            try:
                mem.seek(low)
                if token.encode() in mem.read(high - low):
                    return True
            except OSError:  # a guard page, or a mapping gone meanwhile
                continue
    return False


@pytest.mark.skipif(os.geteuid() != 0, reason="reads the sandbox's processes' memory through /proc (root)")
async def test_bwrap_a_later_call_cannot_read_an_earlier_calls_output_from_its_memory(bwrap_pool):
    """An honest call prints a secret (built at run time: not in any later call's code); a later one-off call
    scans its own memory (from inside, with ctypes); then, from the host, no process of the worker but the zygote
    (which relayed the reply) holds the secret: not the template, not a new session's state after a cell. The
    host's scan is shown to work on a second secret a session keeps. Seen to fail when cells were forks of the
    zygote."""
    token, kept = secret(), secret()
    honest = await bwrap_pool.run(f"print({token[::-1]!r}[::-1])")
    assert (honest.status, honest.stdout) == ("ok", token + "\n"), honest
    scanned = await bwrap_pool.run(SCAN_OWN_MEMORY)
    assert scanned.status == "ok" and token not in scanned.stdout, scanned
    async with bwrap_pool.session() as fresh, bwrap_pool.session() as keeper:
        assert (await fresh.run("x = 1")).status == "ok"
        assert (await keeper.run(f"kept = {kept[::-1]!r}[::-1]")).status == "ok"
        others = [p.pid for p in zygote(bwrap_pool).children(recursive=True)]
        assert [pid for pid in others if found_in_memory(pid, kept)], others
        assert not [pid for pid in others if found_in_memory(pid, token)]


# -- (2) sockets between calls and sessions ------------------------------------------------------------------------


async def test_bwrap_two_sessions_cannot_talk_over_an_abstract_unix_socket(bwrap_pool):
    """Session A keeps a listening abstract unix socket in its state; session B connects and sends a secret that
    only B's code holds; A's next cell accepts. The secret must not reach A's result. Seen to fail before the
    seccomp filter refused socket(): A's third result held B's secret."""
    name, token = f"\0cleaner-{uuid.uuid4().hex}", secret()
    async with bwrap_pool.session() as a, bwrap_pool.session() as b:
        await a.run(f"import socket\nserver = socket.socket(socket.AF_UNIX)\nserver.bind({name!r})\nserver.listen()")
        await b.run(f"import socket\nc = socket.socket(socket.AF_UNIX)\nc.connect({name!r})\n"
                    f"c.sendall({token!r}.encode())")
        received = await a.run("conn, _ = server.accept()\nconn.settimeout(0.5)\nprint(conn.recv(100))")
    assert token not in received.stdout, received


async def test_bwrap_a_one_off_call_cannot_send_to_a_session_over_loopback_tcp(bwrap_pool):
    """The same over 127.0.0.1 in the worker's network namespace: a session listens on a port, a one-off call
    connects and sends a secret. Seen to fail before the seccomp filter refused socket()."""
    port, token = random.randrange(20000, 60000), secret()
    async with bwrap_pool.session() as a:
        await a.run(f"import socket\nserver = socket.create_server(('127.0.0.1', {port}))")
        await bwrap_pool.run(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=0.5)"
                             f".sendall({token!r}.encode())")
        received = await a.run("conn, _ = server.accept()\nconn.settimeout(0.5)\nprint(conn.recv(100))")
    assert token not in received.stdout, received


# -- (3) verdict forging -------------------------------------------------------------------------------------------


# What a planted hook does to end a later cell early with a clean exit, which the runner would judge "ok".
EXIT_OK = "def exit_ok(*args, **kwargs):\n    raise SystemExit(0)\n"

# Run by a cell: replace, in the globals of every frame below it (the sandbox's own code), `names` by `value`.
SWAP_IN_FRAMES = (
    "import sys\n"
    "frame = sys._getframe()\n"
    "while frame is not None:\n"
    "    for name in {names!r}:\n"
    "        if name in frame.f_globals:\n"
    "            frame.f_globals[name] = {value}\n"
    "    frame = frame.f_back\n"
)


async def session_error_after(pool, *earlier: str, later: str = "1 / 0"):
    """The result of `later` in a session whose earlier cells were `earlier` (each must be ok)."""
    async with pool.session() as session:
        for code in earlier:
            result = await session.run(code)
            assert result.status == "ok", result
        return await session.run(later)


async def test_bwrap_an_earlier_cell_cannot_make_a_later_cells_error_ok(bwrap_pool):
    """Cell 1 replaces builtins.exec, which the runner used to run every later cell of the session: cell 2's
    ZeroDivisionError must still be an error. Seen to fail when the runner looked exec up (ok)."""
    result = await session_error_after(bwrap_pool, "import builtins\nbuiltins.exec = lambda *args, **kwargs: None")
    assert (result.status, result.error_type) == ("error", "ZeroDivisionError"), result


async def test_bwrap_a_runner_swapped_through_the_frames_does_not_judge_a_later_cell(bwrap_pool):
    """Cell 1 walks the frames below it to the sandbox's code and replaces its cell runners (every name they ever
    had) in its globals by one that says "ok". Seen to fail when the holder looked its runner up there (ok)."""
    swap = EXIT_OK + SWAP_IN_FRAMES.format(names=["_cell", "_run_cell_code", "_judged_cell", "_after_cell"],
                                           value="lambda *args, **kwargs: ('ok', None, None)")
    result = await session_error_after(bwrap_pool, swap)
    assert (result.status, result.error_type) == ("error", "ZeroDivisionError"), result


@pytest.mark.parametrize("plant", [
    pytest.param("import builtins\nbuiltins.print = exit_ok", id="a builtin"),
    pytest.param("import signal\nsignal.signal(signal.SIGALRM, exit_ok)\n"  # a fork keeps no timer: one is set by
                 "def planted(*args, **kwargs):\n    signal.setitimer(signal.ITIMER_REAL, 0.3)\n"  # the holder itself
                 + SWAP_IN_FRAMES.format(names=["_use_scratch"], value="planted"), id="a signal handler and a timer"),
    pytest.param("import sys\nsys.stdout.write = exit_ok", id="the stdout object"),
    pytest.param("import gc, builtins\ngc.disable()\n"
                 "class Planted:\n    def __del__(self):\n        builtins.print = exit_ok\n"
                 "planted = Planted()\nplanted.cycle = planted\ndel planted",
                 id="a finalizer of garbage"),
])
async def test_bwrap_code_an_earlier_cell_planted_cannot_end_a_later_cell_as_ok(bwrap_pool, plant):
    """Cell 1 plants code that the interpreter runs by itself during a later cell (the later cell calls nothing
    of cell 1's by name), and which raises SystemExit(0): a clean end, "ok", with the cell's partial state kept.
    Cell 2 sleeps past the timer, collects garbage, prints, then fails: it must be reported as the error it is.
    Seen to fail before the sandbox restored the interpreter's entry points before each cell (ok)."""
    later = "import gc, time\ntime.sleep(0.6)\ngc.collect()\nprint('reached')\n1 / 0"
    result = await session_error_after(bwrap_pool, EXIT_OK + plant, later=later)
    assert (result.status, result.error_type) == ("error", "ZeroDivisionError"), result


async def test_bwrap_a_signal_handler_an_earlier_cell_left_cannot_turn_a_cpu_time_out_into_ok(pools):
    """Cell 1 makes SIGXCPU (the CPU-time limit's signal) end a cell cleanly; cell 2 spins until the limit: its
    result must be the time-out. Seen to fail when the handlers were not restored before each cell (ok)."""
    pool = await pools.start(backend="bwrap", cpu_time_s=1.0, timeout_s=5.0)
    result = await session_error_after(pool, EXIT_OK + "import signal\nsignal.signal(signal.SIGXCPU, exit_ok)",
                                       later="while True:\n    pass")
    assert result.status == "timeout", result


async def test_bwrap_a_thread_planted_before_a_cell_keeps_the_cell_from_starting(bwrap_pool):
    """Cell 1 replaces a function the holder calls before the cell's go by one that starts a thread, which replaces
    print during cell 2 and stays. The zygote sends the go only to a holder with one thread, so cell 2 never
    starts, and its call times out (the model's state took it). Seen to fail when the go went to any holder (ok)."""
    plant = EXIT_OK + (
        "import threading, time, builtins\n"
        "def plant_print():\n"
        "    time.sleep(0.2)\n"
        "    builtins.print = exit_ok\n"
        "    time.sleep(10)\n"
        "def planted(*args, **kwargs):\n"
        "    threading.Thread(target=plant_print, daemon=True).start()\n"
    ) + SWAP_IN_FRAMES.format(names=["_use_scratch"], value="planted")
    result = await session_error_after(bwrap_pool, plant, later="import time\ntime.sleep(0.5)\nprint(1)\n1 / 0")
    assert result.status == "timeout" and "did not even start it" in result.stderr, result


async def test_bwrap_descriptors_swapped_before_a_cell_fail_it_closed(bwrap_pool):
    """Cell 1 replaces a function the holder calls before the go by one that puts /dev/null on every pipe the
    holder holds (the call's stdout, stderr and result channel). The cell must not run: SessionTampered. Seen to
    fail when the holder did not check its descriptors (SystemExit: no report)."""
    plant = (
        "import os, stat\n"
        "def planted(*args, **kwargs):\n"
        "    for fd in range(3, 64):\n"
        "        try:\n"
        "            if stat.S_ISFIFO(os.fstat(fd).st_mode):\n"
        "                os.dup2(os.open(os.devnull, os.O_RDWR), fd)\n"
        "        except OSError:\n"
        "            pass\n"
    ) + SWAP_IN_FRAMES.format(names=["_use_scratch"], value="planted")
    result = await session_error_after(bwrap_pool, plant)
    assert (result.status, result.error_type) == ("error", "SessionTampered"), result


@pytest.mark.parametrize("code", [
    pytest.param("import sys\nsys.settrace(lambda *args: None)", id="a tracer"),
    pytest.param("import sys\nsys.setprofile(lambda *args: None)", id="a profiler"),
    pytest.param("import sys\nran = []\nsys.addaudithook(lambda event, args: ran.append(event))\nexec('pass')\n"
                 "if not ran:\n    raise PermissionError('the hook was not added')",  # Python drops it silently
                 id="an audit hook"),
    pytest.param("import ctypes\nctypes.string_at(id(1), 8)", id="ctypes"),
    pytest.param("(lambda: 0).__code__.replace(co_name='x')", id="a code object"),
    # (opening /proc/self/mem itself is refused by the kernel to a cell under a uid of its own, not dumpable)
    pytest.param("import os\nos.symlink('/proc/self/mem', 'x')", id="a link to /proc/self/mem"),
    pytest.param("import sys\n" + SWAP_IN_FRAMES.replace("frame.f_globals[name] = {value}",
                                                           "frame.f_globals[name].__defaults__ = ()").format(
                     names=["_holder_loop", "_judged_cell"]), id="the sandbox's defaults"),
])
async def test_bwrap_a_session_refuses_what_reaches_the_runner(bwrap_pool, code):
    """What would let a cell reach the code that runs and judges its session's later cells is refused in sessions
    (PermissionError); one-off calls, which have no later cell, keep it, and so do the look-alikes model code
    uses (a namedtuple with defaults sets __defaults__ of its own function)."""
    async with bwrap_pool.session() as session:
        refused = await session.run(code)
        allowed = await session.run("import collections\ncollections.namedtuple('P', 'x', defaults=(0,))()")
    assert (refused.status, refused.error_type) == ("error", "PermissionError"), refused
    assert allowed.status == "ok", allowed
    if "ctypes" in code or "settrace" in code:
        assert (await bwrap_pool.run(code)).status == "ok"


async def test_bwrap_a_failing_cell_cannot_write_into_the_backup_of_its_state(bwrap_pool):
    """Cell 1 makes its process dumpable again (PR_SET_DUMPABLE), so that the backup forked for the next call
    would be too; cell 2, the backup's parent under the same uid, writes into the backup's copy of a bytes object
    through /proc/<pid>/mem, then fails. The failed cell must leave no trace: cell 3 sees the object unchanged.
    Seen to fail before a dumpable process was refused as a session's holder or backup (b'BBBB')."""
    token = uuid.uuid4().hex
    async with bwrap_pool.session() as session:
        await session.run(f"marker = b'AAAA{token}'")
        await session.run("import ctypes\nctypes.CDLL(None).prctl(4, 1, 0, 0, 0)")  # refused: SessionLost
        await session.run(
            "import os\n"
            "for pid in open(f'/proc/self/task/{os.getpid()}/children').read().split():\n"
            "    try:\n"
            "        with open(f'/proc/{pid}/mem', 'r+b', buffering=0) as mem:\n"
            "            mem.seek(id(marker) + 32)\n"  # ob_sval of a bytes object (64-bit CPython)
            "            mem.write(b'BBBB')\n"
            "    except OSError:\n"
            "        pass\n"
            "raise ValueError\n")
        after = await session.run("print(marker[:4])")
    assert (after.status, after.stdout) == ("ok", "b'AAAA'\n"), after


# -- (4) resources -------------------------------------------------------------------------------------------------


async def test_bwrap_the_backup_of_a_sessions_state_counts_against_the_calls_memory(pools):
    """Cell 1 keeps 140 MiB; cell 2 writes to every page of it, so the cell and the backup of the state before it
    hold 140 MiB each: 280 MiB and more for the call, over a 256 MiB limit. Seen to fail when the watchdog left
    the backup out (ok)."""
    pool = await pools.start(backend="bwrap", memory_mb=256, timeout_s=5.0)
    async with pool.session() as session:
        kept = await session.run("x = bytearray(b'\\x01') * (140 << 20)")
        assert kept.status == "ok", kept
        touched = await session.run("for i in range(0, len(x), 4096):\n    x[i] = 2\nimport time\ntime.sleep(0.5)")
    assert touched.status == "memory_limit", touched


# Makes empty directories for about 0.8 s from two processes: what `rm -rf` takes longer to remove.
MANY_DIRECTORIES = (
    "import os, time\n"
    "start = time.monotonic()\n"
    "os.fork()\n"
    "os.mkdir(str(os.getpid()))\n"
    "os.chdir(str(os.getpid()))\n"
    "while time.monotonic() - start < 0.8:\n"
    "    for _ in range(500):\n"
    "        os.mkdir('d')\n"
    "        os.chdir('d')\n"
)


async def test_bwrap_clean_up_of_a_call_does_not_delay_the_next_one(pools, host):
    """A call leaves some 200k directories; the next trivial call must not wait for their removal, and they are
    still removed, between calls (the worker's /tmp, seen from the host, holds nothing afterwards). Seen to fail
    when the removal ran before the next request was read (the next call took about 2-5 s on a 2-core machine)."""
    pool = await pools.start(backend="bwrap", timeout_s=2.0)
    await pool.run(MANY_DIRECTORIES)
    started = time.monotonic()
    following = await pool.run("pass")
    elapsed = time.monotonic() - started
    assert following.status == "ok", following
    assert elapsed < 0.5, f"the next call took {elapsed:.2f} s"
    tmp = f"/proc/{host.zygote(pool).pid}/root/tmp"
    deadline = time.monotonic() + 30.0
    while os.listdir(f"{tmp}/.trash") and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert (os.listdir(tmp), os.listdir(f"{tmp}/.trash")) == ([".trash"], [])


async def test_bwrap_a_previous_one_off_calls_files_are_never_readable(pools):
    """A one-off call writes a secret next to a tree slow to remove (the removal used to be killed at its
    deadline, leaving the rest); the next one-off call (same uid) looks for it in every scratch directory name.
    Seen to fail when a clean-up killed at its time-out left the file there (the next call printed it)."""
    pool = await pools.start(backend="bwrap", timeout_s=1.0)
    token = secret()
    write = f"open('first.txt', 'w').write({token[::-1]!r}[::-1])\n"
    last = f"open(os.environ['HOME'] + '/last.txt', 'w').write({token[::-1]!r}[::-1])\n"
    await pool.run(write + MANY_DIRECTORIES.replace("os.fork()\n", "os.fork()\nos.fork()\n") + last)
    look = await pool.run(
        "import glob\n"
        "for path in glob.glob('/tmp/*/*.txt') + glob.glob('/tmp/*/*/*.txt') + glob.glob('/tmp/.*/*/*.txt'):\n"
        "    try:\n"
        "        print(open(path).read())\n"
        "    except OSError:\n"
        "        pass\n"
        "for i in range(1, 50):\n"
        "    for name in ('first.txt', 'last.txt'):\n"
        "        try:\n"
        "            print(open(f'/tmp/cell-{i}/{name}').read())\n"
        "        except OSError:\n"
        "            pass\n")
    assert look.status == "ok", look
    assert token not in look.stdout, look


async def test_bwrap_the_removal_of_a_previous_calls_files_does_not_raise_the_next_calls_quota(pools):
    """A call fills its 32 MiB scratch quota with empty directories (1 KiB each) and is stopped; while they are
    removed in the background, the next call writes 40 MB after a pause. The removal must not be credited to it:
    over the quota (memory_limit). Seen to fail when the remover ran during calls (ok: the freed directories
    offset the call's own 40 MB)."""
    pool = await pools.start(backend="bwrap", max_scratch_mb=32, memory_mb=512, timeout_s=3.0)
    filled = await pool.run("import os\nfor i in range(10 ** 6):\n    os.mkdir(str(i))")
    assert filled.status == "memory_limit", filled
    result = await pool.run("import time\ntime.sleep(0.6)\n"
                            "for i in range(4):\n    open(f'{i}.bin', 'wb').write(b'x' * (10 << 20))\n"
                            "time.sleep(0.2)\nprint('kept')")
    assert (result.status, result.stdout) == ("memory_limit", ""), result


@pytest.mark.parametrize("handshake_s", [0.6, 1.5])
async def test_bwrap_a_sessions_wall_time_includes_the_handshake(pools, handshake_s):
    """Cell 1 makes the state's process sleep when it is thawed (a SIGCONT handler); cell 2 sleeps 0.7 s. Under a
    1 s limit, the call must end within it (plus a margin) as a timeout: whether the handshake alone takes longer
    than the limit (1.5 s) or the handshake and the cell together (0.6 s + 0.7 s). Seen to fail when the holder's
    2 s grace was outside timeout_s and the cell's clock started after it (ok after about 2.2 s and 1.3 s)."""
    pool = await pools.start(backend="bwrap", timeout_s=1.0)
    async with pool.session() as session:
        await session.run(f"import signal, time\nsignal.signal(signal.SIGCONT, lambda *a: time.sleep({handshake_s}))")
        started = time.monotonic()
        result = await session.run("import time\ntime.sleep(0.7)")
        elapsed = time.monotonic() - started
    assert elapsed < 1.0 + 0.5, f"{elapsed:.2f} s under a 1 s limit: {result}"
    assert result.status == "timeout", result


async def test_bwrap_a_child_named_as_the_holder_in_a_forged_report_does_not_survive(
        bwrap_pool, forged_holder_report):
    """A session cell forks a child (its own, in its process group, as a real successor is) that names itself
    with a random token and spins, then names it in a forged report. The child must not outlive the call (it
    used to be kept, frozen, as the session's holder, and ran again at the next call)."""
    token = uuid.uuid4().hex[:12]  # /proc/<pid>/comm keeps 15 characters
    code = (
        "import ctypes, json, os, struct\n"
        "child = os.fork()\n"
        "if child == 0:\n"
        f"    ctypes.CDLL(None).prctl(15, {token.encode()!r}, 0, 0, 0)\n"  # PR_SET_NAME
        "    while True:\n"
        "        pass\n"
        "import time\n"
        "time.sleep(0.1)\n"  # the child names itself
        + forged_holder_report
    )
    async with bwrap_pool.session() as session:
        await session.run("x = 1")
        await session.run(code)
        await asyncio.sleep(0.1)
        survivors = [p.pid for p in psutil.process_iter(["name"]) if p.info["name"] == token]
        after = await session.run("print(x)")
    assert survivors == [], survivors
    assert (after.status, after.stdout) == ("ok", "1\n"), after
