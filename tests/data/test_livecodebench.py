"""LiveCodeBench v6 from fixture files built here: upstream `code_generation_lite` rows (plain and
base64-zlib-pickled private tests, stdin and functional), the verl / Open-AgentRL parquet, tests in each form the
authors' grader accepts (JSON text, the object, a Python literal), and malformed rows."""

from __future__ import annotations

import base64
import json
import pickle
import zlib

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cleaner.data import DataError, load
from cleaner.data.livecodebench import decode_tests


def packed(value) -> str:
    """How LiveCodeBench stores private tests: base64(zlib(pickle(json string)))."""
    return base64.b64encode(zlib.compress(pickle.dumps(json.dumps(value)))).decode()


STDIN_PUBLIC = [{"input": "3\n1 2 3\n", "output": "6\n", "testtype": "stdin"}]
STDIN_PRIVATE = [{"input": "1\n5\n", "output": "5\n", "testtype": "stdin"},
                 {"input": "2\n-1 1\n", "output": "0\n", "testtype": "stdin"}]
FUNC_PUBLIC = [{"input": "[2, 7, 11]\n9", "output": "[0, 1]", "testtype": "functional"}]
FUNC_PRIVATE = [{"input": "[3, 3]\n6", "output": "[0, 1]", "testtype": "functional"}]
STARTER = "class Solution:\n    def twoSum(self, nums: List[int], target: int) -> List[int]:\n        "


def upstream_row(**overrides):
    row = {"question_title": "Sum", "question_content": "Print the sum of the numbers.", "platform": "atcoder",
           "question_id": "abc400_a", "contest_id": "abc400", "contest_date": "2025-04-05T00:00:00",
           "starter_code": "", "difficulty": "easy", "public_test_cases": json.dumps(STDIN_PUBLIC),
           "private_test_cases": json.dumps(STDIN_PRIVATE), "metadata": "{}"}
    return {**row, **overrides}


LEETCODE = upstream_row(question_title="Two Sum", question_content="Return indices of two numbers adding to target.",
                        platform="leetcode", question_id="3700", contest_id="weekly-contest-440",
                        starter_code=STARTER, difficulty="medium", public_test_cases=json.dumps(FUNC_PUBLIC),
                        private_test_cases=packed(FUNC_PRIVATE), metadata=json.dumps({"func_name": "twoSum"}))


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_upstream_rows_stdin_and_functional(tmp_path):
    atcoder, leetcode = load("livecodebench_v6", path=write_jsonl(tmp_path / "test6.jsonl", [upstream_row(), LEETCODE]))
    assert (atcoder.id, atcoder.question, atcoder.answer) == ("livecodebench_v6/abc400_a",
                                                              "Print the sum of the numbers.", "")
    assert atcoder.meta["tests"] == STDIN_PUBLIC + STDIN_PRIVATE
    assert (atcoder.meta["num_public_tests"], atcoder.meta["func_name"], atcoder.meta["starter_code"]) == (1, None, "")
    assert (atcoder.meta["platform"], atcoder.meta["contest_date"]) == ("atcoder", "2025-04-05T00:00:00")
    assert leetcode.id == "livecodebench_v6/3700"
    assert leetcode.meta["tests"] == FUNC_PUBLIC + FUNC_PRIVATE  # the private one came through base64/zlib/pickle
    assert (leetcode.meta["func_name"], leetcode.meta["starter_code"]) == ("twoSum", STARTER)


def test_upstream_parquet_in_open_agentrl_eval_layout(tmp_path):
    path = tmp_path / "livecodebench-v6" / "lcb_v6_2502_2505.parquet"
    path.parent.mkdir()
    pq.write_table(pa.Table.from_pylist([upstream_row(), LEETCODE]), path)
    assert [len(p.meta["tests"]) for p in load("livecodebench_v6", data_root=tmp_path)] == [3, 2]


def verl_row(ground_truth, extra_info, question="Solve it."):
    return {"data_source": "livecodebench", "prompt": [{"role": "user", "content": question}], "ability": "code",
            "reward_model": {"ground_truth": ground_truth, "style": "rule"}, "extra_info": extra_info}


