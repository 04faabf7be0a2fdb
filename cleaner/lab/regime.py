"""The lab's second task set, `regime`: problems in the paper's regime, where the SFT start is far from the ceiling.

Today's set (`cleaner.lab.tasks`, task set `lab`) stays as the regression set: its SFT start solves ~95% of held-out
problems and its only tool errors are typos. Here the wording of a question decides the program (inclusive or
exclusive bounds, "or" or "and", "the first k" or "up to k", with or without order), so a program can run and
still answer wrong. Eleven templates, each with:
- its reference program (`setup` assigns the question's numbers, `compute` the answer, `result` is printed),
- near misses: programs that run and print a wrong answer (the program of another wording, an off-by-one bound, a
  wrong operator), kept only where their answer differs from the right one and from each other,
- bug sites (`Site`): a line of the program replaced by a line that fails at run time with a given exception
  (NameError, TypeError, IndexError, AttributeError, ZeroDivisionError, ValueError), and the sentence that names
  the fix. A site is offered for a program only where it raises its exception there (`raises`, when the problem is
  drawn). Each error's message, as the sandbox shows it, points at the fix (the failing line and its exception).

The cold-start SFT set mixes correct programs, first calls with one of these bugs followed by the fix (sometimes a
second failure first, sometimes no fix and a guessed answer), and near misses (`cleaner.lab.sft_data`), at rates
that are knobs of `cleaner.lab.config.SftConfig`. Splits are by question hash, as for `lab` (`tasks.split_of`).
The prompts and grading are `lab`'s: this module is a trainer `Task` (problems, prompts, correctness).

What it does not model: errors the paper's models make that no template site plants (timeouts, wrong libraries,
logic that fails only on some inputs), and the paper's long reasoning between calls.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from cleaner.lab import tasks
from cleaner.lab.tasks import Problem, split_of
from cleaner.registry import Registry

# the trainer's Task API besides `problems`: the lab set's prompts (its system prompt naming the tool) and grading
prompts = tasks.prompts
correctness = tasks.correctness

# a bug's kind -> the exception its call must raise in the sandbox
KINDS = {"name": "NameError", "type": "TypeError", "index": "IndexError", "attribute": "AttributeError",
         "zero_division": "ZeroDivisionError", "value": "ValueError"}


@dataclass(frozen=True)
class Site:
    """A bug an SFT trajectory can plant: the program's line `old` becomes `new` (None: the line is dropped)."""

    kind: str  # a key of KINDS
    old: str
    new: str | None
    fix: str  # the sentence after the error that names the fix


@dataclass(frozen=True)
class Variant:
    """A program the SFT set may call: the reference, or a near miss that runs and prints a wrong answer."""

    compute: tuple[str, ...]
    answer: int  # what it prints
    sites: tuple[Site, ...]  # the bugs that make it fail with their kind's exception (checked when drawn)


@dataclass(frozen=True)
class RegimeProblem(Problem):
    variants: tuple[Variant, ...] = ()  # [0]: the reference program; then the near misses, each with its own answer


def program(problem: Problem, compute: tuple[str, ...]) -> str:
    """The full program: the problem's setup, `compute`, and the print of its result."""
    return "\n".join(problem.setup + compute + (f"print({problem.result})",))


def apply(code: str, site: Site) -> str | None:
    """`code` with the bug of `site`, or None where its line is not in `code`."""
    lines = code.split("\n")
    if site.old not in lines:
        return None
    k = lines.index(site.old)
    return "\n".join(lines[:k] + ([site.new] if site.new is not None else []) + lines[k + 1:])


def raises(code: str) -> str | None:
    """The name of the exception `code` raises, or None; its print is silenced. Only for this module's own
    programs (the SFT set checks each call again in the sandbox)."""
    try:
        exec(compile(code, "<check>", "exec"), {"print": lambda *args: None})
    except Exception as e:  # noqa: BLE001 - the exception's class is the result
        return type(e).__name__
    return None


@dataclass(frozen=True)
class Draft:
    question: str
    setup: tuple[str, ...]
    compute: tuple[str, ...]
    result: str
    near: tuple[tuple[str, ...], ...]  # near-miss compute blocks (filtered by answer later)
    sites: tuple[Site, ...]


TEMPLATES = Registry("regime task template")
template = TEMPLATES.register


def _as_string(name: str, value: int) -> Site:
    """The question's number pasted as a string: arithmetic or range() on it raises TypeError."""
    return Site("type", f"{name} = {value}", f'{name} = "{value}"',
                f"{name} is a string, not a number. Writing {name} = {value} without quotes.\n")


