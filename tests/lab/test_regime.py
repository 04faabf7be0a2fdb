"""The regime task set (cleaner.lab.regime) and its SFT data: reference programs against closed forms written apart,
near misses that run and answer wrong, every planted bug failing in the real sandbox with its exception and its fix
running, disjoint splits, and the regression set's SFT checkpoint keeping its name."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import math
import re
from fractions import Fraction
from pathlib import Path

import pytest

from cleaner.lab import regime, tasks
from cleaner.lab.config import SFT_RECIPES, SftConfig
from cleaner.lab.sft_data import build_regime_records, regime_record_stats
from cleaner.sandbox import SandboxConfig, SandboxPool

REPO = Path(__file__).resolve().parents[2]
COMMITTED_LAB_SFT = "6e159435701d"  # results/lab/sft/<this>/: the regression set's committed checkpoint


def closed_form(p: tasks.Problem) -> int:
    """The answer from the question alone, by a formula or a brute force written apart from the reference programs."""
    q = p.question
    head = q.split("[")[0]
    nums = [int(x) for x in re.findall(r"\d+", head)]
    listed = [int(x) for x in re.findall(r"\d+", q[q.index("["):q.index("]")])] if "[" in q else []
    if p.template == "count_multiples":
        lo, hi, a, b = nums
        hi = hi if "(inclusive)" in q else hi - 1

        def between(d: int) -> int:  # multiples of d in [lo, hi]
            return hi // d - (lo - 1) // d

        return between(a) + between(b) - between(math.lcm(a, b)) if " or by " in q else between(math.lcm(a, b))
    if p.template == "increases":
        pairs = list(zip(listed, listed[1:]))
        return sum(y > x for x, y in pairs) if "greater than" in q else sum(y >= x for x, y in pairs)
    if p.template == "multiples_sum":
        if "first" in q:
            k, m = nums
            return m * k * (k + 1) // 2
        m, k = nums
        return m * (k // m) * (k // m + 1) // 2
    if p.template == "divisors":
        n = nums[0]
        small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
        divs = set(small) | {n // d for d in small}
        if "not counting" in q:
            divs.discard(n)
        return sum(divs) if "sum of the divisors" in q else len(divs)
    if p.template == "digit_sum_of":
        a, b = nums
        value = b - a if "difference" in q else a * b if "product" in q else a + b
        return sum(map(int, str(value)))
    if p.template == "reverse_combine":
        n = nums[0]
        rev = int(str(n)[::-1])
        return n + rev if " plus " in q else n * rev if " times " in q else n - rev
    if p.template == "choose":
        k, n = nums[0], nums[1]
        return math.factorial(n) // math.factorial(n - k) // (1 if "places" in q else math.factorial(k))
    if p.template == "lcm_gcd":
        return math.lcm(*nums) if "least common multiple" in q else math.gcd(*nums)
    if p.template == "neighbour_products":
        gap = 1 if "the next one" in q else 2
        return sum(x * y for x, y in zip(listed, listed[gap:]))
    if p.template == "price_total":
        prices = [Fraction(x) for x in q.split('"')[1].split(", ")]
        return int(sum(prices) * 100) if "in cents" in q else sum(math.floor(x) for x in prices)
    if p.template == "digits_divide":
        n = nums[0]
        digits = [int(d) for d in (set(str(n)) if "distinct" in q else str(n))]
        return sum(d != 0 and n % d == 0 for d in digits)
    raise AssertionError(f"no closed form for {p.template}")


def printed(code: str) -> str:
    """What a program prints, run here (our own generated programs only)."""
    out: list[str] = []
    exec(compile(code, "<test>", "exec"), {"print": lambda *args: out.append(" ".join(map(str, args)) + "\n")})
    return "".join(out)


PROBLEMS = regime.problems("train", 660, seed=3)  # 60 of each of the 11 templates


def test_reference_programs_agree_with_closed_forms():
    assert collections.Counter(p.template for p in PROBLEMS) == {name: 60 for name in regime.TEMPLATES}
    for p in PROBLEMS:
        assert p.answer == closed_form(p) == int(printed(regime.program(p, p.compute))), p
        assert p.variants[0].compute == p.compute and p.variants[0].answer == p.answer


def test_wording_decides_the_program():
    """Each template's wordings (bounds, or/and, first k/up to k, order, ...) appear, and the program follows them."""
    for name, words in {"count_multiples": ("(inclusive)", "(exclusive)", " or by ", " and by "),
                        "increases": ("greater than", "at least"), "multiples_sum": ("first", "up to"),
                        "divisors": ("not counting", "sum of the divisors", "number of divisors"),
                        "digit_sum_of": ("difference", "product", "sum of 1", "sum of 2"),
                        "reverse_combine": (" plus ", " times ", " minus "), "choose": ("places", "team"),
                        "lcm_gcd": ("least common", "greatest common"),
                        "neighbour_products": ("next one", "two places"),
                        "price_total": ("in cents", "whole-dollar"), "digits_divide": ("distinct", "How many digits")
                        }.items():
        questions = [p.question for p in PROBLEMS if p.template == name]
        for w in words:
            if w.startswith("sum of ") and w[-1].isdigit():
                assert any(re.search(r"the sum of \d", q) for q in questions), (name, w)
            else:
                assert any(w in q for q in questions), (name, w)


