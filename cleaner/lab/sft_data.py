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
import re
from dataclasses import dataclass
from typing import Any

from cleaner import chat
from cleaner.lab.tasks import Problem, check_answer, prompts
from cleaner.sandbox import SandboxConfig, SandboxPool
from cleaner.trajectory import ToolResult


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


# -- the task set "regime" (cleaner.lab.regime) --

GIVE_UP = ("I could not get the code to run. My best guess is \\boxed{{{guess}}}.",
           "The code still fails. I will answer without it: \\boxed{{{guess}}}.")


@dataclass(frozen=True)
class RegimePlan:
    """One regime SFT trajectory before it runs: the calls (reasoning, code, the exception it must raise or None),
    and, when it gives up, the guessed answer instead of a last call that runs."""

    problem: Any
    calls: tuple[tuple[str, str, str | None], ...]
    answer: int  # what the last call prints, or the guess
    near_miss: bool
    gave_up: bool


def _draw_site(sites: tuple[Any, ...] | list[Any], rng: random.Random) -> Any:
    """A bug of a kind drawn among the kinds that apply, a name error (which applies to every program) at 0.4 the
    weight of each other kind, so that misspelt names do not crowd the others out."""
    kinds = sorted({s.kind for s in sites})
    kind = rng.choices(kinds, weights=[0.4 if k == "name" else 1.0 for k in kinds])[0]
    return rng.choice([s for s in sites if s.kind == kind])


def plan_regime(problem: Any, rng: random.Random, bug_rate: float, second_failure_rate: float, give_up_rate: float,
                near_miss_rate: float) -> RegimePlan:
    """Draw one trajectory: the program (a near miss with probability `near_miss_rate`, where the problem has one),
    then with probability `bug_rate` a first call with one of the program's bugs, with probability
    `second_failure_rate` a second call with another bug, and with probability `give_up_rate` no fix after the last
    failure (a guessed answer: a number copied from the question) instead of the program itself."""
    from cleaner.lab.regime import KINDS, apply, program

    variant = problem.variants[0]
    if len(problem.variants) > 1 and rng.random() < near_miss_rate:
        variant = rng.choice(problem.variants[1:])
    code = program(problem, variant.compute)
    reasoning = rng.choice(REASONING)
    chain = []
    if variant.sites and rng.random() < bug_rate:
        chain.append(_draw_site(variant.sites, rng))
        others = [s for s in variant.sites if s.old != chain[0].old]
        if others and rng.random() < second_failure_rate:
            chain.append(_draw_site(others, rng))
    gave_up = bool(chain) and rng.random() < give_up_rate
    calls = []
    for k, site in enumerate(chain):
        calls.append((reasoning if k == 0 else chain[k - 1].fix, apply(code, site), KINDS[site.kind]))
    answer = variant.answer
    if gave_up:
        answer = rng.choice([int(x) for x in re.findall(r"\d+", problem.question)])
    else:
        calls.append((chain[-1].fix if chain else reasoning, code, None))
    return RegimePlan(problem, tuple(calls), answer, variant is not problem.variants[0], gave_up)


async def _run_calls(pool: SandboxPool, codes: list[str], max_chars: int, open_sessions: asyncio.Semaphore) -> list:
    async with open_sessions, pool.session() as session:
        return [(await session.run(code)).to_tool_result(max_chars) for code in codes]


async def build_regime_records(problems: list[Any], seed: int, bug_rate: float, second_failure_rate: float,
                               give_up_rate: float, near_miss_rate: float, max_tool_response_chars: int = 256,
                               sandbox: SandboxConfig | None = None, verify_clean: int = 64) -> list[dict[str, Any]]:
    """Chat records `{"id", "messages", "answer", "bugs", "near_miss", "gave_up"}` of the task set "regime" (rates
    as in `plan_regime`). A trajectory with a failed call runs all its calls in the real sandbox, one session per
    trajectory: a planted bug must fail with its kind's exception and the last call must print the program's
    answer, else this raises. A single clean call prints its program's answer and nothing else, so its output is
    written directly, as in `build_records`; the first `verify_clean` of them are run anyway, and checked."""
    rng = random.Random(f"sft-regime/{seed}")
    plans = [plan_regime(p, rng, bug_rate, second_failure_rate, give_up_rate, near_miss_rate) for p in problems]
    run = [k for k, plan in enumerate(plans) if len(plan.calls) > 1 or plan.gave_up or k < verify_clean]
    open_sessions = asyncio.Semaphore(64)  # sessions hold a process each: keep a bounded number open
    async with SandboxPool(sandbox or SandboxConfig(timeout_s=4)) as pool:
        outputs = await asyncio.gather(*(_run_calls(pool, [code for _, code, _ in plans[k].calls],
                                                    max_tool_response_chars, open_sessions) for k in run))
    ran = [[ToolResult("ok", f"{plan.answer}\n")] for plan in plans]
    for k, results in zip(run, outputs):
        ran[k] = results
    records = []
    for plan, results in zip(plans, ran):
        (_, messages), = prompts([plan.problem])
        for (reasoning, code, expected), result in zip(plan.calls, results):
            if (result.error_type if result.status == "error" else None) != expected:
                raise RuntimeError(f"{plan.problem.id}: a call expected to raise {expected} gave {result.status} "
                                   f"{result.error_type}: {result.output!r}")
            messages += [_turn(reasoning, code), {"role": "tool", "content": result.output, "status": result.status}]
        if plan.gave_up:
            final = rng.choice(GIVE_UP).format(guess=plan.answer)
        else:
            if results[-1].output != f"{plan.answer}\n":
                raise RuntimeError(f"{plan.problem.id}: the program printed {results[-1].output!r}, expected "
                                   f"{plan.answer}")
            final = f"The answer is \\boxed{{{plan.answer}}}."
        messages.append({"role": "assistant", "content": final})
        records.append({"id": plan.problem.id, "messages": messages, "answer": plan.problem.answer,
                        "bugs": [e for _, _, e in plan.calls if e], "near_miss": plan.near_miss,
                        "gave_up": plan.gave_up})
    return records


def regime_record_stats(records: list[dict[str, Any]]) -> dict[str, Any]:
    """What the SFT set teaches, by construction: the share of trajectories whose final answer is right, failed
    calls per trajectory (by exception), the share of failed calls followed by a successful one (within 3 calls),
    near misses and give-ups."""
    failures: dict[str, int] = {}
    failed = recovered = 0
    for r in records:
        statuses = [m["status"] for m in r["messages"] if m["role"] == "tool"]
        for k, status in enumerate(statuses):
            if status == "error":
                failed += 1
                recovered += "ok" in statuses[k + 1:k + 4]
        for e in r["bugs"]:
            failures[e] = failures.get(e, 0) + 1
    n = max(1, len(records))
    right = sum(check_answer(r["messages"][-1]["content"], r["answer"]) for r in records)
    return {"trajectories": len(records), "correct_share": right / n, "failed_calls_per_traj": failed / n,
            "failed_calls_by_class": dict(sorted(failures.items())),
            "recovered_within_3_share": recovered / max(1, failed),
            "near_miss_share": sum(r["near_miss"] for r in records) / n,
            "gave_up_share": sum(r["gave_up"] for r in records) / n}
