"""Math loaders on the real files (a pinned download in <repository>/data, or ../shared/data; skipped where neither
holds the file), path resolution (fixture files in temporary folders standing for every place a file is looked
for), and malformed files. Expected values were read off the files by hand (see shared/data/SOURCES.md)."""

from __future__ import annotations

import json
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cleaner import data
from cleaner.data import DataError, load


def real_file(relpath):
    """A real file from the first default folder that holds it (<repository>/data, where `python -m
    harness.prepare_data` downloads the pinned copies, then ../shared/data), whatever CLEANER_DATA_ROOT says; the
    test skips when neither does (the parquet copies are in ../shared/data only)."""
    for root in (data.DOWNLOAD_ROOT, data.SHARED_ROOT):
        if (root / relpath).is_file():
            return root / relpath
    pytest.skip(f"{relpath} is in neither {data.DOWNLOAD_ROOT} nor {data.SHARED_ROOT}")


def real(name, relpath=None):
    """The set `name` loaded from its real file (`relpath`, default the set's own)."""
    return load(name, path=real_file(relpath or data.DATASETS[name].relpath))


@pytest.mark.parametrize("name, rows", [("aime24", 30), ("aime25", 30), ("math500", 500), ("dapo_math_17k", 17917),
                                        ("aime_1983_2023", 975)])
def test_real_row_counts_and_unique_ids(name, rows):
    problems = real(name)
    assert len(problems) == rows
    assert len({p.id for p in problems}) == rows
    assert all(p.id.startswith(name + "/") and p.question and isinstance(p.answer, str) for p in problems)


def test_aime24_jsonl_fields_as_written():
    p = real("aime24")
    assert (p[0].id, p[0].answer) == ("aime24/60", "204")
    assert p[0].question.startswith("Every morning Aya goes for a $9$-kilometer-long walk")
    assert p[0].meta["url"].endswith("2024_AIME_I_Problems/Problem_1")
    assert (p[7].id, p[7].answer) == ("aime24/67", "025")  # I-2, zero padding kept
    assert p[0].source == str(real_file("aime24/test.jsonl"))


def _contest_position(url: str) -> int:
    part, number = re.search(r"2024_AIME_(I+)_Problems/Problem_(\d+)$", url).groups()
    return (len(part) - 1) * 15 + int(number) - 1


def test_aime24_jsonl_and_parquet_agree_by_url_order():
    """The parquet is in contest order, the jsonl in url-string order: sorting the jsonl by the contest position
    in its url gives the parquet's answers. 18 of 30 problem texts are identical after the parquet's instruction
    suffix is stripped (the other 12 differ in LaTeX or whitespace); each of those sits at the same position."""
    parquet = real("aime24", "aime24/aime24.parquet")
    jsonl = sorted(real("aime24"), key=lambda p: _contest_position(p.meta["url"]))
    assert [p.answer for p in parquet] == [p.answer for p in jsonl]
    assert parquet[1].answer == "025"
    same_text = [i for i, p in enumerate(parquet) if p.question == jsonl[i].question]
    assert len(same_text) == 18
    texts = {p.question: i for i, p in enumerate(jsonl)}
    assert all(texts.get(p.question, i) == i for i, p in enumerate(parquet))
    assert parquet[0].meta["instruction"] == " Let's think step by step and output the final answer within \\boxed{}."
    assert parquet[0].question.endswith("including the $t$ minutes spent in the coffee shop.")


def test_aime25_jsonl_and_parquet_same_answers_in_order():
    parquet, jsonl = real("aime25", "aime25/aime25.parquet"), real("aime25")
    assert jsonl[0].question == "Find the sum of all integer bases $b>9$ for which $17_b$ is a divisor of $97_b.$"
    assert jsonl[0].meta["instruction"] == "\nPlease reason step by step, and put your final answer within \\boxed{}."
    assert not any("Please reason step by step" in p.question for p in jsonl)
    assert (jsonl[19].answer, parquet[19].answer) == ("336", "336^\\circ")
    assert [int(p.answer) for p in jsonl] == [int(p.answer.removesuffix("^\\circ")) for p in parquet]
    assert [p.answer for p in jsonl[:3]] == ["70", "588", "16"]


def test_math500_dapo_aime_1983_2023_spot_checks():
    math500 = real("math500")
    assert math500[0].id == "math500/test/precalculus/807.json"
    assert math500[0].answer == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert (math500[0].meta["subject"], math500[0].meta["level"]) == ("Precalculus", 2)
    assert math500[-1].answer == "106^\\circ"
    dapo = real("dapo_math_17k")
    assert (dapo[0].id, dapo[0].answer, dapo[0].meta["data_source"]) == ("dapo_math_17k/0", "34", "DAPO-17k")
    assert dapo[0].question.startswith("In triangle $ABC$, $\\sin \\angle A = \\frac{4}{5}$")
    assert sum(p.answer == "22099999999999998951424" for p in dapo) == 1  # the float artefact, as written
    aime = real("aime_1983_2023")
    assert (aime[0].id, aime[0].answer) == ("aime_1983_2023/1983-1-1", "60")
    assert (aime[-1].id, aime[-1].answer) == ("aime_1983_2023/2023-2-0", "363")
    assert max(p.meta["year"] for p in aime) == 2023


