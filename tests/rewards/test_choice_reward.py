"""GPQA letters: the formats models write, the order of preference, and the ambiguous cases that give None."""

from __future__ import annotations

import pytest

from cleaner.rewards import choice_reward, extract_choice

CASES = [
    # boxed, in any wrapping
    (r"\boxed{C}", "C"),
    (r"The answer is $\boxed{\text{C}}$.", "C"),
    (r"\boxed{\textbf{(B)}}", "B"),
    (r"\boxed{(D) 4.2 eV}", "D"),
    (r"\boxed{c}", "C"),                              # lower case inside a box is unambiguous
    # explicit answer phrases
    ("Answer: C", "C"),
    ("so the answer is (C).", "C"),
    ("**Answer:** B", "B"),
    ("The correct answer is option D, since ...", "D"),
    ("Final answer: (a)", "A"),
    ("Therefore the answer is c.", "C"),
    # a last line that is only a letter
    ("After all this, the best fit is\n\n**C**", "C"),
    ("Hence\nC)", "C"),
    ("Hence\n(b)\n", "B"),
    # preference: the last box, then the last phrase
    (r"Answer: A. On reflection, \boxed{B}", "B"),
    (r"\boxed{A} was my first guess, but \boxed{D}", "D"),
    (r"I computed \boxed{42}. Answer: B", "B"),          # a box without a letter is skipped
    ("Answer: A ... wait, no. The answer is B", "B"),
    # absent or ambiguous
    ("I think B is a reasonable choice.", None),        # no box, phrase or letter line: no guess from prose
    ("the answer is a function of the temperature", None),  # an article, not a choice
    (r"\boxed{A or B}", None),
    (r"Answer: C. But finally \boxed{A, B}", None),     # an ambiguous last box is final
    ("The answer is A or B", None),
    ("Answer: A/C", None),
    ("Answer: E", None),                                # not one of the letters
    (r"\boxed{}", None),
    ("", None),
]


@pytest.mark.parametrize(("text", "letter"), CASES)
def test_extract_choice(text, letter):
    assert extract_choice(text) == letter


def test_more_letters():
    assert extract_choice("Answer: E", letters="ABCDE") == "E"
    assert extract_choice("Answer: F", letters="ABCDE") is None


def test_choice_reward():
    assert choice_reward(r"\boxed{C}", "C")
    assert not choice_reward(r"\boxed{C}", "B")
    assert not choice_reward("no answer", "B")
    with pytest.raises(ValueError, match="gold_letter must be one of 'ABCD'"):
        choice_reward(r"\boxed{C}", "E")
    with pytest.raises(ValueError, match="upper-case"):
        extract_choice("Answer: C", letters="abcd")
