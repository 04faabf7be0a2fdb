"""Math answers: the final `\\boxed{...}` of a response, checked against the gold answer with math-verify.

Departs from the authors: they compared the boxed text with the gold string (a strict `\\boxed` string match),
which rejects equal answers written differently: `336^\\circ` against 336 (AIME 2025 II-5 in one public copy),
`025` against 25 (AIME 2024 gold answers are zero-padded in one file), `\\frac{1}{2}` against 0.5. Here both sides
are parsed by math-verify and compared as mathematical objects. A trailing period (`\\boxed{25.}`) is accepted
as 25: math-verify reads it as end-of-sentence punctuation, and we keep that.

Only the LAST `\\boxed{` of the response counts: an earlier box (a draft, a sub-result) is never graded, and a
last box whose braces do not close (a truncated response) gives no answer rather than falling back to an
earlier one. No box: no answer (reward False), even if the right number appears in the text.

Not protected against: math-verify's own parsing choices (e.g. `x = 25` counts as 25; `2,5` is the set {2, 5}).
math-verify times out parse/verify with `signal.alarm` (5 s each), which works only in the main thread.
"""

from __future__ import annotations

import re

from math_verify import parse, verify

_BOXED = re.compile(r"\\boxed\s*\{")


def extract_boxed(text: str) -> str | None:
    """The content of the last `\\boxed{...}` in `text` (nested braces balanced, `\\{` and `\\}` skipped), or
    None when there is no `\\boxed{` or the last one is not closed."""
    starts = [m.end() for m in _BOXED.finditer(text)]
    if not starts:
        return None
    depth, i = 1, starts[-1]
    while i < len(text):
        char = text[i]
        if char == "\\":
            i += 2  # an escaped character (\{, \}, \\) never opens or closes a group
            continue
        depth += {"{": 1, "}": -1}.get(char, 0)
        if depth == 0:
            return text[starts[-1]:i]
        i += 1
    return None


def math_reward(response_text: str, gold: str | int) -> bool:
    """Whether the final `\\boxed{}` answer of `response_text` equals `gold` (math-verify; gold parsed first and
    passed first, as `verify(gold, pred)` is not symmetric). Both are wrapped in `$...$`: math-verify extracts
    LaTeX from math mode."""
    answer = extract_boxed(response_text)
    if answer is None:
        return False
    gold_parsed = parse(f"${gold}$")
    if not gold_parsed:
        raise ValueError(f"math-verify cannot parse the gold answer {gold!r}")
    return verify(gold_parsed, parse(f"${answer}$"))
