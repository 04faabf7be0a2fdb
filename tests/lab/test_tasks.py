"""Lab tasks: reference programs checked against closed forms, a disjoint split, answer checking, and the
injected bugs of the SFT set failing the way they claim to."""

from __future__ import annotations

import asyncio
import hashlib
import math
import random
import re

import pytest

from cleaner.lab import regime, tasks
from cleaner.lab.sft_data import FIX_REASONING, build_records, inject_bug


def closed_form(p: tasks.Problem) -> int:
    nums = [int(x) for x in re.findall(r"\d+", p.question)]
    if p.template == "sum_squares":
        n = nums[-1]
        return n * (n + 1) * (2 * n + 1) // 6
    if p.template == "count_divisible":
        _, limit, a, b = nums
        return limit // a + limit // b - limit // math.lcm(a, b)
    if p.template == "modpow":
        base, exp, mod = nums
        return pow(base, exp, mod)
    if p.template == "digit_product":
        return math.prod(int(d) for d in str(nums[0]))
    if p.template == "power_digit_sum":
        base, exp = nums
        return sum(int(d) for d in str(base**exp))
    return math.lcm(*nums)


def test_reference_programs_agree_with_closed_forms():
    problems = tasks.problems("train", 120, seed=3)
    assert {p.template for p in problems} == set(tasks.TEMPLATES)
    for p in problems:
        assert p.answer == closed_form(p), p


@pytest.mark.parametrize("problems", [tasks.problems, regime.problems], ids=["lab", "regime"])
def test_splits_are_disjoint_and_reproducible(problems):
    """Train (what SFT and RL draw from), val (for tuning) and test share no question, whatever the seeds; the
    split of a question is the first byte of its SHA-256 (test below 13, val below 26, computed here by hand). For
    both task sets."""
    train = {p.question for s in (0, 1) for p in problems("train", 2000, seed=s)}
    val = problems("val", 300, seed=0)
    test = problems("test", 300, seed=0)
    assert not train & {p.question for p in val} and not train & {p.question for p in test}
    assert not {p.question for p in val} & {p.question for p in test}
    assert all(hashlib.sha256(p.question.encode()).digest()[0] < 13 for p in test)
    assert all(13 <= hashlib.sha256(p.question.encode()).digest()[0] < 26 for p in val)
    assert problems("test", 300, seed=0) == test
    assert problems("test", 300, seed=1) != test


@pytest.mark.parametrize("text, ok", [("The answer is \\boxed{1,234}.", True), ("\\boxed{1234}", True),
                                      ("\\boxed{12} then \\boxed{1234}", True), ("\\boxed{1234.0}", False),
                                      ("1234", False), ("\\boxed{1234", False), ("\\boxed{-1234}", False)])
def test_check_answer(text, ok):
    assert tasks.check_answer(text, 1234) is ok


def test_unknown_template_and_split_are_clear_errors():
    with pytest.raises(ValueError, match="unknown task template .trig.; valid: count_divisible, digit_product"):
        tasks.problems("train", 1, templates=("trig",))
    with pytest.raises(ValueError, match="split must be one of test, val, train, got 'dev'"):
        tasks.problems("dev", 1)


def test_injected_bugs_fail_as_their_fix_says():
    rng = random.Random(0)
    expected = {"name": NameError, "function": (NameError, AttributeError), "paren": SyntaxError,
                "colon": SyntaxError}
    seen = set()
    for p in tasks.problems("train", 300, seed=5):
        bug = inject_bug(p, rng)
        seen.add(bug.kind)
        with pytest.raises(expected[bug.kind]):
            exec(compile(bug.code, "<cell>", "exec"), {})  # our own generated code
    assert seen == set(FIX_REASONING)


def test_sft_records_use_real_sandbox_outputs():
    records = asyncio.run(build_records(tasks.problems("train", 24, seed=9), bug_rate=0.5, seed=1, verify_clean=4))
    buggy = [r for r in records if r["bug"]]
    assert 4 <= len(buggy) <= 20
    for r in records:
        roles = [m["role"] for m in r["messages"]]
        assert roles == ["system", "user"] + (["assistant", "tool"] * (2 if r["bug"] else 1)) + ["assistant"]
        assert r["messages"][-2] == {"role": "tool", "content": f"{r['answer']}\n", "status": "ok"}
        assert r["messages"][-1]["content"] == f"The answer is \\boxed{{{r['answer']}}}."
    for r in buggy:
        error = r["messages"][3]
        assert error["status"] == "error" and "<cell-1>" in error["content"]
        assert re.search(r"(NameError|AttributeError|SyntaxError): ", error["content"])
