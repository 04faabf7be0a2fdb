"""The lab's task family: integer-answer problems that need a computation, each with a reference program.

Six procedural templates. Their programs only copy numbers from the question, so a model that learns the format
can solve them by calling the tool; doing them in the head is out of reach for a few-million-parameter model:
- `sum_squares`: 1^2 + ... + n^2
- `count_divisible`: how many integers in [1, N] are divisible by a or by b
- `modpow`: a^b mod m
- `digit_product`: the product of the digits of N
- `power_digit_sum`: the digit sum of a^b
- `lcm`: the least common multiple of two or three numbers

Train, val and test are disjoint by construction: a question's split is the bucket its hash falls in (`SPLITS`:
test and val 5.1% each, train the rest), so no question appears in two, whatever the seeds. The test split was
10.2% of questions until val was cut from it: records made before then were scored on a different held-out set.

This module is the task set `lab`, the regression set (its SFT start is near the ceiling); `TASK_SETS` names the
others (`regime`: `cleaner.lab.regime`, problems in the paper's regime). Each is a trainer `Task`.
"""

from __future__ import annotations

import hashlib
import importlib
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from cleaner.metrics import final_answer_text
from cleaner.registry import Registry
from cleaner.trajectory import Trajectory

SYSTEM_PROMPT = "Use the code_interpreter tool to compute. Give the answer as \\boxed{N}."


@dataclass(frozen=True)
class Problem:
    id: str
    template: str
    question: str
    answer: int
    # the reference solution, as lines of code: `setup` assigns the question's numbers, `compute` the answer
    setup: tuple[str, ...]
    compute: tuple[str, ...]
    result: str  # the variable printed at the end

    @property
    def code(self) -> str:
        return "\n".join(self.setup + self.compute + (f"print({self.result})",))


Template = Callable[[random.Random], tuple[str, tuple[str, ...], tuple[str, ...], str]]
TEMPLATES = Registry("task template")
template = TEMPLATES.register


@template("sum_squares")
def _sum_squares(rng: random.Random):
    n = rng.randint(20, 999)
    return (f"What is the sum of the squares of the integers from 1 to {n}?",
            (f"n = {n}",), ("total = sum(i * i for i in range(1, n + 1))",), "total")


@template("count_divisible")
def _count_divisible(rng: random.Random):
    limit, a, b = rng.randint(100, 99999), rng.randint(2, 19), rng.randint(2, 19)
    return (f"How many integers from 1 to {limit} are divisible by {a} or by {b}?",
            (f"limit = {limit}", f"a = {a}", f"b = {b}"),
            ("count = sum(1 for k in range(1, limit + 1) if k % a == 0 or k % b == 0)",), "count")


@template("modpow")
def _modpow(rng: random.Random):
    base, exp, mod = rng.randint(2, 999), rng.randint(10, 9999), rng.randint(7, 9973)
    return (f"What is the remainder when {base}^{exp} is divided by {mod}?",
            (f"base = {base}", f"exp = {exp}", f"mod = {mod}"), ("result = pow(base, exp, mod)",), "result")


@template("digit_product")
def _digit_product(rng: random.Random):
    number = rng.randint(10**5, 10**9)
    return (f"What is the product of the digits of {number}?", (f"number = {number}",),
            ("product = 1", "for d in str(number):", "    product *= int(d)"), "product")


@template("power_digit_sum")
def _power_digit_sum(rng: random.Random):
    base, exp = rng.randint(2, 99), rng.randint(10, 199)
    return (f"What is the sum of the digits of {base}^{exp}?", (f"base = {base}", f"exp = {exp}"),
            ("digits = sum(int(d) for d in str(base ** exp))",), "digits")


@template("lcm")
def _lcm(rng: random.Random):
    nums = [rng.randint(2, 999) for _ in range(rng.choice((2, 3)))]
    return (f"What is the least common multiple of {', '.join(map(str, nums))}?",
            ("import math", f"nums = [{', '.join(map(str, nums))}]"), ("result = math.lcm(*nums)",), "result")


def _solve(setup: tuple[str, ...], compute: tuple[str, ...], result: str) -> int:
    scope: dict[str, object] = {}
    exec("\n".join(setup + compute), scope)  # our own reference programs, never model output
    value = scope[result]
    assert isinstance(value, int)
    return value


# A question's split, by the first byte of its SHA-256: disjoint for any draw, whatever the seed. "test" and "val"
# (5.1% of questions each) are never trained on, by SFT or RL; "val" is for tuning (`algo.eval_split=val`).
SPLITS = {"test": range(0, 13), "val": range(13, 26), "train": range(26, 256)}


def split_of(question: str) -> str:
    byte = hashlib.sha256(question.encode()).digest()[0]
    return next(name for name, bytes_ in SPLITS.items() if byte in bytes_)


def problems(split: str, count: int, seed: int = 0, templates: tuple[str, ...] | None = None) -> list[Problem]:
    """`count` problems of `split` (a key of `SPLITS`), cycling through the templates; the same arguments give the
    same problems."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    names = templates or tuple(TEMPLATES)
    for name in names:
        TEMPLATES[name]  # an unknown name fails here, listing the valid ones
    return [p for _, p in zip(range(count), _stream(split, seed, names))]


def _stream(split: str, seed: int, names: tuple[str, ...]) -> Iterator[Problem]:
    rng = random.Random(f"{split}/{seed}")
    k = 0
    while True:
        name = names[k % len(names)]
        question, setup, compute, result = TEMPLATES[name](rng)
        if split_of(question) == split:
            yield Problem(f"{split}-{seed}-{k}", name, question, _solve(setup, compute, result), setup, compute, result)
            k += 1


def check_answer(text: str, answer: int) -> bool:
    """True when the last `\\boxed{...}` in `text` holds exactly `answer` (an integer; commas allowed)."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return False
    end = text.find("}", start)
    if end < 0:
        return False
    value = text[start + len("\\boxed{") : end].replace(",", "").strip()
    return value.lstrip("-").isdigit() and int(value) == answer


def prompts(problems: list[Problem]) -> list[tuple[str, list[dict[str, str]]]]:
    """(problem id, chat messages) for lab problems: the system prompt naming the tool, then the question."""
    return [(p.id, [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": p.question}])
            for p in problems]


def correctness(trajs: list[Trajectory], problems: list[Problem]) -> list[bool]:
    """Whether each trajectory's answer turn holds its problem's answer (its group is the problem id)."""
    answers = {p.id: p.answer for p in problems}
    return [check_answer(final_answer_text(t), answers[t.group]) for t in trajs]


# The lab's task sets, by name: the module that is each one's trainer `Task` (problems, prompts, correctness)
TASK_SETS = {"lab": "cleaner.lab.tasks", "regime": "cleaner.lab.regime"}


def task_set(name: str):
    """The task set `name` (a key of TASK_SETS), a trainer `Task`; an unknown name fails listing the valid ones."""
    if name not in TASK_SETS:
        raise ValueError(f"unknown lab task set {name!r}; valid: {', '.join(TASK_SETS)}")
    return importlib.import_module(TASK_SETS[name])