@template("count_multiples")
def _count_multiples(rng: random.Random) -> Draft:
    lo, hi = rng.randint(1, 60), rng.randint(150, 2500)
    a, b = rng.sample(range(2, 16), 2)
    inclusive, either = rng.random() < 0.5, rng.random() < 0.5
    bound = ("inclusive" if inclusive else "exclusive")
    question = (f"How many integers from {lo} to {hi} ({bound}) are divisible by {a} {'or' if either else 'and'} "
                f"by {b}?")

    def compute(incl: bool, op: str, start: str = "lo") -> tuple[str, ...]:
        return ("count = 0", f"for k in range({start}, {'hi + 1' if incl else 'hi'}):",
                f"    if k % a == 0 {op} k % b == 0:", "        count += 1")

    op = "or" if either else "and"
    other = "and" if either else "or"
    return Draft(question, (f"lo = {lo}", f"hi = {hi}", f"a = {a}", f"b = {b}"), compute(inclusive, op), "count",
                 (compute(not inclusive, op), compute(inclusive, other), compute(inclusive, op, "lo + 1")),
                 (_as_string("hi", hi),))


@template("increases")
def _increases(rng: random.Random) -> Draft:
    nums = [rng.randint(1, 9) for _ in range(rng.randint(8, 14))]
    strict = rng.random() < 0.5
    question = (f"In the list {nums}, how many numbers are {'greater than' if strict else 'at least'} the number "
                f"just before them?")

    def compute(op: str, stop: str = "len(nums) - 1") -> tuple[str, ...]:
        return ("count = 0", f"for i in range({stop}):", f"    if nums[i + 1] {op} nums[i]:", "        count += 1")

    op, other = (">", ">=") if strict else (">=", ">")
    index = Site("index", "for i in range(len(nums) - 1):", "for i in range(len(nums)):",
                 "The index i + 1 runs past the end of the list. The loop must stop one earlier.\n")
    return Draft(question, (f"nums = {nums}",), compute(op), "count", (compute(other), compute(op, "len(nums) - 2")),
                 (index,))


@template("multiples_sum")
def _multiples_sum(rng: random.Random) -> Draft:
    m = rng.randint(2, 19)
    first = rng.random() < 0.5
    k = rng.randint(5, 60) if first else rng.randint(20, 900)
    question = (f"What is the sum of the first {k} multiples of {m}?" if first
                else f"What is the sum of the multiples of {m} up to {k}?")

    def compute(first: bool, off: int = 0) -> tuple[str, ...]:
        loop = (f"for i in range(1, k + {1 - off}):" if first else f"for i in range(m, k + {1 - off}, m):")
        return ("multiples = []", loop.replace(" + 0", ""), f"    multiples.append({'m * i' if first else 'i'})",
                "total = sum(multiples)")

    sites = (_as_string("k", k),
             Site("attribute", "    multiples.append(m * i)", "    multiples.add(m * i)",
                  "Lists have no add method; append adds an item.\n"),
             Site("attribute", "    multiples.append(i)", "    multiples.add(i)",
                  "Lists have no add method; append adds an item.\n"))
    return Draft(question, (f"m = {m}", f"k = {k}"), compute(first), "total", (compute(not first), compute(first, 1)),
                 sites)


@template("divisors")
def _divisors(rng: random.Random) -> Draft:
    n = rng.randint(12, 5000)
    proper, total = rng.random() < 0.5, rng.random() < 0.5
    what = f"the sum of the divisors of {n}" if total else f"the number of divisors of {n}"
    question = f"What is {what}{', not counting ' + str(n) + ' itself' if proper else ''}?"

    def compute(proper: bool, start: int = 1) -> tuple[str, ...]:
        return ("result = 0", f"for d in range({start}, {'n' if proper else 'n + 1'}):", "    if n % d == 0:",
                f"        result += {'d' if total else '1'}")

    zero = tuple(Site("zero_division", f"for d in range(1, {stop}):", f"for d in range(0, {stop}):",
                      "d starts at 0, and n % 0 divides by zero. The range must start at 1.\n")
                 for stop in ("n", "n + 1"))
    return Draft(question, (f"n = {n}",), compute(proper), "result", (compute(not proper), compute(proper, 2)),
                 (_as_string("n", n),) + zero)


_OPS = {"difference between": "abs(a - b)", "product of": "a * b", "sum of": "a + b"}


