"""The lab's cold-start SFT set: tool-use trajectories in Qwen-style ChatML, some with a failed first attempt.

Each trajectory: a reasoning sentence, a hermes `<tool_call>` with the reference program, the tool's output, and
`The answer is \\boxed{N}.` With probability `bug_rate` the first call carries a realistic bug (a misspelt variable
or function name, a missing `)` or `:`), the tool's real error, a sentence about the fix, and the corrected call:
the analogue of the RA-SFT cold start, so the SFT model makes and fixes errors at a measurable rate.

Every call is run in the real sandbox, in one session per trajectory, so the observations are byte for byte what
the model will see during RL (including `<cell-N>` names in tracebacks and the 256-character cut).
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from typing import Any

from cleaner import chat
from cleaner.lab.tasks import Problem, prompts
from cleaner.sandbox import SandboxConfig, SandboxPool


REASONING = ("I will compute this with Python.\n", "Let me write a short program for it.\n",
             "A direct computation in Python gives the answer.\n", "I'll let the code do the arithmetic.\n")
FIX_REASONING = {
    "name": "The variable name is misspelt. Fixing it.\n",
    "function": "I misspelt a function name. Fixing it.\n",
    "paren": "A closing parenthesis is missing. Fixing it.\n",
    "colon": "The for statement needs a colon. Fixing it.\n",
}
_MISSPELL_FUNCTIONS = {"sum(": ("summ(", "sun("), "range(": ("rang(", "rnage("), "pow(": ("pw(", "powe("),
                       "math.lcm(": ("math.lcn(", "math.lcd("), "str(": ("stri(", "sr("), "int(": ("itn(", "inr(")}


@dataclass(frozen=True)
class Bug:
    kind: str  # a key of FIX_REASONING
    code: str


def inject_bug(problem: Problem, rng: random.Random) -> Bug:
    """A realistic bug in the problem's reference program; the kind is drawn among those that apply."""
    kinds = ["name", "function", "paren"] + (["colon"] if any(ln.startswith("for ") for ln in problem.compute) else [])
    kind = rng.choice(kinds)
    compute = list(problem.compute)
    result_line = f"print({problem.result})"
    if kind == "name":
        name = problem.result
        i = rng.randrange(1, len(name))
        typo = name[:i] + name[i + 1:] if rng.random() < 0.5 else name[:i] + name[i - 1] + name[i:]
        result_line = f"print({typo})"
    elif kind == "function":
        k = next(k for k, line in enumerate(compute) if any(f in line for f in _MISSPELL_FUNCTIONS))
        fn = next(f for f in _MISSPELL_FUNCTIONS if f in compute[k])
        compute[k] = compute[k].replace(fn, rng.choice(_MISSPELL_FUNCTIONS[fn]), 1)
    elif kind == "paren":
        k = next(k for k, line in enumerate(compute) if line.endswith(")"))
        compute[k] = compute[k][:-1]
    else:
        k = next(k for k, line in enumerate(compute) if line.startswith("for "))
        compute[k] = compute[k].rstrip(":")
    return Bug(kind, "\n".join(problem.setup + tuple(compute) + (result_line,)))


def _turn(reasoning: str, code: str) -> dict[str, str]:
    return {"role": "assistant", "content": reasoning + chat.hermes_call_text(code)}


async def _run_session(pool: SandboxPool, codes: list[str], max_chars: int,
                       open_sessions: asyncio.Semaphore) -> list[dict[str, Any]]:
    async with open_sessions, pool.session() as session:
        out = []
        for code in codes:
            r = await session.run(code)
            out.append({"role": "tool", "content": r.to_tool_result(max_chars).output, "status": r.status})
        return out


async def build_records(problems: list[Problem], bug_rate: float, seed: int, max_tool_response_chars: int = 256,
                        sandbox: SandboxConfig | None = None, verify_clean: int = 64) -> list[dict[str, Any]]:
    """Chat records `{"id", "messages", "answer", "bug"}`. Buggy trajectories run both cells in a sandbox session.
    A clean reference program prints its answer and nothing else, so its output is written directly; the first
    `verify_clean` of them are run anyway, and any difference (or a bug that does not fail) raises."""
    rng = random.Random(f"sft/{seed}")
    plans = []
    for p in problems:
        bug = inject_bug(p, rng) if rng.random() < bug_rate else None
        plans.append((p, rng.choice(REASONING), bug))
    clean = [{"role": "tool", "content": f"{p.answer}\n", "status": "ok"} for p, _, _ in plans]
    run = [k for k, (_, _, bug) in enumerate(plans) if bug is not None or k < verify_clean]
    open_sessions = asyncio.Semaphore(64)  # sessions hold a process each: keep a bounded number open
    async with SandboxPool(sandbox or SandboxConfig(timeout_s=4)) as pool:
        ran = await asyncio.gather(*(
            _run_session(pool, ([plans[k][2].code] if plans[k][2] else []) + [plans[k][0].code],
                         max_tool_response_chars, open_sessions) for k in run))
    tool_msgs: list[list[dict[str, Any]]] = [[msg] for msg in clean]
    for k, msgs in zip(run, ran):
        if msgs[-1] != clean[k]:
            raise RuntimeError(f"reference program of {plans[k][0].id} gave {msgs[-1]!r}, expected {clean[k]!r}")
        tool_msgs[k] = msgs
    records = []
    for (p, reasoning, bug), tools in zip(plans, tool_msgs):
        (_, messages), = prompts([p])
        if bug is not None:
            if tools[0]["status"] != "error":
                raise RuntimeError(f"injected {bug.kind} bug in {p.id} did not fail: {tools[0]!r}")
            messages += [_turn(reasoning, bug.code), tools[0], _turn(FIX_REASONING[bug.kind], p.code)]
        else:
            messages += [_turn(reasoning, p.code)]
        messages += [tools[-1], {"role": "assistant", "content": f"The answer is \\boxed{{{p.answer}}}."}]
        records.append({"id": p.id, "messages": messages, "answer": p.answer, "bug": bug.kind if bug else None})
    return records
