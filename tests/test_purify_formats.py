"""The purifier on the formats people keep (`cleaner/examples/formats/`, written by hand: in each a recovered
failure, an unrecovered one, a clean run and a record that cannot be read): the log's own record of execution
wins, failures are found in the common shapes, every format reads and writes back, and the run's summary says
what was found. Expected outputs are written out here, not computed by the code under test."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cleaner import purify
from cleaner.purify import __main__ as purify_cli
from cleaner.trajectory import read_jsonl

FORMATS = Path(purify.__file__).parents[1] / "examples" / "formats"
HERMES, OPENAI = FORMATS / "hermes_python.jsonl", FORMATS / "openai_tools.jsonl"
VERL, SHAREGPT = FORMATS / "verl_rollout.jsonl", FORMATS / "sharegpt_tools.json"
FENCED = Path(purify.__file__).parents[1] / "examples" / "fenced_code.jsonl"
SYS = "You are a helpful assistant. Use the python tool to compute; put the final answer in \\boxed{}."


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def by_id(path: Path) -> dict[str, dict]:
    """The records of a JSON Lines file by id, its lines that are not JSON left out."""
    out = {}
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        out[record["id"]] = record
    return out


def run_cli(tmp_path: Path, src: Path, *options: str, name: str = "out.jsonl") -> tuple[int, Path]:
    out = tmp_path / name
    return purify_cli.main([str(src), str(out), *options]), out


def calls(record: dict) -> list[tuple]:
    return [(c["status"], c["error_type"], c["by"]) for c in record["read_as"]["calls"]]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return path


def call_json(name: str, code: str, argument: str = "code") -> str:
    return json.dumps({"name": name, "arguments": {argument: code}})


def hermes(name: str, code: str, argument: str = "code") -> str:
    return f"<tool_call>\n{call_json(name, code, argument)}\n</tool_call>"


# -- 1. the log's own record of execution wins ----------------------------------------------------------------------


def test_a_hermes_call_to_any_tool_name_is_read(tmp_path):
    """Calls to a tool named `python`: the successful ones are kept, the SyntaxError is fixed shallow. Before: every
    call to a tool not named code_interpreter was `malformed`, and of two successful calls the first was deleted
    and replaced by the second."""
    code, out = run_cli(tmp_path, HERMES)
    assert code == 0
    src, got = by_id(HERMES), by_id(out)
    for rid in ("clean", "two-successes", "unrecovered"):
        assert got[rid]["messages"] == src[rid]["messages"]
    assert calls(got["two-successes"]) == [("ok", None, "traceback"), ("ok", None, "traceback")]
    assert got["two-successes"]["purification"]["rollbacks_triggered"] == 0
    assert got["recovered"]["messages"][2:] == [
        {"role": "assistant", "content": "Two powers, added.\n<tool_call>\n"
                                         '{"name": "python", "arguments": {"code": "print(2**10 + 3**5)"}}'
                                         "\n</tool_call>"},
        {"role": "tool", "content": "1267"},
        {"role": "assistant", "content": "The sum is \\boxed{1267}."}]
    assert calls(got["unrecovered"])[0] == ("error", "ModuleNotFoundError", "traceback")


QUERY_LOG = {"id": "q", "messages": [
    {"role": "user", "content": "Mean of 3, 5, 10?"},
    {"role": "assistant", "content": "Average.", "tool_calls": [{"id": "1", "type": "function", "function": {
        "name": "Python_REPL", "arguments": json.dumps({"query": "print(sum([3, 5, 10]) / len(w))"})}}]},
    {"role": "tool", "content": "NameError: name 'w' is not defined"},
    {"role": "assistant", "content": "Fix.", "tool_calls": [{"id": "2", "type": "function", "function": {
        "name": "Python_REPL", "arguments": json.dumps({"query": "print(sum([3, 5, 10]) / 3)"})}}]},
    {"role": "tool", "content": "6.0"},
    {"role": "assistant", "content": "\\boxed{6}"}]}


def test_the_code_argument_comes_from_the_flag_or_the_tools_schema(tmp_path):
    """LangChain's Python REPL passes its code as `query`. Without a flag or schema the calls are another tool's,
    kept as they are (never `malformed`); `--code-argument query` or a `tools` schema makes them code calls, and
    the NameError is fixed shallow. Before: both calls `malformed`, and the second replaced the first."""
    src = write_jsonl(tmp_path / "in.jsonl", [QUERY_LOG])
    code, out = run_cli(tmp_path, src)
    [kept] = lines(out)
    assert code == 0 and kept["messages"] == QUERY_LOG["messages"]
    assert [c["by"] for c in kept["read_as"]["calls"]] == ["other tool", "other tool"]
    fixed = {**QUERY_LOG["messages"][3], "content": "Average."}
    code, out = run_cli(tmp_path, src, "--code-argument", "query")
    assert code == 0 and lines(out)[0]["messages"][1:] == [fixed] + QUERY_LOG["messages"][4:]
    schema = [{"type": "function", "function": {"name": "Python_REPL", "parameters": {
        "type": "object", "properties": {"query": {"type": "string"}}}}}]
    src = write_jsonl(tmp_path / "schema.jsonl", [{**QUERY_LOG, "tools": schema}])
    code, out = run_cli(tmp_path, src)
    assert code == 0 and lines(out)[0]["messages"][1:] == [fixed] + QUERY_LOG["messages"][4:]
    assert calls(lines(out)[0]) == [("error", "NameError", "traceback"), ("ok", None, "traceback")]


def test_calls_to_other_tools_are_kept_and_never_retries(tmp_path):
    """A web search between a failed call and its fix is kept as it is, and the python calls are purified."""
    code, out = run_cli(tmp_path, OPENAI)
    src, got = by_id(OPENAI)["search-then-code"]["messages"], by_id(out)["search-then-code"]
    assert got["messages"] == src[:4] + [{**src[6], "content": "Count the days."}, src[7], src[8]]
    assert calls(got) == [(None, None, "other tool"), ("error", "SyntaxError", "error flag"),
                          ("ok", None, "error flag")]
    assert got["read_as"]["calls"][0]["tool"] == "web_search"


@pytest.mark.parametrize("fields, content, expected", [
    ({"is_error": True}, "the cell failed", ("error", None, "error flag")),
    ({"is_error": False}, "KeyError: 'x' printed on purpose", ("ok", None, "error flag")),
    ({"exit_code": 1}, "oops", ("error", None, "exit code")),
    ({"returncode": 0}, "NameError: printed on purpose", ("ok", None, "exit code")),
    ({"ename": "ZeroDivisionError", "evalue": "division by zero"}, "",
     ("error", "ZeroDivisionError", "exception name")),
    ({"status": "success"}, "Traceback (most recent call last):\n  (printed)", ("ok", None, "status")),
    ({}, json.dumps({"stdout": "KeyError: 'k' (printed)", "stderr": "", "exit_code": 0}), ("ok", None, "exit code")),
    ({}, json.dumps({"stdout": "", "stderr": "Traceback (most recent call last):\n  File \"<string>\", line 1, in "
                                             "<module>\nNameError: name 'x' is not defined", "exit_code": 1}),
     ("error", "NameError", "exit code")),
    ({}, json.dumps({"status": "error", "ename": "ValueError", "evalue": "bad"}), ("error", "ValueError", "status")),
    ({}, json.dumps({"output": "", "error": "ZeroDivisionError: division by zero"}),
     ("error", "ZeroDivisionError", "error flag")),
    ({}, json.dumps({"stdout": "", "stderr": "ZeroDivisionError: division by zero"}),
     ("error", "ZeroDivisionError", "stderr")),
])
def test_the_logs_own_mark_decides_before_any_text(tmp_path, fields, content, expected):
    """An error flag, an exit code, an exception name, a status, on the message or in a JSON execution result,
    decide; the text is read only where the log marks nothing. Before: only `status` was read; text decided."""
    record = {"id": "m", "messages": [
        {"role": "user", "content": "q"}, {"role": "assistant", "content": hermes("python", "print(1)")},
        {"role": "tool", "content": content, **fields}, {"role": "assistant", "content": "\\boxed{1}"}]}
    code, out = run_cli(tmp_path, write_jsonl(tmp_path / "in.jsonl", [record]))
    assert code == 0 and calls(lines(out)[0]) == [expected]


# -- 2. failures in the common shapes; the pattern adds ---------------------------------------------------------------


NAME_ERROR = ("Traceback (most recent call last):\n  File \"<string>\", line 1, in <module>\n"
              "NameError: name 'x' is not defined")


@pytest.mark.parametrize("output, status, error_type", [
    (NAME_ERROR, "error", "NameError"),  # plain
    ("{'stdout': '', 'stderr': " + json.dumps(NAME_ERROR) + "}", "error", "NameError"),  # JSON-escaped, in a repr
    ("Error: NameError: name 'x' is not defined", "error", "NameError"),  # after a label on the same line
    ("[stderr] ZeroDivisionError: division by zero", "error", "ZeroDivisionError"),
    ("\x1b[0;31m---------------------------------------------------------------------------\x1b[0m\n"
     "\x1b[0;31mNameError\x1b[0m                                 Traceback (most recent call last)\n"
     "\x1b[0;31mNameError\x1b[0m: name 'x' is not defined", "error", "NameError"),  # ANSI-coloured (IPython)
    ("\x1b[31mTraceback (most recent call last):\x1b[0m\n  ...", "error", None),
    ("Mean Squared Error: 0.25", "ok", None),
    ("ValueError is a class", "ok", None),
    ("The answer: 42", "ok", None),
])
def test_tracebacks_are_found_in_every_common_shape(output, status, error_type):
    """Before: the JSON-escaped, labelled and ANSI-coloured tracebacks read as success."""
    result = purify.classify_output(output)
    assert (result.status, result.error_type) == (status, error_type)


def test_the_error_pattern_adds_to_the_traceback_search():
    """With `--error-pattern '^Error:'` a raw traceback is still a failure. Before: the pattern replaced the
    search, so a raw traceback read as success when the pattern was set for the file."""
    pattern = re.compile("^Error:", re.MULTILINE)
    result = purify.classify_output(NAME_ERROR, pattern)
    assert (result.status, result.error_type) == ("error", "NameError")
    assert purify.classify_output("Error:\nname 'x' is not defined", pattern).status == "error"
    assert purify.classify_output("Output:\n42", pattern).status == "ok"


def test_the_summary_counts_records_rejections_and_failures(tmp_path, capsys):
    """Records read, purified, unchanged, rejected by reason, failures by the rule that found them."""
    code, _ = run_cli(tmp_path, OPENAI)
    printed = capsys.readouterr()
    rows = dict(re.findall(r"^(\S.*?|  \S.*?)\s{2,}(\S.*)$", printed.out, re.MULTILINE))
    assert code == 0 and printed.err == ""
    assert (rows["records read"], rows["trajectories"], rows["  purified (changed)"], rows["  unchanged"],
            rows["records rejected"]) == ("5", "4", "3", "1", "1")
    assert (rows["failures found"], rows["  by error flag"], rows["  by exit code"], rows["  by traceback"]) == \
        ("3", "1", "1", "1")
    assert "rejected, by reason:\n       1  message N has N tool_calls\n" in printed.out


def test_a_run_that_finds_no_failure_warns(tmp_path, capsys):
    """Every call reads as a success: one warning line on stderr, exit 0. Before: silence."""
    src = write_jsonl(tmp_path / "in.jsonl", [by_id(HERMES)["clean"], by_id(HERMES)["two-successes"]])
    code, _ = run_cli(tmp_path, src)
    err = capsys.readouterr().err
    assert code == 0 and err.startswith("warning: no failed call found among 3 calls with an output;")
    assert err.count("\n") == 1


def test_most_records_rejected_exits_1(tmp_path, capsys):
    """Two of three records rejected: exit 1 with one line saying so; one of three: exit 0. Before: exit 0."""
    good = json.dumps(by_id(HERMES)["recovered"])
    (tmp_path / "in.jsonl").write_text(f"{good}\nnot json\n{{\"id\": 3, \"messages\": 1}}\n")
    code, out = run_cli(tmp_path, tmp_path / "in.jsonl")
    assert code == 1 and len(lines(out)) == 1
    assert capsys.readouterr().err == (f"error: 2 of 3 records were rejected (more than half); see "
                                       f"{tmp_path / 'out.rejected.jsonl'}\n")
    (tmp_path / "in.jsonl").write_text(f"{good}\nnot json\n{json.dumps(by_id(HERMES)['clean'])}\n")
    assert run_cli(tmp_path, tmp_path / "in.jsonl")[0] == 0


# -- 3. formats -------------------------------------------------------------------------------------------------------


def test_verl_rollout_dump_with_special_tokens_kept(tmp_path):
    """verl's dump decoded with skip_special_tokens=False: the prompt's left padding and the response's right
    padding (<|endoftext|>) are stripped; the fixed record's response is the purified text. Before: every record
    rejected ("not ChatML")."""
    code, out = run_cli(tmp_path, VERL)
    assert code == 0
    got = lines(out)
    assert [r["read_as"]["shape"] for r in got] == ["verl_dump"] * 3
    assert got[0]["output"] == (
        "Two powers, added.\n<tool_call>\n"
        '{"name": "code_interpreter", "arguments": {"code": "print(2**10 + 3**5)"}}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\n<tool_response>\n1267\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
        "The sum is \\boxed{1267}.<|im_end|>")
    assert (got[0]["input"], got[0]["gts"], got[0]["step"]) == (lines(VERL)[0]["input"], "1267", 12)
    assert [r["purification"]["rollbacks_triggered"] for r in got] == [1, 1, 0]
    assert got[1] | {"purification": None, "read_as": None} == lines(VERL)[1] | {"purification": None, "read_as": None}


def test_verl_dump_decoded_without_special_tokens_is_refused_with_how_to_dump(tmp_path):
    code, out = run_cli(tmp_path, VERL)
    [rejected] = lines(out.with_name("out.rejected.jsonl"))
    assert rejected["line"] == 4
    assert "skip_special_tokens=False" in rejected["reason"] and "_dump_generations" in rejected["reason"]


SHAREGPT_FIXED = [
    {"from": "human", "value": "What is 2**10 + 3**5?"},
    {"from": "function_call", "value": '{"name": "python", "arguments": {"code": "print(2**10 + 3**5)"}}'},
    {"from": "observation", "value": "1267"},
    {"from": "gpt", "value": "The sum is 1267."}]


def test_sharegpt_json_array(tmp_path):
    """LLaMA-Factory tool data as one pretty-printed JSON array: each item a record (the bad one rejected by its
    item number), the fix taken whole. Before: every line of the file rejected as not JSON."""
    code, out = run_cli(tmp_path, SHAREGPT)
    got = lines(out)
    assert code == 0 and len(got) == 3
    assert got[0]["conversations"] == SHAREGPT_FIXED
    assert (got[0]["system"], got[0]["read_as"]["shape"], got[0]["read_as"]["outputs_in"]) == (SYS, "sharegpt", "tool")
    src = json.loads(SHAREGPT.read_text())
    assert {k: v for k, v in got[1].items() if k not in ("purification", "read_as")} == src[1]
    [rejected] = lines(out.with_name("out.rejected.jsonl"))
    assert rejected["item"] == 4 and rejected["reason"].startswith("conversations entry 1 is from 'bot'")


def test_sharegpt_jsonl_and_gzip_read_the_same(tmp_path):
    """The same items as JSON Lines, and gzip-compressed: the same output. Before: .gz was not UTF-8."""
    src = json.loads(SHAREGPT.read_text())
    plain = write_jsonl(tmp_path / "in.jsonl", src)
    packed = tmp_path / "in.jsonl.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    code_a, out_a = run_cli(tmp_path, plain, name="a.jsonl")
    code_b, out_b = run_cli(tmp_path, packed, name="b.jsonl")
    assert code_a == code_b == 0
    assert lines(out_a)[0]["conversations"] == SHAREGPT_FIXED
    assert out_a.read_bytes() == out_b.read_bytes()


def test_an_unknown_format_is_refused_with_one_line(tmp_path, capsys):
    """A file whose first record no reader knows: exit 2, one line naming what was seen and the formats read,
    nothing written. Before: every record rejected with a generic reason."""
    src = write_jsonl(tmp_path / "in.jsonl", [{"question": "q", "trace": [1, 2]}, QUERY_LOG])
    code, out = run_cli(tmp_path, src)
    err = capsys.readouterr().err
    assert code == 2 and not out.exists() and err.count("\n") == 1
    assert err.startswith(f"error: {src}:1: no reader knows a record with keys [question, trace]; formats read: "
                          'messages {"messages": [...]}, prompt_completion {"prompt": [...], "completion": [...]}, ')
    assert "sharegpt" in err and "verl_dump" in err


def test_content_parts_and_reasoning_content(tmp_path, tok):
    """vLLM's reasoning model log with content parts: a shallow splice keeps the failed turn's reasoning (not
    the fix's, which talks about the error it removed) and the fix's call; the token file keeps the thinking.
    Before: the content parts rejected; the thinking dropped from the tokens."""
    code, out = run_cli(tmp_path, OPENAI, "--tokenizer", "lab")
    src = by_id(OPENAI)["reasoning-parts"]["messages"]
    got = by_id(out)["reasoning-parts"]
    assert code == 0
    assert got["messages"][2:] == [
        {"role": "assistant", "content": None, "tool_calls": src[4]["tool_calls"],
         "reasoning_content": "Fermat: 17 = 4 mod 13, so 4**4 = 256 = 9 mod 13. Check with Python."}, src[5], src[6]]
    assert got["messages"][:2] == src[:2]  # content parts kept as they were
    [traj] = [t for t in read_jsonl(tmp_path / "out.tokens.jsonl") if t.id == "reasoning-parts"]
    assert traj.turns[0].reasoning.text == "<think>\nFermat: 17 = 4 mod 13, so 4**4 = 256 = 9 mod 13. Check with " \
                                           "Python.\n</think>\n\n"
    assert traj.turns[1].reasoning.text == "<think>\nPython agrees.\n</think>\n\n\\boxed{9}"
    assert traj.prompt.text.startswith(f"<|im_start|>system\n{SYS}<|im_end|>\n")


def test_prompt_messages_flag_for_logs_without_a_boundary_field(tmp_path):
    """The fenced-code log without its "prompt_messages" fields: rejected (a demonstration's assistant turns
    before the question); with --prompt-messages 6 read as with the fields. Before: no such flag."""
    records = [r for r in lines(FENCED) if r["prompt_messages"] == 6 and r["id"] != "bare-fence"]
    src = write_jsonl(tmp_path / "in.jsonl", [{k: v for k, v in r.items() if k != "prompt_messages"} for r in records])
    options = ["--format", "markdown", "--error-pattern", "^Error:"]
    code, out = run_cli(tmp_path, src, *options)
    assert code == 1 and not lines(out)
    code, out = run_cli(tmp_path, src, *options, "--prompt-messages", "6")
    code_ref, ref = run_cli(tmp_path, write_jsonl(tmp_path / "ref.jsonl", records), *options, name="ref.jsonl")
    assert code == code_ref == 0
    assert [r["messages"] for r in lines(out)] == [r["messages"] for r in lines(ref)]


# -- 5. tokenizers ----------------------------------------------------------------------------------------------------


def test_the_tokenizer_in_use_is_stated(tmp_path, capsys):
    """Without --tokenizer nothing is tokenized and the summary says so; with one, its name heads the token rows.
    Before: the lab's 2,000-token BPE was used silently."""
    run_cli(tmp_path, HERMES)
    assert re.search(r"^tokens\s+not counted: no --tokenizer$", capsys.readouterr().out, re.MULTILINE)
    assert not (tmp_path / "out.tokens.jsonl").exists()
    run_cli(tmp_path, HERMES, "--tokenizer", "lab")
    assert re.search(r"^tokens before -> after \(lab\)\s+\d+ -> \d+$", capsys.readouterr().out, re.MULTILINE)


def test_text_level_and_token_level_purification_agree_on_every_bundled_log(tmp_path):
    """The default (no tokenizer: turns cut at the call's first character) and the lab tokenizer (cut at the
    token holding it) write the same records, but for the token counts."""
    examples = Path(purify.__file__).parents[1] / "examples"
    cases = [(examples / "tool_errors.jsonl", []), (examples / "shapes.jsonl", []),
             (FENCED, ["--format", "markdown", "--error-pattern", "^Error:"]),
             *((path, []) for path in sorted(FORMATS.iterdir()))]
    for src, options in cases:
        _, text = run_cli(tmp_path, src, *options, name="text.jsonl")
        _, tokens = run_cli(tmp_path, src, *options, "--tokenizer", "lab", name="tokens.jsonl")
        strip = [{k: v for k, v in r.items() if k != "purification"} for r in lines(text)]
        assert strip == [{k: v for k, v in r.items() if k != "purification"} for r in lines(tokens)], src.name


def test_text_level_turns_are_cut_where_the_call_starts():
    """Without a tokenizer a turn is cut at the call's first character, counted after a forced prefill."""
    log = purify.Log([{"role": "user", "content": "q"},
                      {"role": "assistant", "content": "Forced start. Now the code:\n```python\nprint(1)\n```",
                       "prefill": "Forced start. "},
                      {"role": "user", "content": "1"}, {"role": "assistant", "content": "\\boxed{1}"}], 1)
    prompt_text, turns, _ = purify.read_log(log, purify.ReadOptions(purify.chat.get_format("markdown")))
    traj = purify.text_trajectory("t", prompt_text, turns, {})
    first = traj.turns[0]
    assert (first.reasoning.text, first.call.text, first.stop.text) == ("Now the code:\n", "```python\nprint(1)\n```",
                                                                        "<|im_end|>")
    assert traj.prompt.text == "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\nForced start. "
    assert traj.turns[0].observation.text == "\n<|im_start|>user\n1<|im_end|>\n<|im_start|>assistant\n"


values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=6),
                      lambda inner: (st.lists(inner, max_size=3)
                                     | st.dictionaries(st.text(max_size=5), inner, max_size=3)),
                      max_leaves=6)
