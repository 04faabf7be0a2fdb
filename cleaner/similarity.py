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
import difflib
import re
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
    return difflib.SequenceMatcher(None, a, b).ratio()


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
