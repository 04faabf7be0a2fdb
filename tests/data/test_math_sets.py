"""Math loaders on the real shared files (skipped where ../shared/data is absent), path resolution, and malformed
files. Expected values were read off the files by hand (see shared/data/SOURCES.md)."""

from __future__ import annotations

import json
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cleaner import data
from cleaner.data import DataError, load

SHARED = data.SHARED_ROOT
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data is absent on this machine")


def shared(name, relpath=None):
    """Load from the shared folder explicitly, whatever CLEANER_DATA_ROOT says."""
    return load(name, path=SHARED / relpath) if relpath else load(name, data_root=SHARED)


@needs_shared
@pytest.mark.parametrize("name, rows", [("aime24", 30), ("aime25", 30), ("math500", 500), ("dapo_math_17k", 17917),
                                        ("aime_1983_2023", 975)])
def test_shared_row_counts_and_unique_ids(name, rows):
    problems = shared(name)
    assert len(problems) == rows
    assert len({p.id for p in problems}) == rows
    assert all(p.id.startswith(name + "/") and p.question and isinstance(p.answer, str) for p in problems)


@needs_shared
def test_aime24_jsonl_fields_as_written():
    p = shared("aime24")
    assert (p[0].id, p[0].answer) == ("aime24/60", "204")
    assert p[0].question.startswith("Every morning Aya goes for a $9$-kilometer-long walk")
    assert p[0].meta["url"].endswith("2024_AIME_I_Problems/Problem_1")
    assert (p[7].id, p[7].answer) == ("aime24/67", "025")  # I-2, zero padding kept
    assert p[0].source == str(SHARED / "aime24/test.jsonl")


def _contest_position(url: str) -> int:
    part, number = re.search(r"2024_AIME_(I+)_Problems/Problem_(\d+)$", url).groups()
    return (len(part) - 1) * 15 + int(number) - 1


@needs_shared
def test_aime24_jsonl_and_parquet_agree_by_url_order():
    """The parquet is in contest order, the jsonl in url-string order: sorting the jsonl by the contest position
    in its url gives the parquet's answers. 18 of 30 problem texts are identical after the parquet's instruction
    suffix is stripped (the other 12 differ in LaTeX or whitespace); each of those sits at the same position."""
    jsonl = sorted(shared("aime24"), key=lambda p: _contest_position(p.meta["url"]))
    parquet = shared("aime24", "aime24/aime24.parquet")
    assert [p.answer for p in parquet] == [p.answer for p in jsonl]
    assert parquet[1].answer == "025"
    same_text = [i for i, p in enumerate(parquet) if p.question == jsonl[i].question]
    assert len(same_text) == 18
    texts = {p.question: i for i, p in enumerate(jsonl)}
    assert all(texts.get(p.question, i) == i for i, p in enumerate(parquet))
    assert parquet[0].meta["instruction"] == " Let's think step by step and output the final answer within \\boxed{}."
    assert parquet[0].question.endswith("including the $t$ minutes spent in the coffee shop.")


@needs_shared
def test_aime25_jsonl_and_parquet_same_answers_in_order():
    jsonl, parquet = shared("aime25"), shared("aime25", "aime25/aime25.parquet")
    assert jsonl[0].question == "Find the sum of all integer bases $b>9$ for which $17_b$ is a divisor of $97_b.$"
    assert jsonl[0].meta["instruction"] == "\nPlease reason step by step, and put your final answer within \\boxed{}."
    assert not any("Please reason step by step" in p.question for p in jsonl)
    assert (jsonl[19].answer, parquet[19].answer) == ("336", "336^\\circ")
    assert [int(p.answer) for p in jsonl] == [int(p.answer.removesuffix("^\\circ")) for p in parquet]
    assert [p.answer for p in jsonl[:3]] == ["70", "588", "16"]


@needs_shared
def test_math500_dapo_aime_1983_2023_spot_checks():
    math500 = shared("math500")
    assert math500[0].id == "math500/test/precalculus/807.json"
    assert math500[0].answer == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert (math500[0].meta["subject"], math500[0].meta["level"]) == ("Precalculus", 2)
    assert math500[-1].answer == "106^\\circ"
    dapo = shared("dapo_math_17k")
    assert (dapo[0].id, dapo[0].answer, dapo[0].meta["data_source"]) == ("dapo_math_17k/0", "34", "DAPO-17k")
    assert dapo[0].question.startswith("In triangle $ABC$, $\\sin \\angle A = \\frac{4}{5}$")
    assert sum(p.answer == "22099999999999998951424" for p in dapo) == 1  # the float artefact, as written
    aime = shared("aime_1983_2023")
    assert (aime[0].id, aime[0].answer) == ("aime_1983_2023/1983-1-1", "60")
    assert (aime[-1].id, aime[-1].answer) == ("aime_1983_2023/2023-2-0", "363")
    assert max(p.meta["year"] for p in aime) == 2023


# ---- resolution ------------------------------------------------------------------------------------------------

def _aime25_file(path, answer):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"prompt": f"Problem {answer}?", "answer": answer}) + "\n")
    return path


@pytest.fixture
def four_sources(tmp_path, monkeypatch):
    explicit = _aime25_file(tmp_path / "mine.jsonl", 1)
    _aime25_file(tmp_path / "arg_root/aime25/aime25.jsonl", 2)
    _aime25_file(tmp_path / "env_root/aime25/aime25.jsonl", 3)
    _aime25_file(tmp_path / "shared/aime25/aime25.jsonl", 4)
    monkeypatch.setenv("CLEANER_DATA_ROOT", str(tmp_path / "env_root"))
    monkeypatch.setattr(data, "SHARED_ROOT", tmp_path / "shared")
    return explicit, tmp_path / "arg_root"