entries = st.lists(st.fixed_dictionaries(
    {"from": st.sampled_from(["human", "gpt", "function_call", "observation", "system", "bot"]),
     "value": st.sampled_from(["q", call_json("python", "print(1)"), call_json("search", "x", "query"), "{", "1",
                               "NameError: x"])}), max_size=6)
dumps = st.sampled_from(["", "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n", "<|endoftext|>",
                         "x" + hermes("python", "1") + "<|im_end|>", "<|im_start|>assistant\n",
                         "a<|im_end|><|endoftext|>"])
other_records = (st.fixed_dictionaries({"conversations": entries | values},
                                       optional={"system": values, "tools": values})
                 | st.fixed_dictionaries({"input": dumps | values, "output": dumps | values}))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records=st.lists(other_records, min_size=1, max_size=3), as_array=st.booleans(), tools=values)
def test_any_sharegpt_or_dump_record_is_read_or_rejected_never_a_traceback(tmp_path, records, as_array, tools):
    """ShareGPT and ChatML-dump records of any content, as JSON Lines or one JSON array: each one read or rejected
    with a one-line reason."""
    src = tmp_path / "in.json"
    src.write_text(json.dumps(records) if as_array else "".join(json.dumps(r) + "\n" for r in records))
    rejected: list = []
    items = list(purify.iter_items(src, purify.ReadOptions(purify.chat.get_format("hermes")), rejected=rejected))
    assert len(items) + len(rejected) == len(records)
    assert all("\n" not in r.reason for r in rejected)
    assert purify.tool_code_arguments(tools) is not None


