"""The supervisor alone decides a call's result: what it observes (the clock, limits, signals, the exit status)
comes first, "ok" needs a clean exit it saw, a cell's report carries only what a script can choose (an exception
or not, and its class name) and is checked, and whatever a cell does is classified, never raised.

Each test runs hostile cells through the `hostile` fixture (no process left behind, the next call works) and checks
on the host side that the worker's supervisor is the same process afterwards and that a bystander session on the
same worker kept its state."""

from __future__ import annotations

import json

import pytest


pytestmark = pytest.mark.asyncio

# Writes a report frame claiming success to every file descriptor a cell might report on (3-39), then runs TAIL.
FORGE = (
    "import json, os, struct\n"
    "frame = json.dumps({report}).encode()\n"
    "for fd in range(3, 40):\n"
    "    try:\n"
    "        os.write(fd, struct.pack('>I', len(frame)) + frame)\n"
    "    except OSError:\n"
    "        pass\n"
)
OK_REPORT = '{"status": "ok", "error_type": None}'


def forge(tail: str, report: str = OK_REPORT) -> str:
    return FORGE.format(report=report) + tail


async def bystander(pool):
    """A session with state on the pool's (only) worker; `check()` asserts it is intact."""
    session = pool.session()
    assert (await session.run("kept = 'intact'")).status == "ok"

    async def check() -> None:
        result = await session.run("print(kept)")
        assert (result.status, result.stdout) == ("ok", "intact\n"), result
        await session.close()

    return check


async def test_bwrap_death_by_a_signal_python_cannot_name_is_the_cells_error(bwrap_pool, hostile, host):
    """Signals 32-63 (real-time; Python's signal.Signals names only 34 and 64) once crashed the supervisor: every
    session of the worker lost its state and the call was an infra_error, not charged to the model. Breakages
    checked: `_signal_name` without its fallback (the supervisor dies, infra_error)."""
    check = await bystander(bwrap_pool)
    supervisor = host.zygote(bwrap_pool)
    for sig, name in [(33, "SIG33"), (34, "SIGRTMIN"), (40, "SIG40"), (63, "SIG63")]:
        result = await hostile(bwrap_pool, f"import os\nprint('before', flush=True)\nos.kill(os.getpid(), {sig})")
        assert (result.status, result.error_type, result.stdout) == ("error", name, "before\n"), result
        assert f"killed by signal {name}" in result.stderr
    async with bwrap_pool.session() as session:  # the same in a session, where the cell was its holder
        await session.run("x = 1")
        result = await session.run("import os\nos.kill(os.getpid(), 45)")
        assert (result.status, result.error_type) == ("error", "SIG45")
        assert (await session.run("print(x)")).stdout == "1\n"
    assert host.zygote(bwrap_pool).pid == supervisor.pid and supervisor.is_running()
    await check()


async def test_bwrap_a_forged_success_report_does_not_override_what_the_cell_did(bwrap_pool, hostile):
    """A cell writing report frames to its descriptors, then raising, hanging, exiting non-zero or being killed:
    the supervisor's observation decides (the first frame used to win). Breakages checked: accepting the first
    frame (`_one_frame` without its length check: ok), `_classify` taking the report before what it observed
    (ok for the hang)."""
    check = await bystander(bwrap_pool)
    cases = [
        (forge("raise ValueError('after the forged report')"), ("error", "SandboxProtocolError")),
        (forge("while True:\n    pass"), ("timeout", None)),
        (forge("import os\nos._exit(3)"), ("error", "SystemExit")),
        (forge("import signal\nos.kill(os.getpid(), signal.SIGTERM)"), ("error", "SIGTERM")),
        (forge("import time\ntime.sleep(5)"), ("timeout", None)),
    ]
    for code, expected in cases:
        result = await hostile(bwrap_pool, code)
        assert (result.status, result.error_type) == expected, (code, result)
    result = await hostile(bwrap_pool, forge("raise ValueError('x')"))
    assert result.stderr.rstrip().endswith("SandboxProtocolError: the cell wrote to the sandbox's result channel; "
                                           "its result is void")
    await check()