def test_near_misses_run_and_answer_wrong():
    with_near = collections.Counter()
    for p in PROBLEMS:
        answers = [v.answer for v in p.variants]
        assert len(set(answers)) == len(answers), p  # every near miss answers wrong, and differently
        for v in p.variants[1:]:
            assert v.answer != p.answer
            assert printed(regime.program(p, v.compute)) == f"{v.answer}\n"
        with_near[p.template] += len(p.variants) > 1
    assert all(with_near[name] >= 45 for name in regime.TEMPLATES), with_near  # most problems have one


async def _run_all(codes: list[str]) -> list:
    async with SandboxPool(SandboxConfig(timeout_s=4)) as pool:
        async def one(code):
            async with pool.session() as session:
                return (await session.run(code)).to_tool_result(256)
        return await asyncio.gather(*(one(c) for c in codes))


def test_every_planted_bug_fails_in_the_sandbox_with_its_exception_and_its_fix_runs():
    """For every site of every program of 5 problems per template (reference and near misses): the buggy program
    fails in the real sandbox with the site's exception, whose name and message survive the 256-character cut, and
    the program itself (the fix) prints its answer."""
    cases, kinds = [], collections.defaultdict(set)
    for p in [p for name in regime.TEMPLATES for p in [q for q in PROBLEMS if q.template == name][:5]]:
        for v in p.variants:
            code = regime.program(p, v.compute)
            cases.append((code, None, f"{v.answer}\n"))
            for site in v.sites:
                cases.append((regime.apply(code, site), regime.KINDS[site.kind], None))
                kinds[p.template].add(site.kind)
    results = asyncio.run(_run_all([c for c, _, _ in cases]))
    for (code, error, output), r in zip(cases, results):
        if error is None:
            assert (r.status, r.output) == ("ok", output), code
        else:
            assert (r.status, r.error_type) == ("error", error), (code, r)
            last = r.output.strip().splitlines()[-1]
            assert last.startswith(f"{error}: ") and len(last) > len(error) + 2, r.output  # the message is shown
    assert set().union(*kinds.values()) == set(regime.KINDS)
    assert all(len(k) >= 2 for k in kinds.values()), kinds  # a name error and at least one other kind each


def test_sites_that_do_not_fail_are_not_offered():
    """A site whose line is in a program but that runs there (int * str repeats the string) is left out of that
    program's sites."""
    times = [p for p in PROBLEMS if p.template == "reverse_combine" and " times " in p.question]
    assert times
    for p in times:
        assert "type" not in {s.kind for s in p.variants[0].sites}
        site = regime.Site("type", "rev = int(s[::-1])", "rev = s[::-1]", "")
        assert regime.raises(regime.apply(regime.program(p, p.compute), site)) is None


