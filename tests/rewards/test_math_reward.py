"""Math answers: the last \\boxed{} is extracted with balanced braces and checked with math-verify against all 60
AIME 2024/2025 gold answers in the forms models write, including the `336^\\circ` gold of one public copy."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from cleaner import data
from cleaner.rewards import extract_boxed, math_reward


def _real_file(relpath: str) -> Path:
    """A real benchmark file from the first default data folder that holds it (<repository>/data, where
    `python -m harness.prepare_data` downloads the pinned copies, then ../shared/data); the test skips without."""
    for root in (data.DOWNLOAD_ROOT, data.SHARED_ROOT):
        if (root / relpath).is_file():
            return root / relpath
    pytest.skip(f"{relpath} is in neither {data.DOWNLOAD_ROOT} nor {data.SHARED_ROOT}")


def _aime_golds() -> list[str]:
    aime24 = [json.loads(line)["answer"] for line in _real_file("aime24/test.jsonl").read_text().splitlines()]
    aime25 = [json.loads(line)["answer"] for line in _real_file("aime25/aime25.jsonl").read_text().splitlines()]
    assert len(aime24) == len(aime25) == 30
    assert all(isinstance(a, str) for a in aime24) and all(isinstance(a, int) for a in aime25)
    assert "025" in aime24  # the zero-padded strings the checker must accept as 25
    return aime24 + [str(a) for a in aime25]


@pytest.fixture(scope="module")
def golds() -> list[str]:
    return _aime_golds()


@pytest.mark.parametrize(("text", "content"), [
    (r"\boxed{25}", "25"),
    (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),
    (r"first \boxed{3}, then \boxed{ 25 }.", " 25 "),
    (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),            # escaped braces do not close the box
    (r"\boxed {7}", "7"),
    (r"\boxed{\boxed{5}}", "5"),                       # the last opening wins
    (r"\boxed{12} and a truncated \boxed{\frac{1", None),  # an unclosed last box is no answer
    ("no box here: 25", None),
    (r"\boxed{}", ""),
])
def test_extract_boxed(text, content):
    assert extract_boxed(text) == content


def test_all_aime_golds_verify_against_themselves_in_written_forms(golds):
    assert len(golds) == 60
    for gold in golds:
        n = int(gold)
        forms = [
            rf"\boxed{{{n}}}",
            rf"\boxed{{{n:03d}}}",
            rf"The answer is $\boxed{{{n}}}$.",
            rf"\boxed{{{n}^\circ}}",
            rf"We get 17 and 2024, so first \boxed{{{n + 7}}}. Checking again, the answer is \boxed{{{n}}}.",
        ]
        for form in forms:
            assert math_reward(form, gold), (gold, form)
        assert not math_reward(rf"\boxed{{{n + 1}}}", gold), gold
        assert not math_reward(rf"\boxed{{{n}}} was wrong; it is \boxed{{{n + 1}}}", gold), gold
        assert not math_reward(f"The answer is {n}.", gold), gold  # no box, no answer


def test_gold_written_in_degrees_in_the_verl_parquet():
    """The one public copy that writes AIME 2025 II-5's gold as `336^\\circ` (not downloadable: ../shared/data only)."""
    table = pq.read_table(_real_file("aime25/aime25.parquet"))
    golds = [row["ground_truth"] for row in table.column("reward_model").to_pylist()]
    assert golds.count("336^\\circ") == 1


def test_a_gold_in_degrees_accepts_the_plain_number():
    assert math_reward(r"so the angle is $\boxed{336}$", "336^\\circ")
    assert math_reward(r"\boxed{336^\circ}", "336^\\circ")
    assert not math_reward(r"\boxed{337}", "336^\\circ")
    # A strict string match, as the authors used, would reject the plain number:
    assert extract_boxed(r"\boxed{336}") != "336^\\circ"


@pytest.mark.parametrize(("response", "gold", "expected"), [
    (r"\boxed{0.5}", r"\frac{1}{2}", True),
    (r"\boxed{\frac{1}{2}}", "0.5", True),
    (r"\boxed{\dfrac12}", "0.5", True),
    (r"\boxed{025}", 25, True),
    (r"\boxed{25}", "025", True),
    (r"\boxed{ 25 }", "25", True),
    (r"\boxed{25.}", "25", True),                      # trailing period read as punctuation (decided)
    (r"\boxed{\$25}", "25", True),
    (r"\boxed{\text{25}}", "25", True),
    (r"\boxed{25.5}", "25", False),
    (r"\boxed{2,5}", "25", False),                     # a set {2, 5}, not 25
    (r"\boxed{}", "25", False),
    (r"\boxed{\sqrt{2}}", r"\sqrt2", True),
    (r"\boxed{\sqrt{3}}", r"\sqrt2", False),
])
def test_math_reward_forms(response, gold, expected):
    assert math_reward(response, gold) is expected


def test_unparseable_gold_is_an_error():
    with pytest.raises(ValueError, match="cannot parse the gold answer"):
        math_reward(r"\boxed{1}", "")
