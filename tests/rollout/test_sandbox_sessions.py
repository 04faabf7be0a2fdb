"""A rollout with SAAR on the real sandbox: a rolled-back cell leaves no trace in the interpreter state, so the
state always equals that of the purified history."""

from __future__ import annotations

import asyncio
import random

from cleaner import chat
from cleaner.rollout.drivers import make_episodes, run_batched
from cleaner.rollout.engines import SamplingParams, ScriptedEngine
from cleaner.rollout.episode import RolloutConfig
from cleaner.saar import SaarConfig
from cleaner.rollout.tools import SandboxTools
from cleaner.sandbox import SandboxConfig, SandboxPool


def say(reasoning, code=None):
    return reasoning + (chat.hermes_call_text(code) if code is not None else "")


def test_state_after_rollback_is_the_purified_state(tok):
    scripts = {
        "q/0": [say("Set up.\n", "a = 1\nb = 1 / 0"),  # defines a, then fails: rolled back
                say("Avoid the division.\n", "c = 3\nprint(c)"),  # recovers: spliced in
                say("Check the state.\n", "print(sorted(k for k in globals() if len(k) == 1))"), "\\boxed{3}"],
        "q/1": [say("Set up.\n", "a = 1\nb = 1 / 0"), say("Again.\n", "c = 3\nprint(c)"),
                say("Check the state.\n", "print(sorted(k for k in globals() if len(k) == 1))"), "\\boxed{3}"],
    }

    async def main():
        async with SandboxPool(SandboxConfig(timeout_s=5, workers=2)) as pool:
            episodes = make_episodes(tok, [("q", [{"role": "user", "content": "q"}])], 2, RolloutConfig(), seed=0)
            episodes[1] = make_episodes(tok, [("q", [{"role": "user", "content": "q"}])], 2,
                                        RolloutConfig(saar=SaarConfig(enabled=False)), seed=0)[1]
            return await run_batched(ScriptedEngine(tok, scripts), SandboxTools(pool, 0), episodes, SamplingParams())

    purified, baseline = asyncio.run(main())
    assert [t.result.status for t in purified.turns[:2]] == ["ok", "ok"]
    assert purified.turns[1].result.output == "['c']\n"  # `a` from the rolled-back cell is gone
    assert purified.stats["rollbacks_recovered"] == 1
    # SAAR off: the failed cell stays in the context, and (by the sandbox's semantics) leaves no state either
    assert [t.result.status for t in baseline.turns[:3]] == ["error", "ok", "ok"]
    assert baseline.turns[0].result.error_type == "ZeroDivisionError"
    assert baseline.turns[2].result.output == "['c']\n"


def test_an_earlier_tool_call_cannot_hide_a_later_ones_error_or_read_a_siblings(tok):
    """On the rollout path: in one trajectory, call 1 makes every later `exec` a no-op (what a policy could learn,
    to hide its errors from SAAR and the failure metrics); call 2 fails; call 3 recovers. Call 2 must be reported
    as its error (SAAR off), and SAAR must see and roll it back (on). A sibling trajectory on the same worker
    prints a secret it computed; the trajectory's last call scans its memory for it and must not find it. Seen to
    fail before cells were run and judged where earlier cells cannot reach (call 2 ok), and before sessions' first
    states came from a process that never held another call's output."""
    plant = "import builtins\nbuiltins.exec = lambda *args, **kwargs: None"
    scan = ("import re\npattern = re.compile(bytes.fromhex('534543524554') + rb'[0-9]{21}')\nfound = set()\n"
            "try:\n    import ctypes\n"
            "    for line in open('/proc/self/maps').read().splitlines():\n"
            "        fields = line.split()\n"
            "        if fields[1].startswith('rw') and (len(fields) == 5 or fields[5] == '[heap]'):\n"
            "            low, high = (int(x, 16) for x in fields[0].split('-'))\n"
            "            found.update(pattern.findall(ctypes.string_at(low, high - low)))\n"
            "except PermissionError:\n    print('refused')\nprint(sorted(found))")
    secret = f"SECRET{random.randrange(10 ** 20, 10 ** 21)}"
    secret_code = f"print({secret[::-1]!r}[::-1])"
    scripts = {
        "q/0": [say("Plant.\n", plant), say("Fail.\n", "1 / 0"), say("Recover.\n", "print(2)"),
                say("Scan.\n", scan), "\\boxed{2}"],
        "q/1": [say("Honest sibling.\n", secret_code), "\\boxed{2}"],
    }

    async def main(saar):
        async with SandboxPool(SandboxConfig(timeout_s=5, workers=1)) as pool:
            episodes = make_episodes(tok, [("q", [{"role": "user", "content": "q"}])], 2,
                                     RolloutConfig(saar=SaarConfig(enabled=saar)), seed=0)
            return await run_batched(ScriptedEngine(tok, scripts), SandboxTools(pool, 0), episodes, SamplingParams())

    baseline, sibling = asyncio.run(main(False))
    purified, _sibling = asyncio.run(main(True))
    assert [t.result.status for t in baseline.turns[:3]] == ["ok", "error", "ok"]
    assert baseline.turns[1].result.error_type == "ZeroDivisionError"
    assert purified.stats["rollbacks_recovered"] == 1
    assert sibling.turns[0].result.output == secret + "\n"
    assert secret not in baseline.turns[3].result.output