def test_input_format_forces_one_reader(tmp_path):
    """`--input-format sharegpt` on a messages log: every record rejected with the shape that reader expects."""
    code, out = run_cli(tmp_path, HERMES, "--input-format", "sharegpt")
    reasons = [r["reason"] for r in lines(out.with_name("out.rejected.jsonl"))]
    assert code == 1 and len(reasons) == 5
    assert reasons[0] == ('no trajectory: expected {"conversations": [{"from": ..., "value": ...}]} '
                          "(--input-format sharegpt)")


def test_unchanged_records_keep_every_byte_of_their_line(tmp_path):
    """A log written by `json.dumps` with its defaults (non-ASCII as \\u escapes) and compact separators: a record
    no splice changed comes back as its line, byte for byte, with the two keys appended; a spliced one is
    rewritten. Before: every record was serialised again ("\\u2261" came back as "≡", "," as ", ")."""
    records = [by_id(HERMES)["recovered"], {**by_id(HERMES)["clean"], "note": "n ≡ 3 (mod 7)"}]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records))
    code, out = run_cli(tmp_path, src)
    given, back = src.read_text().splitlines(), out.read_text().splitlines()
    assert code == 0 and "\\u2261" in given[1]
    assert back[1].startswith(given[1][:-1] + ', "purification": {"saar_applied": true, ')
    assert json.loads(back[1])["read_as"]["shape"] == "messages"
    assert not back[0].startswith(given[0][:-1])  # spliced: written anew
    assert json.loads(back[0])["messages"][3] == {"role": "tool", "content": "1267"}
