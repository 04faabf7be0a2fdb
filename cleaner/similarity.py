"""Similarity between a failed attempt and its correction, in [0, 1]; SAAR splices shallow when it is >= gamma.

Registry (`SIMILARITIES`), each a function of two `Attempt`s:
- `difflib_code` (paper default): `difflib.SequenceMatcher(None, a, b).ratio()` on the code strings.
- `difflib_segment`: the same ratio on the whole call segment as the authors' code compares it: the text from
  `<tool_call>` to the end of the generation, JSON wrapper and `<|im_end|>` included. The shared wrapper inflates
  it (`x=1/0` vs `print(sum(range(10)))`: 0.89 here, 0.15 on the code). Kept for ablation.
- `token`: the ratio over lexical tokens (identifiers, numbers, operators), so whitespace and layout do not count.
- `ast`: the ratio over `ast.unparse(ast.parse(code))`, which normalises layout, quotes and comments. Failed code
  often does not parse (a SyntaxError is a common failure); then this falls back to `token`.
"""

from __future__ import annotations

import ast
import re
from collections import Counter
from dataclasses import dataclass
from typing import Callable

from cleaner.registry import Registry


@dataclass(frozen=True)
class Attempt:
    """What similarity looks at: the extracted code and the call segment text (call + stop)."""

    code: str
    segment: str


Similarity = Callable[[Attempt, Attempt], float]
SIMILARITIES = Registry("similarity")
register = SIMILARITIES.register
get = SIMILARITIES.__getitem__


def _ratio(a, b) -> float:
    """`difflib.SequenceMatcher(None, a, b).ratio()`, the same number computed with fewer Python calls
    (`_matched`); tests/test_similarity.py checks it equals difflib's on random and real pairs."""
    if a == b:  # a retry that repeats the failed code: every element matches (two empty codes too)
        return 1.0
    return 2.0 * _matched(a, b) / (len(a) + len(b))


def _matched(a, b) -> int:
    """The number of elements in `difflib.SequenceMatcher(None, a, b).get_matching_blocks()`, by its algorithm:
    the longest match in a range (of the longest, the one that starts first in a, then in b, as
    `find_longest_match` finds it), then the same search left and right of it. b's popular elements (more than
    1% + 1 of a `b` of 200 or more: difflib's autojunk) never start a match and only extend one; two strings with
    none are searched with `str.find` (`_longest_in_strings`), anything else as difflib does (`_longest`)."""
    lb = len(b)
    ntest = lb // 100 + 1 if lb >= 200 else lb + 1  # more than ntest times in b: popular
    if isinstance(a, str) and isinstance(b, str) and (lb < 200 or max(Counter(b).values()) <= ntest):
        longest = _longest_in_strings
    else:
        b2j: dict = {}
        for j, elt in enumerate(b):
            b2j.setdefault(elt, []).append(j)
        for elt in [elt for elt, js in b2j.items() if len(js) > ntest]:
            del b2j[elt]
        nothing: list[int] = []
        where = [b2j.get(elt, nothing) for elt in a]  # the positions in b of each element of a

        def longest(a, b, alo, ahi, blo, bhi):
            return _longest(a, b, where, alo, ahi, blo, bhi)
    matched = 0
    queue = [(0, len(a), 0, lb)]
    while queue:
        alo, ahi, blo, bhi = queue.pop()
        i, j, k = longest(a, b, alo, ahi, blo, bhi)
        if k:
            matched += k
            if alo < i and blo < j:
                queue.append((alo, i, blo, j))
            if i + k < ahi and j + k < bhi:
                queue.append((i + k, ahi, j + k, bhi))
    return matched


def _longest(a, b, where: list[list[int]], alo: int, ahi: int, blo: int, bhi: int) -> tuple[int, int, int]:
    """`difflib.SequenceMatcher.find_longest_match(alo, ahi, blo, bhi)` without junk: `where[i]` lists the
    positions in b of a[i] (popular elements left out)."""
    besti, bestj, bestsize = alo, blo, 0
    j2len: dict[int, int] = {}
    for i in range(alo, ahi):
        j2lenget = j2len.get
        newj2len = {}
        for j in where[i]:
            if j < blo:
                continue
            if j >= bhi:
                break
            k = newj2len[j] = j2lenget(j - 1, 0) + 1
            if k > bestsize:
                besti, bestj, bestsize = i - k + 1, j - k + 1, k
        j2len = newj2len
    while besti > alo and bestj > blo and a[besti - 1] == b[bestj - 1]:
        besti, bestj, bestsize = besti - 1, bestj - 1, bestsize + 1
    while besti + bestsize < ahi and bestj + bestsize < bhi and a[besti + bestsize] == b[bestj + bestsize]:
        bestsize += 1
    return besti, bestj, bestsize


def _longest_in_strings(a: str, b: str, alo: int, ahi: int, blo: int, bhi: int) -> tuple[int, int, int]:
    """The same match as `_longest` for two strings when b has no popular characters: the longest common
    substring of a[alo:ahi] and b[blo:bhi] that starts first in a, then first in b. For each start in a, in
    order, only a substring longer than the best so far can replace it; `str.find` gives its first place in b."""
    besti, bestj, bestsize = alo, blo, 0
    i = alo
    while i + bestsize < ahi:
        size = bestsize + 1
        j = b.find(a[i:i + size], blo, bhi)
        if j >= 0:
            while i + size < ahi:
                longer = b.find(a[i:i + size + 1], j, bhi)
                if longer < 0:
                    break
                j, size = longer, size + 1
            besti, bestj, bestsize = i, j, size
        i += 1
    return besti, bestj, bestsize


@register("difflib_code")
def difflib_code(a: Attempt, b: Attempt) -> float:
    return _ratio(a.code, b.code)


@register("difflib_segment")
def difflib_segment(a: Attempt, b: Attempt) -> float:
    return _ratio(a.segment, b.segment)


_LEXEME = re.compile(r"[A-Za-z_]\w*|\d+(?:\.\d+)?|\*\*|//|==|!=|<=|>=|[^\w\s]")


@register("token")
def token(a: Attempt, b: Attempt) -> float:
    return _ratio(_LEXEME.findall(a.code), _LEXEME.findall(b.code))


def _normalise(code: str) -> str | None:
    try:
        return ast.unparse(ast.parse(code))
    except (SyntaxError, ValueError, RecursionError):  # ValueError: null bytes; RecursionError: deep nesting
        return None


@register("ast")
def ast_normalised(a: Attempt, b: Attempt) -> float:
    na, nb = _normalise(a.code), _normalise(b.code)
    if na is None or nb is None:
        return token(a, b)
    return _ratio(na, nb)
