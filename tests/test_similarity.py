"""Similarity measures, and the gamma decision they feed."""

from __future__ import annotations

import pytest

from cleaner import similarity
from cleaner.similarity import Attempt


def attempt(code: str) -> Attempt:
    """The attempt as the authors' code sees it: call text from <tool_call> to the end of the generation."""
    wrapper = '<tool_call>\n{"name": "code_interpreter", "arguments": {"code": "%s"}}\n</tool_call><|im_end|>'
    return Attempt(code, wrapper % code)


def test_the_wrapper_inflates_similarity_so_deep_becomes_shallow(make):
    from cleaner import saar

    failed = make.turn("Try.\n", "x=1/0", "error", "ZeroDivisionError: division by zero", "ZeroDivisionError")
    fix = make.turn("Again.\n", "print(sum(range(10)))", "ok", "45")
    on_code = saar.decide(failed, fix, saar.SaarConfig(similarity="difflib_code"))
    on_segment = saar.decide(failed, fix, saar.SaarConfig(similarity="difflib_segment"))
    assert (on_code.mode, round(on_code.similarity, 4)) == ("deep", round(2 * 2 / (5 + 21), 4))  # 0.1538
    assert on_segment.mode == "shallow" and on_segment.similarity > 0.88  # 0.8932 with this tokenizer's text


@pytest.mark.parametrize(
    "name, a, b, expected",
    [
        ("difflib_code", "abcd", "abce", 0.75),  # 2*3/8
        ("token", "x=1+2", "x = 1 + 2", 1.0),  # layout only
        ("token", "print(total)", "print(totl)", 0.75),  # 2*3/8 lexemes: print ( totl/total )
        ("ast", "x = 1  # one\ny=[1,2]", "x = 1\ny = [1, 2]", 1.0),  # comments and layout only
        ("ast", "print('a')", 'print("a")', 1.0),  # quote style
        ("ast", "print(1", "print(1)", 6 / 7),  # does not parse: token fallback, 3 of 3+4 lexemes
    ],
)
def test_measures_by_hand(name, a, b, expected):
    assert similarity.get(name)(attempt(a), attempt(b)) == pytest.approx(expected)


def test_every_measure_is_one_on_identical_and_symmetric_in_range():
    a, b = attempt("for i in range(3):\n    print(i)"), attempt("print(list(range(3)))")
    for name, fn in similarity.SIMILARITIES.items():
        assert fn(a, a) == 1.0, name
        assert 0.0 <= fn(a, b) < 1.0, name


def test_unknown_measure_lists_the_valid_ones():
    with pytest.raises(ValueError, match="ast, difflib_code, difflib_segment, token"):
        similarity.get("cosine")


def _pairs() -> list[tuple[object, object]]:
    """Random strings and lists: short; 200 elements or more with popular elements (difflib's autojunk drops them
    as match starts); 200 characters or more with none (a wide alphabet); and the code of every call in the
    bundled fenced-code log against every other (real code, real near-misses)."""
    import json
    import random
    from pathlib import Path

    from cleaner import chat

    rng = random.Random(0)
    out: list[tuple[object, object]] = []
    for alphabet, sizes, count in (("ab", (0, 12), 400), ("abc \n", (0, 60), 400), ("abcdefgh", (150, 400), 60),
                                   ([chr(c) for c in range(0x4E00, 0x4E00 + 2000)], (200, 300), 60)):
        for _ in range(count):
            a, b = ([rng.choice(alphabet) for _ in range(rng.randrange(*sizes))] for _ in range(2))
            out += [("".join(a), "".join(b)), (a, b)]
    log = Path(similarity.__file__).parent / "examples" / "fenced_code.jsonl"
    codes = [call.code for line in log.read_text().splitlines() for m in json.loads(line)["messages"]
             if m["role"] == "assistant" and (call := chat.parse_markdown(m["content"])) is not None]
    assert len(codes) > 20
    out += [(a, b) for a in codes for b in codes]
    out += [(similarity._LEXEME.findall(a), similarity._LEXEME.findall(b)) for a, b in zip(codes, codes[1:])]
    return out


def test_ratio_is_difflibs_exactly():
    """`_ratio` computes difflib's `SequenceMatcher(None, a, b).ratio()` without difflib (faster); it must be the
    same float on every pair, whichever match difflib picks among equally long ones. Breakages checked: the
    longest match searched from the last start in a (ties broken the other way); autojunk ignored (popular
    characters start matches)."""
    import difflib

    for a, b in _pairs():
        assert similarity._ratio(a, b) == difflib.SequenceMatcher(None, a, b).ratio(), (a, b)