def answer_of(**kw):
    (p,) = load("aime25", **kw)
    return p.answer


def test_resolution_order(four_sources, monkeypatch):
    explicit, arg_root = four_sources
    assert answer_of(path=explicit, data_root=arg_root) == "1"
    assert answer_of(data_root=arg_root) == "2"
    assert answer_of() == "3"
    monkeypatch.delenv("CLEANER_DATA_ROOT")
    assert answer_of() == "4"


def test_a_root_without_the_file_does_not_fall_through(four_sources, tmp_path):
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "empty_root/aime25/aime25.jsonl"))):
        load("aime25", data_root=tmp_path / "empty_root")  # env and shared hold it, but were not asked


def test_offline_error_names_all_three_ways(tmp_path, monkeypatch):
    monkeypatch.delenv("CLEANER_DATA_ROOT", raising=False)
    monkeypatch.setattr(data, "SHARED_ROOT", tmp_path / "absent")
    with pytest.raises(DataError) as e:
        load("aime24")
    message = str(e.value)
    assert "path=" in message and "data_root=" in message and "CLEANER_DATA_ROOT" in message
    assert "HuggingFaceH4/aime_2024" in message and "aime24/test.jsonl" in message
    with pytest.raises(DataError, match="Gen-Verse/Open-AgentRL-Eval.*yourself"):
        load("gpqa_diamond")


def test_unknown_name_lists_valid_ones():
    with pytest.raises(ValueError, match="unknown data set 'aime2024'; valid: aime24, aime25, aime_1983_2023, "
                                         "dapo_math_17k, gpqa_diamond, livecodebench_v6, math500"):
        load("aime2024")


# ---- malformed files -------------------------------------------------------------------------------------------

def _write(path, text):
    path.write_text(text)
    return path


def _verl_parquet(path, rows):
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


GOOD = '{"prompt": "1+1?", "answer": 2}\n'
MALFORMED = [  # (name, file name, content or a writer, the message expected)
    ("aime25", "a.jsonl", GOOD + '{"prompt": "2+2?", "ans', r"a\.jsonl: line 2: not JSON"),
    ("aime25", "a.jsonl", GOOD + '{"prompt": "2+2?"}\n', r"row 1: missing column 'answer'"),
    ("aime25", "a.jsonl", "", r"a\.jsonl: empty file \(no rows\)"),
    ("aime25", "a.jsonl", "\n\n", r"empty file \(no rows\)"),
    ("aime25", "a.jsonl", GOOD + "[1, 2]\n", r"row 1 is a list, not an object"),
    ("aime25", "a.txt", GOOD, r"a\.txt: unsupported file extension '\.txt'; expected one of \.jsonl, \.json"),
    ("aime25", "a.parquet", "not parquet at all", r"a\.parquet: not a readable parquet file"),
    ("aime25", "a.jsonl", '{"prompt": "1+1?", "answer": 2.5}\n', r"row 0: answer 2\.5 is a float"),
    ("aime_1983_2023", "a.json", "", r"a\.json: empty file"),
    ("aime_1983_2023", "a.json", '{"problem": "x"}', r"expected a JSON list of objects, got a dict"),
    ("aime_1983_2023", "a.json", '[{"problem": "x", "answer": "1"', r"a\.json: not JSON"),
    ("math500", "a.jsonl", '{"problem": "x", "answer": "1"}\n', r"row 0: missing column 'unique_id'"),
    ("dapo_math_17k", "a.jsonl", GOOD, r"row 0: not a verl row \(needs columns 'prompt' and 'reward_model'"),
    ("dapo_math_17k", "a.parquet", lambda p: _verl_parquet(p, [{"prompt": [{"role": "user", "content": "x"}],
                                                                 "reward_model": {"style": "rule"}}]),
     r"row 0: verl 'reward_model' has no 'ground_truth'"),
    ("dapo_math_17k", "a.parquet", lambda p: _verl_parquet(p, [{"prompt": [{"role": "system", "content": "x"}],
                                                                 "reward_model": {"ground_truth": "1"}}]),
     r"row 0: verl 'prompt' has no user message"),
]


@pytest.mark.parametrize("name, file_name, content, message", MALFORMED)
def test_malformed_file_names_path_format_and_fault(tmp_path, name, file_name, content, message):
    path = tmp_path / file_name
    content(path) if callable(content) else _write(path, content)
    with pytest.raises(DataError, match=message) as e:
        load(name, path=path)
    assert str(path) in str(e.value)
    assert f"expected for {name}: " in str(e.value)


def test_missing_explicit_path(tmp_path):
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'nope.jsonl'}: no such file")):
        load("aime24", path=tmp_path / "nope.jsonl")


def test_verl_system_prompt_and_jsonl_blank_lines(tmp_path):
    path = _verl_parquet(tmp_path / "d.parquet", [
        {"data_source": "x", "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q1"}],
         "ability": "math", "reward_model": {"ground_truth": "7", "style": "rule"}, "extra_info": {"index": 5}}])
    (p,) = load("dapo_math_17k", path=path)
    assert (p.id, p.question, p.answer, p.meta["system"], p.meta["extra_info"]) == (
        "dapo_math_17k/0", "Q1", "7", "Be brief.", {"index": 5})
    two = _write(tmp_path / "b.jsonl", GOOD + "\n" + GOOD.replace("2}", "3}") + "\n\n")
    assert [p.answer for p in load("aime25", path=two)] == ["2", "3"]