@template("digit_sum_of")
def _digit_sum_of(rng: random.Random) -> Draft:
    a = rng.randint(10, 9999)
    b = rng.randint(a + 1, 99999)
    words = rng.choice(list(_OPS))
    question = f"What is the sum of the digits of the {words} {a} and {b}?"

    def compute(expr: str) -> tuple[str, ...]:
        return (f"value = {expr}", "total = 0", "for d in str(value):", "    total += int(d)")

    sites = (Site("value", "value = abs(a - b)", "value = a - b",
                  "a - b is negative, so its string starts with '-'. Taking abs(a - b) first.\n"),
             Site("type", "    total += int(d)", "    total += d",
                  "d is a character of the string; int(d) makes it a number.\n"))
    return Draft(question, (f"a = {a}", f"b = {b}"), compute(_OPS[words]), "total",
                 tuple(compute(e) for w, e in _OPS.items() if w != words), sites)


_COMBINE = {"plus": "+", "times": "*", "minus": "-"}


@template("reverse_combine")
def _reverse_combine(rng: random.Random) -> Draft:
    n = rng.randint(100, 999999)
    word = rng.choice(list(_COMBINE))
    question = f"What is {n} {word} the number with the same digits in reverse order?"

    def compute(op: str) -> tuple[str, ...]:
        return ("s = str(n)", "rev = int(s[::-1])", f"result = n {op} rev")

    sites = (Site("attribute", "rev = int(s[::-1])", "rev = int(s.reverse())",
                  "Strings have no reverse method; s[::-1] reverses a string.\n"),
             # fails for + and -; for * (an int times a str repeats the str) it runs, and is dropped when drawn
             Site("type", "rev = int(s[::-1])", "rev = s[::-1]",
                  "rev is still a string; int(s[::-1]) makes it a number.\n"))
    return Draft(question, (f"n = {n}",), compute(_COMBINE[word]), "result",
                 tuple(compute(op) for w, op in _COMBINE.items() if w != word), sites)


@template("choose")
def _choose(rng: random.Random) -> Draft:
    n, k = rng.randint(8, 40), rng.randint(2, 6)
    ordered = rng.random() < 0.5
    question = (f"In how many ways can {k} of {n} runners take the first {k} places?" if ordered
                else f"In how many ways can a team of {k} be picked from {n} players?")
    fn, other = ("math.perm", "math.comb") if ordered else ("math.comb", "math.perm")
    sites = (Site("attribute", "ways = math.comb(n, k)", "ways = math.choose(n, k)",
                  "math has no choose; the function is math.comb.\n"),
             Site("attribute", "ways = math.perm(n, k)", "ways = math.permutations(n, k)",
                  "math has no permutations; the function is math.perm.\n"),
             Site("name", "import math", None, "math is not imported. Adding import math.\n"),
             _as_string("k", k))
    return Draft(question, ("import math", f"n = {n}", f"k = {k}"), (f"ways = {fn}(n, k)",), "ways",
                 ((f"ways = {other}(n, k)",), (f"ways = {fn}(n, k - 1)",)), sites)


@template("lcm_gcd")
def _lcm_gcd(rng: random.Random) -> Draft:
    g = rng.randint(2, 30)
    nums = [g * rng.randint(2, 40) for _ in range(rng.choice((2, 3)))]
    lcm = rng.random() < 0.5
    question = (f"What is the {'least common multiple' if lcm else 'greatest common divisor'} of "
                f"{', '.join(map(str, nums))}?")
    fn, other = ("math.lcm", "math.gcd") if lcm else ("math.gcd", "math.lcm")
    sites = tuple(Site("type", f"result = {f}(*nums)", f"result = {f}(nums)",
                       f"{f} takes the numbers, not a list; *nums unpacks them.\n") for f in ("math.lcm", "math.gcd"))
    sites += (Site("attribute", "result = math.lcm(*nums)", "result = math.lcd(*nums)",
                   "math has no lcd; the least common multiple is math.lcm.\n"),
              Site("name", "import math", None, "math is not imported. Adding import math.\n"))
    return Draft(question, ("import math", f"nums = {nums}"), (f"result = {fn}(*nums)",), "result",
                 ((f"result = {other}(*nums)",),), sites)


@template("neighbour_products")
def _neighbour_products(rng: random.Random) -> Draft:
    nums = [rng.randint(1, 20) for _ in range(rng.randint(6, 12))]
    gap = rng.choice((1, 2))
    pairs = "each number and the next one" if gap == 1 else "each number and the one two places after it"
    question = f"In the list {nums}, what is the sum of the products of {pairs}?"

    def compute(gap: int, extra: int = 0) -> tuple[str, ...]:
        return ("total = 0", f"for i in range(len(nums) - {gap + extra}):", f"    total += nums[i] * nums[i + {gap}]")

    sites = tuple(Site("index", f"for i in range(len(nums) - {g}):", "for i in range(len(nums)):",
                       f"The index i + {g} runs past the end of the list. The loop must stop at len(nums) - {g}.\n")
                  for g in (1, 2))
    return Draft(question, (f"nums = {nums}",), compute(gap), "total", (compute(3 - gap), compute(gap, 1)), sites)


