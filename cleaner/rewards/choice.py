"""Multiple-choice answers (GPQA): the chosen letter, read from the formats models actually write.

Order of preference: the last `\\boxed{...}` holding a letter (`\\boxed{C}`, `\\boxed{\\text{(C)}}`,
`\\boxed{C. 4.2 eV}`); else the last explicit answer phrase (`Answer: C`, `the correct answer is (C)`,
`**Answer:** C`, `answer is option B`); else a last line that is only a letter (`C)`, `(C)`, `**C**`, `C.`).
A lower-case letter counts only where it cannot be an English word: inside a box, in parentheses, alone on the
last line, or right after an answer phrase when followed by `.`, `)` or the end of the text (`answer is c.`;
never `the answer is a function of ...`). Two letters offered together (`A or B`, `A, C`, `A/B`, `A and B`)
are ambiguous: None, and an ambiguous last box is final (no fall-back to an earlier phrase). A last box with
no letter (`\\boxed{42}`) is skipped. None when nothing matches.

The authors' exact GPQA parser is not reproduced; this one is deliberately conservative: it never guesses a
letter from the prose (such as the last capital A-D in the text).
"""

from __future__ import annotations

import re

from cleaner.rewards.math import extract_boxed

_MARKUP = re.compile(r"\\(?:text|textbf|mathrm|mathbf)\s*\{([^{}]*)\}")
_PHRASE = r"answer(?:\s+is)?\s*:?\s*(?:option|choice)?\s*:?\s*"


def _clean(text: str) -> str:
    """`text` without `\\text{}`-style wrappers, bold markers and dollar signs."""
    return _MARKUP.sub(r"\1", text).replace("**", "").replace("$", "")


def _ambiguous(rest: str, letters: str) -> bool:
    """Whether `rest` (what follows a letter) offers another letter: `or B`, `, C`, `/D`, `and A`."""
    return re.match(rf"\s*(?:or|and|,|/|&)\s*\(?[{letters}]\b", rest, re.IGNORECASE) is not None


def _from_box(content: str, letters: str) -> str | None:
    """The letter a box starts with (`C`, `(C)`, `C. 4.2 eV`); "" when it offers two; None when it has none."""
    match = re.fullmatch(rf"\s*\(?([{letters}])\)?([\s.:),/&].*)?", _clean(content),
                         re.IGNORECASE | re.DOTALL)
    if match is None:
        return None
    return "" if _ambiguous(match.group(2) or "", letters) else match.group(1).upper()


def _from_phrase(text: str, letters: str) -> str | None:
    pattern = rf"{_PHRASE}(\()?([{letters}])(?![A-Za-z0-9])(\))?"
    matches = list(re.finditer(pattern, text, re.IGNORECASE))
    for match in reversed(matches):
        letter, rest = match.group(2), text[match.end():]
        if letter.islower() and not match.group(1) and not re.match(r"[.)]|\s*$", rest):
            continue  # `answer is a function ...`: an article, not a choice
        return None if _ambiguous(rest, letters) else letter.upper()
    return None


def _from_last_line(text: str, letters: str) -> str | None:
    lines = [line for line in text.splitlines() if line.strip()]
    match = re.fullmatch(rf"\s*\(?([{letters}])[.)]?\s*", lines[-1], re.IGNORECASE) if lines else None
    return match.group(1).upper() if match else None


def extract_choice(text: str, letters: str = "ABCD") -> str | None:
    """The letter (upper case, one of `letters`) the response chose, or None when absent or ambiguous."""
    if not re.fullmatch(r"[A-Z]+", letters):
        raise ValueError(f"letters must be upper-case A-Z, got {letters!r}")
    boxed = extract_boxed(text)
    if boxed is not None and (letter := _from_box(boxed, letters)) is not None:
        return letter or None  # the final box decides, even when it is ambiguous ("")
    cleaned = _clean(text)
    return _from_phrase(cleaned, letters) or _from_last_line(cleaned, letters)


def choice_reward(text: str, gold_letter: str, letters: str = "ABCD") -> bool:
    """Whether the response chose `gold_letter` (one of `letters`)."""
    if len(gold_letter) != 1 or gold_letter not in letters:
        raise ValueError(f"gold_letter must be one of {letters!r}, got {gold_letter!r}")
    return extract_choice(text, letters) == gold_letter