def test_verl_parquet_three_ground_truth_layouts(tmp_path):
    rows = [
        verl_row(json.dumps(STDIN_PUBLIC + STDIN_PRIVATE), {"question_id": "abc400_a", "starter_code": None}),
        verl_row(packed(FUNC_PUBLIC), {"question_id": None, "starter_code": STARTER,
                                       "metadata": json.dumps({"func_name": "twoSum"})}),
        verl_row(json.dumps({"inputs": [[[2, 7, 11], 9]], "outputs": [[0, 1]], "fn_name": "twoSum"}),
                 {"question_id": None, "starter_code": STARTER}),
        verl_row(json.dumps({"inputs": ["3\n1 2 3\n"], "outputs": ["6\n"]}),
                 {"question_id": "q4", "starter_code": None}),
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "lcb.parquet")
    listed, packed_list, apps_func, apps_stdin = load("livecodebench_v6", path=tmp_path / "lcb.parquet")
    assert (listed.id, listed.question, listed.answer) == ("livecodebench_v6/abc400_a", "Solve it.", "")
    assert listed.meta["tests"] == STDIN_PUBLIC + STDIN_PRIVATE and listed.meta["num_public_tests"] == 3
    assert (listed.meta["func_name"], listed.meta["starter_code"]) == (None, "")
    assert packed_list.id == "livecodebench_v6/1"
    assert (packed_list.meta["tests"], packed_list.meta["func_name"]) == (FUNC_PUBLIC, "twoSum")
    assert apps_func.meta["tests"] == [{"input": "[2, 7, 11]\n9", "output": "[0, 1]", "testtype": "functional"}]
    assert (apps_func.meta["func_name"], apps_func.meta["starter_code"]) == ("twoSum", STARTER)
    assert apps_stdin.id == "livecodebench_v6/q4"
    assert apps_stdin.meta["tests"] == [{"input": "3\n1 2 3\n", "output": "6\n", "testtype": "stdin"}]


@pytest.mark.parametrize("row, message", [
    (upstream_row(private_test_cases=base64.b64encode(zlib.compress(pickle.dumps(len))).decode()),
     r"row 0 private_test_cases: neither JSON, a Python literal, nor .*refusing to load global builtins\.len"),
    (upstream_row(private_test_cases="eJy%%%not base64"), r"row 0 private_test_cases: neither JSON, a Python literal, nor base64"),
    (upstream_row(public_test_cases=json.dumps([{"input": "1", "output": "1", "testtype": "interactive"}])),
     r"row 0 public_test_cases: test 0 has testtype 'interactive'; valid: stdin, functional"),
    (upstream_row(public_test_cases=json.dumps([{"input": "1"}])),
     r"row 0 public_test_cases: test 0 is not an object with input, output and testtype"),
    ({**LEETCODE, "metadata": "{}"}, r"row 0: functional tests but no func_name"),
    ({k: v for k, v in upstream_row().items() if k != "metadata"}, r"row 0: missing column 'metadata'"),
    (verl_row(json.dumps({"inputs": ["1"], "outputs": []}), {}),
     r"row 0 reward_model.ground_truth: 'inputs' and 'outputs' must be lists of the same length"),
])
def test_malformed_lcb(tmp_path, row, message):
    path = write_jsonl(tmp_path / "lcb.jsonl", [row])
    with pytest.raises(DataError, match=message):
        load("livecodebench_v6", path=path)


APPS = {"inputs": [[[2, 7, 11], 9]], "outputs": [[0, 1]], "fn_name": "twoSum"}


@pytest.mark.parametrize("ground_truth", [
    json.dumps(APPS),                  # JSON text
    APPS,                              # the object itself, as a JSON file or a parquet struct stores it
    repr(APPS),                        # a Python literal: "{'inputs': [[[2, 7, 11], 9]], ...}"
    repr(STDIN_PUBLIC),                # a Python literal of the list layout
    packed(APPS),                      # LiveCodeBench's compressed form
], ids=["json", "object", "literal-apps", "literal-list", "compressed"])
def test_tests_in_each_form_the_authors_grader_accepts(tmp_path, ground_truth):
    """Each form gives the same tests. Checked red: without the literal branch (literal ids fail), without the
    object branch (object fails with 'expected tests as text')."""
    [problem] = load("livecodebench_v6", path=write_jsonl(tmp_path / "lcb.jsonl", [verl_row(ground_truth, {})]))
    if ground_truth == repr(STDIN_PUBLIC):
        assert problem.meta["tests"] == STDIN_PUBLIC and problem.meta["func_name"] is None
    else:
        assert problem.meta["tests"] == [{"input": "[2, 7, 11]\n9", "output": "[0, 1]", "testtype": "functional"}]
        assert problem.meta["func_name"] == "twoSum"


def test_a_literal_is_parsed_never_evaluated(tmp_path):
    """Code in the place of a literal is refused, and nothing of it runs (checked on the host: no file appears).
    Checked red: with `eval` in place of `ast.literal_eval` the file is created."""
    marker = tmp_path / "ran"
    code = f"__import__('pathlib').Path({str(marker)!r}).write_text('x') or {{'inputs': [], 'outputs': []}}"
    with pytest.raises(DataError, match="row 0 reward_model.ground_truth: neither JSON, a Python literal, nor base64"):
        load("livecodebench_v6", path=write_jsonl(tmp_path / "lcb.jsonl", [verl_row(code, {})]))
    assert not marker.exists()
    assert decode_tests("12", "x") == 12  # JSON first: a number is JSON (and then not a list of tests)
    with pytest.raises(DataError, match="x: expected tests as text, an object or a list, got float"):
        decode_tests(1.5, "x")
