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