async def test_bwrap_reported_fields_are_checked(bwrap_pool, hostile):
    """A report with fields a cell may not report (a list, a lone surrogate, a huge or non-identifier
    error_type, a status only the supervisor gives, extra keys, garbage, invalid UTF-8, JSON nested deeper than
    the parser's stack), alone on the channel and followed by a clean exit, voids the result; the result is
    always valid text that JSONL can hold. Breakages checked: `_valid_report` returning its input (the list
    reached ExecutionResult: ValueError in the pool), `_one_frame` without catching RecursionError (a fault of
    the supervisor: SandboxFault)."""
    check = await bystander(bwrap_pool)
    exit_clean = "os._exit(0)"
    reports = [
        '{"status": "error", "error_type": [1, 2]}',
        '{"status": "error", "error_type": "\\\\ud800"}',
        '{"status": "error", "error_type": "E" * 10000}',
        '{"status": "error", "error_type": "not an identifier"}',
        '{"status": "infra_error", "error_type": None}',
        '{"status": "timeout", "error_type": None}',
        '{"status": "ok", "error_type": None, "holder": 1, "extra": True}',
        '{"status": ["ok"], "error_type": None}',
        '"ok"',
    ]
    for report in reports:
        result = await hostile(bwrap_pool, forge(exit_clean, report))
        assert (result.status, result.error_type) == ("error", "SandboxProtocolError"), (report, result)
        json.dumps(result.to_dict(), ensure_ascii=False).encode("utf-8")  # what the JSONL writer does
    for body in ['b\'{"status": "ok", "error_type": "\\xff\\xfe"}\'', "b'[' * 2000 + b']' * 2000"]:
        raw = (f"import os, struct\nbody = {body}\nfor fd in range(3, 40):\n    try:\n"
               "        os.write(fd, struct.pack('>I', len(body)) + body)\n    except OSError:\n        pass\n"
               "os._exit(0)")
        result = await hostile(bwrap_pool, raw)
        assert (result.status, result.error_type) == ("error", "SandboxProtocolError"), (body, result)
    await check()


async def test_bwrap_ok_needs_a_clean_exit_the_supervisor_saw(bwrap_pool, hostile):
    """The cell's own code finishes and the sandbox's report is sent, but a profile hook kills the process as it
    calls _exit: not a clean exit, so not ok (the report used to be enough). Breakages checked: `_classify`
    consulting the report before the exit status (ok)."""
    code = (
        "import os, signal, sys\n"
        "def hook(frame, event, arg):\n"
        "    if event == 'c_call' and getattr(arg, '__name__', '') == '_exit':\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "sys.setprofile(hook)\n"
        "print('finished')\n"
    )
    result = await hostile(bwrap_pool, code)
    assert (result.status, result.error_type, result.stdout) == ("error", "SIGKILL", "finished\n"), result


@pytest.mark.parametrize(("value", "expected"), [
    ("", ("ok", None)),
    ("0", ("ok", None)),
    ("None", ("ok", None)),
    ("False", ("ok", None)),  # as CPython: bool is an int, so the process would exit with status 0
    ("type('Z', (int,), {'__eq__': lambda s, o: False})(0)", ("ok", None)),  # an int of value 0, whatever == says
    ("0.0", ("error", "SystemExit")),
    ("'0'", ("error", "SystemExit")),
    ("type('Q', (), {'__eq__': lambda s, o: True})()", ("error", "SystemExit")),  # == 0, but not an int
    ("256", ("error", "SystemExit")),
    ("True", ("error", "SystemExit")),
])
async def test_bwrap_system_exit_is_clean_only_for_an_integer_zero(bwrap_pool, value, expected):
    """sys.exit(x) is ok exactly when CPython would end a script with status 0 for it (None or an int of value 0),
    and no method of the model's object is called to decide. Breakages checked: `exc.code == 0` (0.0 and the
    always-equal object were ok), `type(code) is int` (False and the int subclass were errors)."""
    result = await bwrap_pool.run(f"import sys\nsys.exit({value})")
    assert (result.status, result.error_type) == expected, result


async def test_bwrap_the_wall_clock_limit_is_the_configured_one(pools, hostile):
    """timeout_s is enforced at its value, not at some multiple: a cell sleeping 1.5 x timeout_s is stopped, one
    sleeping 0.5 x finishes, in a one-off call and in a session (whose control steps do not eat into it).
    Breakages checked: the deadline at 3 x timeout_s (the 1.5 x sleeper finished: ok), at 0.4 x (the 0.5 x
    sleeper timed out)."""
    pool = await pools.start(backend="bwrap", timeout_s=1.0)
    slow, quick = "import time\ntime.sleep(1.5)\nprint('late')", "import time\ntime.sleep(0.5)\nprint('in time')"
    late = await hostile(pool, slow)
    assert (late.status, late.stdout) == ("timeout", ""), late
    assert "did not finish within 1 s" in late.stderr
    assert (await hostile(pool, quick)).stdout == "in time\n"
    async with pool.session() as session:
        assert (await session.run("x = 1")).status == "ok"
        late = await session.run(slow)
        assert (late.status, late.stdout) == ("timeout", ""), late
        on_time = await session.run(quick)
        assert (on_time.status, on_time.stdout) == ("ok", "in time\n"), on_time