@template("price_total")
def _price_total(rng: random.Random) -> Draft:
    prices = [rng.choice((f"{rng.randint(1, 40)}", f"{rng.randint(1, 40)}.{rng.choice((5, 25, 75, 1, 9, 99, 35))}"))
              for _ in range(rng.randint(3, 6))]
    text = ", ".join(prices)
    cents = rng.random() < 0.5
    question = (f'The prices in the note "{text}" are in dollars. What is ' +
                ("their total in cents?" if cents else "the sum of their whole-dollar parts?"))

    def compute(line: str) -> tuple[str, ...]:
        return ("total = 0", 'for x in prices.split(","):', f"    total += {line}")

    right, other = ("round(float(x) * 100)", "int(float(x))") if cents else ("int(float(x))", "round(float(x) * 100)")
    near = (compute(other),) + ((compute("int(float(x) * 100)"),) if cents else ())
    sites = (Site("value", "    total += round(float(x) * 100)", "    total += round(int(x) * 100)",
                  "x is a decimal string; int() cannot read it, float(x) can.\n"),
             Site("value", "    total += int(float(x))", "    total += int(x)",
                  "x is a decimal string; int() cannot read it, so float(x) first.\n"))
    return Draft(question, (f'prices = "{text}"',), compute(right), "total", near, sites)


@template("digits_divide")
def _digits_divide(rng: random.Random) -> Draft:
    digits = [rng.randint(1, 9) for _ in range(rng.randint(4, 8))]
    digits.insert(rng.randint(1, len(digits)), 0)  # a zero digit, never the leading one
    n = int("".join(map(str, digits)))
    distinct = rng.random() < 0.5
    question = f"How many {'distinct ' if distinct else ''}digits of {n} divide {n} exactly (skip any 0)?"

    def compute(distinct: bool, op: str = "==") -> tuple[str, ...]:
        return ("count = 0", f"for d in {'set(str(n))' if distinct else 'str(n)'}:",
                f"    if d != '0' and n % int(d) {op} 0:", "        count += 1")

    sites = (Site("zero_division", "    if d != '0' and n % int(d) == 0:", "    if n % int(d) == 0:",
                  "A digit is 0, and n % 0 divides by zero. Skipping the zero digits.\n"),)
    return Draft(question, (f"n = {n}",), compute(distinct), "count", (compute(not distinct), compute(distinct, "!=")),
                 sites)


def _misspelt(name: str, rng: random.Random) -> str:
    i = rng.randrange(1, len(name))  # result names have 4 letters or more
    return name[:i] + name[i + 1:] if rng.random() < 0.5 else name[:i] + name[i - 1] + name[i:]


def _problem(id_: str, name: str, draft: Draft, rng: random.Random) -> RegimeProblem:
    """The problem of `draft`: its answer, its near misses whose answers differ from it and from each other, and
    for each program the bug sites that fail on it with their kind's exception."""
    typo = Site("name", f"print({draft.result})", f"print({_misspelt(draft.result, rng)})",
                f"{draft.result} is misspelt in the print. Fixing the name.\n")
    sites = draft.sites + (typo,)
    variants: list[Variant] = []
    for compute in (draft.compute,) + draft.near:
        answer = tasks._solve(draft.setup, compute, draft.result)
        if any(answer == v.answer for v in variants):
            continue
        code = "\n".join(draft.setup + compute + (f"print({draft.result})",))
        failing = tuple(site for site in sites
                        if (buggy := apply(code, site)) is not None and raises(buggy) == KINDS[site.kind])
        variants.append(Variant(compute, answer, failing))
    return RegimeProblem(id_, name, draft.question, variants[0].answer, draft.setup, draft.compute, draft.result,
                         tuple(variants))


def problems(split: str, count: int, seed: int = 0, templates: tuple[str, ...] | None = None) -> list[RegimeProblem]:
    """`count` problems of `split` (a key of `tasks.SPLITS`), cycling through the templates; the same arguments give
    the same problems."""
    if split not in tasks.SPLITS:
        raise ValueError(f"split must be one of {', '.join(tasks.SPLITS)}, got {split!r}")
    names = templates or tuple(TEMPLATES)
    for name in names:
        TEMPLATES[name]  # an unknown name fails here, listing the valid ones
    rng = random.Random(f"regime/{split}/{seed}")
    out: list[RegimeProblem] = []
    k = 0
    while len(out) < count:
        name = names[k % len(names)]
        draft = TEMPLATES[name](rng)
        if split_of(draft.question) == split:
            out.append(_problem(f"{split}-{seed}-{len(out)}", name, draft, rng))
            k += 1
    return out