def test_task_sets_by_name():
    assert tasks.task_set("lab") is tasks and tasks.task_set("regime") is regime
    with pytest.raises(ValueError, match="unknown lab task set 'hard'; valid: lab, regime"):
        tasks.task_set("hard")
    assert {p.template for p in tasks.problems("train", 60)} == set(tasks.TEMPLATES)  # the lab set is unchanged


def test_sft_records_mix_fixes_give_ups_and_near_misses_at_their_rates():
    rates = dict(bug_rate=0.5, second_failure_rate=0.4, give_up_rate=0.3, near_miss_rate=0.3)
    records = asyncio.run(build_regime_records(regime.problems("train", 400, seed=9), seed=1, **rates,
                                               verify_clean=8))
    stats = regime_record_stats(records)
    assert abs(stats["near_miss_share"] - 0.3) < 0.07 and 0.5 * 0.3 - 0.06 < stats["gave_up_share"] < 0.15 + 0.06
    assert 0.5 * 1.4 - 0.1 < stats["failed_calls_per_traj"] < 0.5 * 1.4 + 0.1
    buggy = [r for r in records if r["bugs"]]  # about 200: binomial stderr about 0.035 on the shares below
    assert abs(len(buggy) / len(records) - 0.5) < 0.08
    assert abs(sum(len(r["bugs"]) == 2 for r in buggy) / len(buggy) - 0.4) < 0.1
    assert abs(stats["recovered_within_3_share"] - 0.7) < 0.1
    assert set(stats["failed_calls_by_class"]) == set(regime.KINDS.values())
    for r in records:
        msgs = r["messages"]
        tools = [m for m in msgs if m["role"] == "tool"]
        assert [m["status"] for m in tools] == ["error"] * len(r["bugs"]) + ([] if r["gave_up"] else ["ok"])
        for k, (m, error) in enumerate(zip(tools, r["bugs"])):
            assert re.search(rf"^{error}: ", m["content"], re.M) and f"<cell-{k + 1}>" in m["content"]
        right = msgs[-1]["content"] == f"The answer is \\boxed{{{r['answer']}}}."
        assert right == (not r["near_miss"] and not r["gave_up"]), r
        if r["gave_up"]:
            guess = re.search(r"\\boxed\{(\d+)\}", msgs[-1]["content"]).group(1)
            assert guess in re.findall(r"\d+", msgs[1]["content"])  # copied from the question
        elif r["near_miss"]:
            assert msgs[-1]["content"] == f"The answer is \\boxed{{{tools[-1]['content'].strip()}}}."
    right = [not r["near_miss"] and (not r["gave_up"] or f"{{{r['answer']}}}" in r["messages"][-1]["content"])
             for r in records]  # a guess copied from the question can be right
    assert stats["correct_share"] == sum(right) / len(records) and sum(right) < len(records)


def test_the_regression_sets_checkpoint_keeps_its_name():
    """The lab set's default recipe hashes to the committed folder, whose done.json records that hash; the fields
    added for the regime set change the hash only when set."""
    assert SftConfig().hash() == SFT_RECIPES["lab"].hash() == COMMITTED_LAB_SFT
    done = json.loads((REPO / "results" / "lab" / "sft" / COMMITTED_LAB_SFT / "done.json").read_text())
    assert done["hash"] == COMMITTED_LAB_SFT and "task_set" not in done["config"]
    assert SftConfig(**done["config"]).hash() == COMMITTED_LAB_SFT
    assert SFT_RECIPES["regime"].hash() != COMMITTED_LAB_SFT
    for key, value in (("task_set", "regime"), ("near_miss_rate", 0.1)):
        changed = dataclasses.replace(SftConfig(task_set="regime"), **{key: value}) if key != "task_set" else \
            SftConfig(task_set=value)
        assert changed.hash() != COMMITTED_LAB_SFT
    with pytest.raises(ValueError, match="are for task_set 'regime'"):
        SftConfig(near_miss_rate=0.2)