# ---- resolution ------------------------------------------------------------------------------------------------

def _aime25_file(path, answer):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"prompt": f"Problem {answer}?", "answer": answer}) + "\n")
    return path


@pytest.fixture
def five_sources(tmp_path, monkeypatch):
    """aime25 in five places, each with its own answer: an explicit file (1), a data root passed as an argument (2),
    CLEANER_DATA_ROOT (3), the download folder <repository>/data (4), ../shared/data (5)."""
    explicit = _aime25_file(tmp_path / "mine.jsonl", 1)
    for answer, root in enumerate(("arg_root", "env_root", "repo_data", "shared"), 2):
        _aime25_file(tmp_path / root / "aime25/aime25.jsonl", answer)
    monkeypatch.setenv("CLEANER_DATA_ROOT", str(tmp_path / "env_root"))
    monkeypatch.setattr(data, "DOWNLOAD_ROOT", tmp_path / "repo_data")
    monkeypatch.setattr(data, "SHARED_ROOT", tmp_path / "shared")
    return explicit, tmp_path / "arg_root"


def answer_of(**kw):
    (p,) = load("aime25", **kw)
    return p.answer


def test_resolution_order(five_sources, tmp_path, monkeypatch):
    """Checked red: the default folders swapped (shared before the download folder); CLEANER_DATA_ROOT read after
    the default folders; the argument root after the environment's."""
    explicit, arg_root = five_sources
    assert answer_of(path=explicit, data_root=arg_root) == "1"
    assert answer_of(data_root=arg_root) == "2"
    assert answer_of() == "3"  # the environment's root beats both default folders
    monkeypatch.delenv("CLEANER_DATA_ROOT")
    assert answer_of() == "4"  # <repository>/data beats ../shared/data
    (tmp_path / "repo_data/aime25/aime25.jsonl").unlink()
    assert answer_of() == "5"  # the first default folder that holds the file
    monkeypatch.setenv("CLEANER_DATA_ROOT", "")
    assert answer_of() == "5"  # an empty variable is unset


@pytest.mark.parametrize("how", ["argument", "environment"])
def test_a_root_without_the_file_does_not_fall_through(five_sources, tmp_path, monkeypatch, how):
    """Both default folders hold the file, but a root that was set is the only place looked at. Checked red: a
    missing file under CLEANER_DATA_ROOT falling through to the default folders."""
    empty = tmp_path / "empty_root"
    kw = {"data_root": empty} if how == "argument" else {}
    monkeypatch.setenv("CLEANER_DATA_ROOT", str(empty if how == "environment" else tmp_path / "env_root"))
    with pytest.raises(DataError, match=re.escape(f"aime25: no data file found ({empty}/aime25/aime25.jsonl does "
                                                  "not exist")) as e:
        load("aime25", **kw)
    download = "python -m harness.prepare_data aime25" + (f" --data-root {empty}" if how == "argument" else
                                                           f" (into {empty})")
    assert download in str(e.value)


def test_the_missing_file_error_names_every_way(tmp_path, monkeypatch):
    """Checked red: the download command left out of the message; offered for gpqa_diamond too."""
    monkeypatch.delenv("CLEANER_DATA_ROOT", raising=False)
    monkeypatch.setattr(data, "DOWNLOAD_ROOT", tmp_path / "repo_data")
    monkeypatch.setattr(data, "SHARED_ROOT", tmp_path / "absent")
    with pytest.raises(DataError) as e:
        load("aime24")
    lines = str(e.value).splitlines()
    assert lines[0] == ("aime24: no data file found (no data root is set, and none of the default files exists: "
                        f"{tmp_path}/repo_data/aime24/test.jsonl, {tmp_path}/absent/aime24/test.jsonl). Supply it "
                        "one of 3 ways:")
    assert lines[1] == ("  1. download the pinned public copy: python -m harness.prepare_data aime24 (into "
                        f"{tmp_path}/repo_data);")
    assert lines[2] == ("  2. a data root holding aime24/test.jsonl: the environment variable CLEANER_DATA_ROOT=DIR, "
                        "or load('aime24', data_root=DIR);")
    assert lines[3].startswith("  3. an explicit path: load('aime24', path=FILE), or data.eval_paths.aime24=FILE")
    with pytest.raises(DataError) as e:
        load("gpqa_diamond")
    message = str(e.value)
    assert "It is not downloaded by name (its authors ask that it not be redistributed in plain text): get " \
           "gpqa-diamond/gpqa_diamond.parquet from the Hugging Face data set Gen-Verse/Open-AgentRL-Eval" in message
    assert "harness.prepare_data" not in message and "CLEANER_DATA_ROOT=DIR" in message and "path=FILE" in message


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
