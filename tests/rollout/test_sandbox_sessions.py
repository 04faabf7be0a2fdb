"""A rollout with SAAR on the real sandbox: a rolled-back cell leaves no trace in the interpreter state, so the
state always equals that of the purified history."""

from __future__ import annotations

import asyncio

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
