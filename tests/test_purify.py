"""The offline purifier on the bundled example log, its CLI, and its handling of bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cleaner import chat, purify
from cleaner.trajectory import read_jsonl

EXAMPLE = Path(purify.__file__).parent / "examples" / "tool_errors.jsonl"


def by_id(path: Path) -> dict[str, dict]:
    return {r["id"]: r for r in map(json.loads, path.read_text().splitlines())}


@pytest.fixture(scope="module")
def purified(tmp_path_factory):
    out = tmp_path_factory.mktemp("purify") / "out.jsonl"
    assert purify.main([str(EXAMPLE), str(out), "--tokenizer", "lab"]) == 0
    return out


def test_example_log_totals(purified):
    stats = purify.saar.SaarStats.total([r["purification"] for r in by_id(purified).values()])
    # per trajectory: 1 shallow (NameError), 1 shallow (SyntaxError), 1 deep (ZeroDivisionError), 1 deep (time-out),
    # 3 shallow then exhausted (ModuleNotFoundError x4), 1 shallow (malformed), none (infra), 2 shallow, none (clean)
    expected = {"first_attempt_calls": 11, "first_attempt_failures": 8, "infra_failures": 1, "lookahead_calls": 10,
                "rollbacks_triggered": 8, "rollbacks_recovered": 7, "rollbacks_exhausted": 1, "rollbacks_abandoned": 0,
                "rollbacks_interrupted": 0, "splices_shallow": 8, "splices_deep": 2, "final_calls": 11,
                "final_failures": 1, "saar_applied": 9}
    assert {k: stats[k] for k in expected} == expected
    assert stats["final_failures_by_class"] == {"ModuleNotFoundError": 1}
    assert stats["rollbacks_triggered_by_class"] == {"ModuleNotFoundError": 1, "NameError": 2, "SyntaxError": 1,
                                                      "TypeError": 1, "ZeroDivisionError": 1, "malformed": 1, "timeout": 1}


def test_shallow_output_messages(purified):
    src, out = by_id(EXAMPLE)["nameerror-fixed"], by_id(purified)["nameerror-fixed"]
    fix = "total = sum(i**2 for i in range(1, 101))\nprint(total)"
    assert out["messages"] == src["messages"][:2] + [
        {"role": "assistant", "content": "I'll add up the squares directly with Python.\n" + chat.hermes_call_text(fix)},
        {"role": "tool", "content": "338350"},
        src["messages"][-1],
    ]
    assert (out["answer"], out["source"]) == ("338350", "example")  # unrelated fields are kept


def test_exhausted_keeps_the_last_failure_under_the_original_reasoning(purified):
    out = by_id(purified)["never-fixed"]["messages"]
    assert [m["role"] for m in out] == ["system", "user", "assistant", "tool", "assistant"]
    assert out[2]["content"].startswith("I'll use numpy's determinant.\n<tool_call>")
    assert "import scipy.linalg" in out[2]["content"]
    assert out[3]["content"].endswith("ModuleNotFoundError: No module named 'scipy'")


def test_deep_output_keeps_the_retry_status_field(purified):
    out = by_id(purified)["timeout-fixed"]["messages"]
    assert out[2]["content"].startswith("Trial division is too slow.")
    assert out[3] == {"role": "tool", "content": "664579", "status": "ok"}


def test_untouched_records_are_identical_but_for_the_stats(purified):
    for rid in ("infra-failure", "clean"):
        out = dict(by_id(purified)[rid])
        out.pop("purification")
        assert out == by_id(EXAMPLE)[rid]


def test_token_file_matches_the_messages(purified, tok):
    trajs = {t.id: t for t in read_jsonl(purified.with_name("out.tokens.jsonl"))}
    records = by_id(purified)
    assert set(trajs) == set(records)
    for rid, traj in trajs.items():
        msgs = records[rid]["messages"]
        assert traj.text == tok.apply_chat_template(msgs, tokenize=False).removesuffix("\n")
        assert traj.stats == records[rid]["purification"]
        assert len(traj.ids) == len(traj.loss_mask) == len(traj.provenance)


def test_p_zero_changes_no_message(tmp_path):
    out = tmp_path / "out.jsonl"
    assert purify.main([str(EXAMPLE), str(out), "--rollback-probability", "0"]) == 0
    for rid, rec in by_id(out).items():
        assert rec["messages"] == by_id(EXAMPLE)[rid]["messages"]


@pytest.mark.parametrize(
    "output, status, error_type",
    [
        ('Traceback (most recent call last):\n  File "<string>", line 1, in <module>\nNameError: name \'x\' is not defined',
         "error", "NameError"),
        ('  File "<string>", line 1\n    x = (\n        ^\nSyntaxError: \'(\' was never closed', "error", "SyntaxError"),
        ("Traceback (most recent call last):\n  ...\nnumpy.linalg.LinAlgError: Singular matrix", "error", "LinAlgError"),
        ("Traceback (most recent call last):\n  ...\nMemoryError", "memory_limit", "MemoryError"),
        ("Traceback (most recent call last):\n  ...\nTimeoutError: cell exceeded 4 s", "timeout", "TimeoutError"),
        ("Execution timed out after 4.0 seconds.", "timeout", "Timeout"),
        ("timeout = 5", "ok", None),
        ("ValueError is a class", "ok", None),
        ("42", "ok", None),
        ("", "ok", None),
    ],
)
def test_classify_output(output, status, error_type):
    result = purify.classify_output(output)
    assert (result.status, result.error_type) == (status, error_type)


GOOD = {"id": 1, "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "\\boxed{1}"}]}


@pytest.mark.parametrize(
    "lines, message",
    [
        (['{"id": 1, "messages": [', ], ":1: not valid JSON"),
        ([json.dumps(GOOD), json.dumps({"id": 2})], ':2: expected an object {"id": ..., "messages": [...]}'),
        ([json.dumps(GOOD), json.dumps(GOOD)], ":2: duplicate id 1"),
        ([json.dumps({"id": 3, "messages": [{"role": "user", "content": 5}]})], "message 0 must be an object with a string"),
        ([json.dumps({"id": 4, "messages": [{"role": "user", "content": "q"}]})], "then an assistant message"),
        ([json.dumps({"id": 5, "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"},
                                            {"role": "function", "content": "x"}]})],
         "message 1 makes no tool call (hermes format), so it must be the last message"),
        ([json.dumps({"id": 6, "messages": [{"role": "user", "content": "q"},
                                            {"role": "assistant", "content": chat.hermes_call_text("1")},
                                            {"role": "user", "content": "x"}]})],
         "message 2 must be a tool message, not role 'user'"),
        ([json.dumps({"id": 7, "messages": [{"role": "user", "content": "q"},
                                            {"role": "assistant", "content": chat.hermes_call_text("1")},
                                            {"role": "tool", "content": "1", "status": "crashed"}]})],
         "unknown tool status 'crashed'; valid: ok, error"),
        ([json.dumps({"id": 8, "messages": [{"role": "tool", "content": "q"}, {"role": "assistant", "content": "a"}]})],
         "message 0 has role 'tool' before the first assistant message"),
    ],
)
def test_bad_input_names_the_line_and_writes_nothing(tmp_path, capsys, lines, message):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("\n".join(lines) + "\n")
    out.write_text("previous result\n")
    assert purify.main([str(src), str(out), "--tokenizer", "lab"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {src}") and message in err
    assert out.read_text() == "previous result\n"
    assert not out.with_name("out.tokens.jsonl").exists()


def test_binary_input_is_a_clear_error(tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"\xff\xfe\x00garbage")
    assert purify.main([str(src), str(tmp_path / "o.jsonl")]) == 2
    assert "not UTF-8 text" in capsys.readouterr().err


def test_bad_option_values_are_clear_errors(tmp_path, capsys):
    assert purify.main([str(EXAMPLE), str(tmp_path / "o.jsonl"), "--gamma", "1.5"]) == 2
    assert "saar.gamma must be in [0, 1], got 1.5" in capsys.readouterr().err
    assert purify.main([str(EXAMPLE), str(tmp_path / "o.jsonl"), "--format", "xml"]) == 2
    assert "unknown chat format 'xml'" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()


def test_markdown_format_log(tmp_path):
    fence = lambda code: f"```python\n{code}\n```"  # noqa: E731
    rec = {"id": "m", "messages": [
        {"role": "user", "content": "2**10 mod 7?"},
        {"role": "assistant", "content": "Compute.\n" + fence("print(2**10 % y)")},
        {"role": "tool", "content": "NameError: name 'y' is not defined"},
        {"role": "assistant", "content": "Use 7.\n" + fence("print(2**10 % 7)")},
        {"role": "tool", "content": "2"},
        {"role": "assistant", "content": "\\boxed{2}"}]}
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text(json.dumps(rec) + "\n")
    assert purify.main([str(src), str(out), "--format", "markdown"]) == 0
    msgs = json.loads(out.read_text())["messages"]
    assert msgs[1:] == [{"role": "assistant", "content": "Compute.\n" + fence("print(2**10 % 7)")},
                        {"role": "tool", "content": "2"}, {"role": "assistant", "content": "\\boxed{2}"}]


def test_cli_entry_point_prints_the_summary(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "cleaner.purify", str(EXAMPLE), str(tmp_path / "o.jsonl")],
                          capture_output=True, text=True, check=True)
    lines = proc.stdout.splitlines()
    assert lines[0] == f"purified {EXAMPLE} -> {tmp_path / 'o.jsonl'}"
    rows = {ln[:40].strip(): ln[40:].strip() for ln in lines[1:]}
    assert (rows["trajectories"], rows["rollbacks triggered"], rows["splices shallow"], rows["splices deep"]) == (
        "9", "8", "8", "2")
    assert rows["tokens removed"].endswith("%)")
