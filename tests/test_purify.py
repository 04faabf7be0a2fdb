"""The offline purifier: the bundled logs in every accepted shape, the two SAAR bugs, multi-byte text under the lab
(ByteLevel), SmolLM2 (ByteLevel) and a GGUF-converted (`Sequence` decoder) tokenizer, SmolLM2's own chat template,
error detection, and bad input that loses nothing."""

from __future__ import annotations

import copy
import gc
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cleaner import chat, purify
from cleaner.purify import __main__ as purify_cli
from cleaner.purify.template import ChatTemplate
from cleaner.models import load_tokenizer
from cleaner.trajectory import Provenance as P
from cleaner.trajectory import read_jsonl

EXAMPLES = Path(purify.__file__).parents[1] / "examples"
EXAMPLE, FENCED, SHAPES = EXAMPLES / "tool_errors.jsonl", EXAMPLES / "fenced_code.jsonl", EXAMPLES / "shapes.jsonl"
REAL_LOG_OPTIONS = ["--format", "markdown", "--error-pattern", "^Error:"]  # how fenced-code logs are read


def by_id(path: Path) -> dict[str, dict]:
    return {r.get("id", f"line {n}"): r for n, r in enumerate(map(json.loads, path.read_text().splitlines()), 1)}


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def run_cli(tmp_path: Path, src: Path, *options: str, name: str = "out.jsonl") -> tuple[int, Path]:
    out = tmp_path / name
    return purify_cli.main([str(src), str(out), *options]), out


@pytest.fixture(scope="session")
def smol():
    """The bundled SmolLM2-135M-Instruct tokenizer, built from the GGUF file's vocabulary and merges with the real
    pre-tokenizer (`cleaner.smollm2`; a ByteLevel decoder)."""
    return load_tokenizer("smollm2")


@pytest.fixture(scope="session")
def smol_sequence(smol):
    """SmolLM2's tokenizer with the `Sequence` decoder transformers builds from a llama-architecture GGUF file
    (ByteFallback, Fuse, Replace, ByteLevel), which `chat.token_bytes` must read as byte-level too."""
    from tokenizers import decoders

    tokenizer = copy.deepcopy(smol)
    tokenizer.backend_tokenizer.decoder = decoders.Sequence([
        decoders.ByteFallback(), decoders.Fuse(), decoders.Replace("▁", " "),
        decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=True)])
    return tokenizer


# -- the bundled hermes log (tool role) ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def purified(tmp_path_factory):
    code, out = run_cli(tmp_path_factory.mktemp("purify"), EXAMPLE, "--tokenizer", "lab")
    assert code == 0
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
    assert out["read_as"] == {"shape": "messages", "prompt_messages": 2, "outputs_in": "tool", "calls": [
        {"message": 2, "status": "error", "error_type": "NameError", "by": "traceback"},
        {"message": 4, "status": "ok", "error_type": None, "by": "traceback"}]}


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


def test_untouched_records_are_identical_but_for_the_added_keys(purified):
    for rid in ("infra-failure", "clean"):
        out = dict(by_id(purified)[rid])
        del out["purification"], out["read_as"]
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


def test_cli_entry_point_prints_the_summary(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "cleaner.purify", str(EXAMPLE), str(tmp_path / "o.jsonl")],
                          capture_output=True, text=True, check=True)
    lines_ = proc.stdout.splitlines()
    assert lines_[0] == f"purified {EXAMPLE} -> {tmp_path / 'o.jsonl'}"
    rows = {ln[:40].strip(): ln[40:].strip() for ln in lines_[1:]}
    assert (rows["trajectories"], rows["records rejected"], rows["rollbacks triggered"], rows["splices shallow"],
            rows["splices deep"]) == ("9", "0", "8", "8", "2")
    assert rows["tokens"] == "not counted: no --tokenizer"  # the default is stated: nothing is tokenized


# -- the fenced-code log: outputs in user turns, one-shot demonstrations, the real-log invocation -------------------


@pytest.fixture(scope="module")
def fenced(tmp_path_factory):
    """The fenced-code log through the CLI exactly as real logs are run: markdown calls, `^Error:` pattern."""
    code, out = run_cli(tmp_path_factory.mktemp("fenced"), FENCED, *REAL_LOG_OPTIONS, "--tokenizer", "lab")
    assert code == 0
    return out


def generated(record: dict) -> list[dict]:
    return record["messages"][record["prompt_messages"]:]


def test_real_log_invocation_reads_every_record_but_the_inexpressible_one(fenced):
    """Breakages checked: outputs read only from tool messages (every record rejected: 'must hold its output');
    the prompt taken as the messages before the first assistant message, ignoring `prompt_messages` (every record
    with a demonstration rejected)."""
    assert set(by_id(fenced)) == {"name-error-shallow", "zero-division-deep", "cut-retry", "message-only-error",
                                  "never-fixed", "clean-multibyte", "unclosed-answered", "prefilled"}
    [rejected] = lines(fenced.with_name("out.rejected.jsonl"))
    assert rejected["line"] == 8 and rejected["record"]["id"] == "bare-fence"
    assert rejected["reason"] == ("message 6 makes no tool call (markdown format), so it must be the last message, "
                                  "but message 7 (role 'user') follows; only ```python or ```py fences are calls")
    for rid, src in by_id(FENCED).items():
        if rid != "bare-fence":  # the prompt, demonstration included, is never touched
            assert by_id(fenced)[rid]["messages"][: src["prompt_messages"]] == src["messages"][: src["prompt_messages"]]
            assert by_id(fenced)[rid]["read_as"]["outputs_in"] == "user"


@pytest.mark.parametrize(
    "rid, calls",
    [
        ("name-error-shallow", [("error", "NameError"), ("ok", None)]),
        ("zero-division-deep", [("error", "ZeroDivisionError"), ("ok", None)]),  # a wrapper line after the traceback
        ("cut-retry", [("error", "SyntaxError"), (None, None)]),
        ("message-only-error", [("error", None), ("ok", None)]),
        ("never-fixed", [("error", "ModuleNotFoundError")] * 4),
        ("unclosed-answered", [("error", "SyntaxError"), ("malformed", chat.UNTERMINATED), ("ok", None)]),
    ],
)
def test_every_call_is_classified_in_the_output(fenced, rid, calls):
    """Breakages checked: the exception name read only from the last line (the wrapper line after the
    ZeroDivisionError hides it)."""
    got = [(c["status"], c["error_type"]) for c in by_id(fenced)[rid]["read_as"]["calls"]]
    assert got == calls


def test_shallow_splice_keeps_the_multibyte_reasoning(fenced):
    src = generated(by_id(FENCED)["name-error-shallow"])
    assert generated(by_id(fenced)["name-error-shallow"]) == [
        {"role": "assistant", "content": "We need every n ≤ 100 with n ≡ 3 (mod 7), that is n = 3, 10, 17, …, 94.\n"
                                         "```python\ntotal = sum(n for n in range(1, 101) if n % 7 == 3)\nprint(total)\n```"},
        src[3], src[4]]


def test_deep_splice_takes_the_fixing_message_whole(fenced):
    src = generated(by_id(FENCED)["zero-division-deep"])
    assert generated(by_id(fenced)["zero-division-deep"]) == src[2:]
    assert by_id(fenced)["zero-division-deep"]["purification"]["splices_deep"] == 1


def test_exhausted_keeps_the_last_failure(fenced):
    src = generated(by_id(FENCED)["never-fixed"])
    out = by_id(fenced)["never-fixed"]
    assert generated(out) == [
        {"role": "assistant", "content": "I'll use sympy.\n```python\nfrom sympy.matrices import Matrix\n"
                                         "print(Matrix([[2, 1], [1, 3]]).det())\n```"}, src[7], src[8]]
    assert (out["purification"]["rollbacks_exhausted"], out["purification"]["final_failures"]) == (1, 1)


def test_a_cut_retry_is_abandoned_not_a_fix(fenced):
    """The bug: a failed call followed by a last turn cut inside its fence (never run). The executed call and its
    real error must stay, the cut turn follows it, and no <|im_end|> is added after it. Breakages checked: the last
    unanswered call given the parser's `malformed` result (the cut turn replaced the executed call and its error);
    the stop token always appended."""
    src, out = by_id(FENCED)["cut-retry"], by_id(fenced)["cut-retry"]
    assert out["messages"] == src["messages"]
    s = out["purification"]
    assert (s["rollbacks_triggered"], s["rollbacks_abandoned"], s["splices_shallow"] + s["splices_deep"],
            s["final_failures"]) == (1, 1, 0, 1)
    [traj] = [t for t in read_jsonl(fenced.with_name("out.tokens.jsonl")) if t.id == "cut-retry"]
    assert traj.turns[-1].stop.ids == () and traj.turns[-1].result is None
    assert traj.text.endswith("for j in range(i*i, 1000")  # the cut text, nothing after it


def test_an_unterminated_retry_answered_by_the_logger_is_no_fix(fenced):
    """An unclosed retry that the logger answered is not executed either: the failure stays, the unclosed turn
    follows and is itself fixed by the next turn. Breakages checked: `saar.executed` without its UNTERMINATED
    check (the unclosed retry replaced the SyntaxError, and the event ended with no failure left)."""
    src, out = generated(by_id(FENCED)["unclosed-answered"]), by_id(fenced)["unclosed-answered"]
    assert generated(out) == [src[0], src[1], {"role": "assistant", "content": "Close the parenthesis.\n```python\n"
                                                                            "print(2**10 + 3**5)\n```"}, src[5], src[6]]
    s = out["purification"]
    assert (s["rollbacks_abandoned"], s["rollbacks_recovered"], s["final_failures_by_class"]) == (1, 1, {"SyntaxError": 1})


def test_error_pattern_finds_errors_a_traceback_search_cannot(tmp_path):
    """The logger printed only "name 'math' is not defined" under "Error:": only the pattern sees a failure.
    Breakages checked: the pattern ignored (no rollback)."""
    code, out = run_cli(tmp_path, FENCED, "--format", "markdown")
    assert code == 0
    assert by_id(out)["message-only-error"]["read_as"]["calls"][0] == {"message": 6, "status": "ok",
                                                                       "error_type": None, "by": "traceback"}
    assert by_id(out)["message-only-error"]["messages"] == by_id(FENCED)["message-only-error"]["messages"]
    code, out = run_cli(tmp_path, FENCED, *REAL_LOG_OPTIONS)
    assert generated(by_id(out)["message-only-error"])[0]["content"] == (
        "Order does not matter, so the count is C(10, 3) ≠ 10·9·8.\n```python\nimport math\nprint(math.comb(10, 3))\n```")


def test_prefill_tokens_are_context_not_sampled(fenced, tok, expect):
    """A forced "```python\\n" starts every assistant turn: its tokens end the prompt and the observation before
    the turn (mask 0); the sampled span starts after it. Breakages checked: the prefill encoded with the turn
    (mask 1, and the shallow splice's content lost its fence opening)."""
    src = by_id(FENCED)["prefilled"]
    [traj] = [t for t in read_jsonl(fenced.with_name("out.tokens.jsonl")) if t.id == "prefilled"]
    prompt_text = chat.render_prompt(src["messages"][:2]) + "```python\n"
    assert traj.prompt.text == prompt_text and traj.prompt.ids == tuple(tok.encode(prompt_text, add_special_tokens=False))
    first = traj.turns[0]
    assert (first.reasoning.ids, first.call.text, first.call.provenance) == ((), "print(17 ** 4 % 13)\n```", P.SPLICED_SHALLOW)
    mask = dict(zip(range(len(traj.ids)), traj.loss_mask))
    assert [mask[i] for i in range(len(traj.prompt))] == [0] * len(traj.prompt)
    assert generated(by_id(fenced)["prefilled"])[0] == {"role": "assistant", "content": "```python\nprint(17 ** 4 % 13)\n```",
                                                       "prefill": "```python\n"}


def test_a_run_leaves_nothing_for_the_garbage_collector_and_switches_it_back_on(tmp_path, tok):
    """`run` pauses the cyclic garbage collector (its records hold no cycles, so reference counting frees them):
    every bundled log, with and without a tokenizer, rejected records included, leaves no garbage for it, and the
    collector is on again after a run, also after one that raised. Breakages checked: a reference cycle per
    record (an item pointing at itself); the collector left off."""
    logs = [(FENCED, {"fmt": "markdown", "error_pattern": "^Error:"}), (EXAMPLE, {}), (SHAPES, {})]
    logs += [(path, {}) for path in sorted((EXAMPLES / "formats").glob("*.jsonl"))]
    gc.collect()
    for src, options in logs:
        for tokenizer in (None, tok):
            gc.disable()
            try:
                purify.run(src, tmp_path / "out.jsonl", purify.saar.SaarConfig(), tokenizer, **options)
                garbage = gc.collect()
            finally:
                gc.enable()
            assert garbage == 0, src
    purify.run(FENCED, tmp_path / "out.jsonl", purify.saar.SaarConfig(), fmt="markdown")
    assert gc.isenabled()
    with pytest.raises(purify.PurifyFileError):
        purify.run(FENCED, tmp_path / "out.jsonl", purify.saar.SaarConfig(), fmt="markdown", strict=True)
    assert gc.isenabled()


def test_round_trip_with_saar_off_returns_every_record_byte_identical(tmp_path):
    """p = 0: every readable line of every bundled log comes back byte for byte, multi-byte text included, with
    only `purification` and `read_as` appended (the logs are written as `json.dumps(ensure_ascii=False)` writes).
    Breakages checked: the output written with `ensure_ascii=True` ("≡" as "\\u2261")."""
    for src, options in ((FENCED, REAL_LOG_OPTIONS), (EXAMPLE, []), (SHAPES, [])):
        code, out = run_cli(tmp_path, src, "--rollback-probability", "0", *options)
        assert code == 0
        readable = [line for line in src.read_bytes().splitlines() if b'"bare-fence"' not in line]
        back = out.read_bytes().splitlines()
        assert len(back) == len(readable)
        for line, again in zip(readable, back):
            assert again.startswith(line[:-1] + b', "purification": {')


# -- multi-byte text under ByteLevel and a GGUF Sequence decoder -----------------------------------------------------


MULTIBYTE = "We need n ≡ 3 (mod 7) and n ≠ 10 → 中文 é …"


def test_token_bytes_are_exact_under_both_decoders(tok, smol, smol_sequence):
    """Breakages checked: `token_bytes` treating only a plain ByteLevel decoder as byte-level (the tokens of the
    GGUF-converted decoder that hold part of "≡" decode to U+FFFD)."""
    assert chat._decoder_steps(smol_sequence) == ["ByteFallback", "Fuse", "Replace", "ByteLevel"]
    for tokenizer in (tok, smol, smol_sequence):
        ids = tokenizer.encode(MULTIBYTE, add_special_tokens=False)
        assert chat.decode(tokenizer, ids) == MULTIBYTE
        table = chat.token_bytes(tokenizer)
        assert b"".join(table[i] for i in ids) == MULTIBYTE.encode()


def test_smollm2_purification_is_byte_exact(tmp_path, smol):
    """`--tokenizer smollm2` loads the bundled GGUF tokenizer offline; spliced and unspliced messages keep every
    multi-byte character. Breakages checked: spliced text rebuilt span by span with the old per-token decode
    ("≡" came back as "\\ufffd\\ufffd")."""
    code, out = run_cli(tmp_path, FENCED, *REAL_LOG_OPTIONS, "--tokenizer", "smollm2")
    assert code == 0
    code_lab, out_lab = run_cli(tmp_path, FENCED, *REAL_LOG_OPTIONS, name="lab.jsonl")
    assert [r["messages"] for r in lines(out)] == [r["messages"] for r in lines(out_lab)]
    assert "\ufffd" not in out.read_text()
    for traj in read_jsonl(tmp_path / "out.tokens.jsonl"):  # every written message is its turn's tokens, decoded
        written = [m for m in generated(by_id(out)[traj.id]) if m["role"] == "assistant"]
        for turn, message in zip(traj.turns, written, strict=True):
            sampled = chat.decode(smol, turn.reasoning.ids + (turn.call.ids if turn.call else ()))
            assert message["content"] == message.get("prefill", "") + sampled


def test_batched_encoding_equals_one_call_per_text(tok, smol):
    """The file's texts are tokenized in one batch call; the ids must be those of `encode` text by text. Breakages
    checked: the texts stripped of surrounding whitespace before the batch call."""
    opts = purify.ReadOptions(chat.get_format("markdown"))
    texts = []
    for record in by_id(FENCED).values():
        if record["id"] != "bare-fence":
            prompt_text, turns, _ = purify.read_log(purify.Log(record["messages"], record["prompt_messages"]), opts)
            texts += purify.texts_to_encode(prompt_text, turns)
    for tokenizer in (tok, smol):
        assert purify.encode_texts(tokenizer, texts) == [tokenizer.encode(t, add_special_tokens=False) for t in texts]


# -- SmolLM2's own chat template -----------------------------------------------------------------------------------

SMOL_SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
SMOL_CALL = '<tool_call>\n{"name": "python", "arguments": {"code": "print(6 * x)"}}\n</tool_call>'
SMOL_FIX = SMOL_CALL.replace("x", "7")


def test_smollm2_template_renders_prompt_and_tool_turns(smol):
    """With SmolLM2's template the prompt gets its default system prompt (the log has none) and a tool output is a
    `tool` turn holding the output unwrapped, not a user turn with `<tool_response>`. The texts, joined, are the
    template's rendering of the whole conversation, written out by hand. Breakages checked: the template ignored
    (ChatML's user turn); the observation cut one character late (the newline after `<|im_end|>` lost)."""
    messages = [{"role": "user", "content": "What is 6 * 7?"},
                {"role": "assistant", "content": "Compute it.\n" + SMOL_CALL},
                {"role": "tool", "content": "NameError: name 'x' is not defined"},
                {"role": "assistant", "content": "Fix.\n" + SMOL_FIX},
                {"role": "tool", "content": "42"},
                {"role": "assistant", "content": "\\boxed{42}"}]
    opts = purify.ReadOptions(chat.get_format("hermes"), template=ChatTemplate(smol.chat_template))
    prompt_text, turns, _ = purify.read_log(purify.Log(messages, 1), opts)
    assert prompt_text == SMOL_SYSTEM + "<|im_start|>user\nWhat is 6 * 7?<|im_end|>\n<|im_start|>assistant\n"
    assert [t.observation for t in turns] == [
        "\n<|im_start|>tool\nNameError: name 'x' is not defined<|im_end|>\n<|im_start|>assistant\n",
        "\n<|im_start|>tool\n42<|im_end|>\n<|im_start|>assistant\n", None]
    whole = prompt_text + "".join(t.sampled + chat.IM_END + (t.observation or "") for t in turns)
    assert whole == (SMOL_SYSTEM + "<|im_start|>user\nWhat is 6 * 7?<|im_end|>\n"
                     "<|im_start|>assistant\nCompute it.\n" + SMOL_CALL + "<|im_end|>\n"
                     "<|im_start|>tool\nNameError: name 'x' is not defined<|im_end|>\n"
                     "<|im_start|>assistant\nFix.\n" + SMOL_FIX + "<|im_end|>\n"
                     "<|im_start|>tool\n42<|im_end|>\n"
                     "<|im_start|>assistant\n\\boxed{42}<|im_end|>")
    assert whole + "\n" == smol.apply_chat_template(messages, tokenize=False)


def test_smollm2_cli_renders_with_the_template_and_lab_keeps_chatml(tmp_path, smol):
    """`--tokenizer smollm2` renders the token file's texts with SmolLM2's template (a system message of the log
    kept, so no default one; tool outputs in `tool` turns), ids the encoding of those texts; `--tokenizer lab`
    keeps ChatML with `<tool_response>`; the records written are the same. Breakages checked: the CLI not passing
    the tokenizer's template."""
    code, out = run_cli(tmp_path, EXAMPLE, "--tokenizer", "smollm2", name="smol.jsonl")
    code_lab, out_lab = run_cli(tmp_path, EXAMPLE, "--tokenizer", "lab", name="lab.jsonl")
    assert (code, code_lab) == (0, 0)
    assert [r["messages"] for r in lines(out)] == [r["messages"] for r in lines(out_lab)]
    smol_traj = {t.id: t for t in read_jsonl(tmp_path / "smol.tokens.jsonl")}["nameerror-fixed"]
    lab_traj = {t.id: t for t in read_jsonl(tmp_path / "lab.tokens.jsonl")}["nameerror-fixed"]
    assert smol_traj.prompt.text.startswith("<|im_start|>system\nYou are a helpful assistant that solves")
    assert smol_traj.turns[0].observation.text == "\n<|im_start|>tool\n338350<|im_end|>\n<|im_start|>assistant\n"
    assert lab_traj.turns[0].observation.text == (
        "\n<|im_start|>user\n<tool_response>\n338350\n</tool_response><|im_end|>\n<|im_start|>assistant\n")
    for span in (smol_traj.prompt, smol_traj.turns[0].observation):
        assert list(span.ids) == smol.encode(span.text, add_special_tokens=False)


def test_a_template_that_rewrites_earlier_turns_is_refused():
    """A template whose rendering of a conversation's start changes as it goes on cannot be cut into deltas."""
    template = ChatTemplate("{% for m in messages %}{% if loop.last %}{{ m['role'] }}:{% endif %}{{ m['content'] }}"
                            "<|im_end|>{% endfor %}")
    with pytest.raises(ValueError, match="renders a conversation's start differently"):
        template.observation([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"},
                              {"role": "tool", "content": "1"}])


# -- other shapes, outputs and wrappers --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    code, out = run_cli(tmp_path_factory.mktemp("shapes"), SHAPES, "--tokenizer", "lab")
    assert code == 0
    return lines(out)


FIX = "v = [3, 5, 10]\nprint(sum(v) / len(v))"


def test_openai_tool_calls_shallow_splice(shapes):
    """The call lives in `tool_calls`: the shallow splice keeps the failed message's content and takes the fix's
    tool_calls and tool message."""
    src = lines(SHAPES)[0]["messages"]
    assert shapes[0]["messages"] == src[:2] + [{**src[4], "content": "I'll average the list."}, src[5], src[6]]
    assert shapes[0]["read_as"]["outputs_in"] == "tool"


def test_openai_tool_calls_are_rendered_as_qwen_does():
    log = purify.Log(lines(SHAPES)[0]["messages"], 2)
    _, turns, _ = purify.read_log(log, purify.ReadOptions(chat.get_format("hermes")))
    args = json.dumps({"code": "v = [3, 5, 10]\nprint(sum(v) / len(w))"})
    assert turns[0].sampled == f'I\'ll average the list.\n<tool_call>\n{{"name": "python", "arguments": {args}}}\n</tool_call>'
    assert turns[0].fmt.parse(turns[0].sampled).code == "v = [3, 5, 10]\nprint(sum(v) / len(w))"


def test_prompt_completion_shape(shapes):
    src = lines(SHAPES)[1]
    assert shapes[1]["prompt"] == src["prompt"]
    assert shapes[1]["completion"] == [{"role": "assistant", "content": "I'll average the list.\n" + chat.hermes_call_text(FIX)},
                                       src["completion"][3], src["completion"][4]]


def test_skyrl_dump_shape(shapes):
    """ChatML text in, ChatML text out: the purified response is the text of the purified tokens."""
    src = lines(SHAPES)[2]
    assert shapes[2]["input_prompt"] == src["input_prompt"]
    assert shapes[2]["output_response"] == (
        "I'll average the list.\n" + chat.hermes_call_text(FIX) + "<|im_end|>\n<|im_start|>user\n<tool_response>\n"
        "6.0\n</tool_response><|im_end|>\n<|im_start|>assistant\nThe mean is \\boxed{6}.<|im_end|>")
    assert (shapes[2]["read_as"]["shape"], shapes[2]["score"], shapes[2]["env_class"]) == ("skyrl_dump", 1.0, "python_math")


def test_verl_dump_without_turn_markers_gets_a_clear_reason(tmp_path):
    src = tmp_path / "verl.jsonl"
    src.write_text(json.dumps({"input": "system\nBe brief.\nuser\nWhat is 2+2?\nassistant\n", "output": "4",
                               "score": 1.0, "step": 3}) + "\n")
    code, out = run_cli(tmp_path, src)
    assert code == 1
    assert "skip_special_tokens=True" in lines(out.with_name("out.rejected.jsonl"))[0]["reason"]


def record_with_tool_output(content: str) -> dict:
    return {"id": "w", "messages": [{"role": "user", "content": "2**10?"},
                                    {"role": "assistant", "content": "```python\nprint(2**10)\n```"},
                                    {"role": "tool", "content": content},
                                    {"role": "assistant", "content": "\\boxed{1024}"}]}


@pytest.mark.parametrize("content, shown", [
    ("1024", "```output\n1024\n```"),  # a bare output is wrapped as the markdown format shows it
    ("```output\n1024\n```", "```output\n1024\n```"),  # already wrapped: not again
    ("Output:\n```output\n1024\n```", "Output:\n```output\n1024\n```"),
])
def test_an_output_is_wrapped_once(tmp_path, tok, content, shown):
    """Breakages checked: every tool output wrapped (the token file shows ```output twice)."""
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps(record_with_tool_output(content)) + "\n")
    code, out = run_cli(tmp_path, src, "--format", "markdown", "--tokenizer", "lab")
    [traj] = read_jsonl(tmp_path / "out.tokens.jsonl")
    assert code == 0 and traj.turns[0].observation.text == chat.user_turn_text(shown)
    assert traj.turns[0].observation.ids == tuple(tok.encode(chat.user_turn_text(shown), add_special_tokens=False))


def test_outputs_in_restricts_the_role(tmp_path):
    code, out = run_cli(tmp_path, FENCED, *REAL_LOG_OPTIONS, "--outputs-in", "tool")
    assert code == 1  # no record of this log has tool messages
    reasons = {r["record"]["id"]: r["reason"] for r in lines(out.with_name("out.rejected.jsonl"))}
    assert reasons["cut-retry"] == "message 6 makes a tool call, so message 7 must hold its output (tool role), not role 'user'"
    code, out = run_cli(tmp_path, FENCED, *REAL_LOG_OPTIONS, "--outputs-in", "user")
    assert code == 0 and len(lines(out)) == 8


# -- error detection --------------------------------------------------------------------------------------------------


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
        # a wrapper line after a trimmed traceback: found anywhere, not only on the last line
        ("Error:\n```output\nZeroDivisionError: division by zero\n```\nPlease fix the code.", "error", "ZeroDivisionError"),
        ("Traceback (most recent call last):\n  File \"<string>\", line 4", "error", None),  # cut before its last line
        ("timeout = 5", "ok", None),
        ("ValueError is a class", "ok", None),
        ("Mean Squared Error: 0.25", "ok", None),
        ("42", "ok", None),
        ("", "ok", None),
    ],
)
def test_classify_output(output, status, error_type):
    result = purify.classify_output(output)
    assert (result.status, result.error_type) == (status, error_type)


@pytest.mark.parametrize(
    "output, status, error_type",
    [
        ("Error:\n```output\nname 'x' is not defined\n```", "error", None),
        ("Error:\n```output\nNameError: name 'x' is not defined\n```", "error", "NameError"),
        ("Error:\n```output\nExecution timed out\n```", "timeout", "Timeout"),
        # the pattern adds to the traceback search, which reads the printed line as a failure (a known limit)
        ("Output:\n```output\nKeyError: 'x' printed on purpose\n```", "error", "KeyError"),
        ("Output:\n```output\n42\n```", "ok", None),
        ("The Error: is in a sentence", "ok", None),  # ^ anchors at a line start
    ],
)
def test_classify_output_with_a_pattern(output, status, error_type):
    result = purify.classify_output(output, re.compile("^Error:", re.MULTILINE))
    assert (result.status, result.error_type) == (status, error_type)


# -- bad input loses nothing ----------------------------------------------------------------------------------------


GOOD = {"id": 1, "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "\\boxed{1}"}]}


@pytest.mark.parametrize(
    "line, reason",
    [
        ('{"id": 1, "messages": [', "not valid JSON (Expecting value at column 24)"),
        ('[1, 2]', "expected a JSON object"),
        (json.dumps({"id": 2}), 'no trajectory: expected {"messages": [...]}'),
        (json.dumps(GOOD), "duplicate id '1'"),
        (json.dumps({"id": 3, "messages": [{"role": "user", "content": 5}]}), "message 0 must have a string 'content'"),
        (json.dumps({"id": 4, "messages": [{"role": "user", "content": "q"}]}), "then an assistant message"),
        (json.dumps({"id": 5, "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"},
                                           {"role": "function", "content": "x"}]}),
         "message 1 makes no tool call (hermes format), so it must be the last message"),
        (json.dumps({"id": 6, "messages": [{"role": "user", "content": "q"},
                                           {"role": "assistant", "content": chat.hermes_call_text("1")},
                                           {"role": "system", "content": "x"}]}),
         "message 1 makes a tool call, so message 2 must hold its output (tool or user role), not role 'system'"),
        (json.dumps({"id": 7, "messages": [{"role": "user", "content": "q"},
                                           {"role": "assistant", "content": chat.hermes_call_text("1")},
                                           {"role": "tool", "content": "1", "status": "crashed"}]}),
         "message 2 has unknown status 'crashed'; valid: ok, error"),
        (json.dumps({"id": 8, "messages": [{"role": "tool", "content": "q"}, {"role": "assistant", "content": "a"}]}),
         "message 0 has role 'tool' before the first assistant message"),
        (json.dumps({"id": 9, "messages": GOOD["messages"], "prompt_messages": 5}), "prompt_messages must be an integer"),
        (json.dumps({"id": 10, "messages": [{"role": "assistant", "content": "x", "prefill": "y"}]}),
         "prefill must be a string that its content starts with"),
        ('{"id": 11, "messages": [{"role": "user", "content": "\\ud800"}]}', "holds a lone surrogate"),
        (json.dumps({"id": [1], "messages": []}), "id must be a string or an integer"),
        (json.dumps({"id": 12, "messages": [{"role": "user", "content": "q"},
                                            {"role": "assistant", "content": chat.hermes_call_text("1")},
                                            {"role": "tool", "content": "1", "status": ["ok"]}]}),
         "message 2: status and error_type must be strings"),
        (json.dumps({"id": 13, "messages": [{"role": "user", "content": None, "tool_calls": [{}]},
                                            {"role": "assistant", "content": "a"}]}),
         "message 0 must have a string 'content' (null only in an assistant message with tool_calls)"),
    ],
)
def test_a_bad_record_among_good_ones_is_rejected_and_the_rest_purified(tmp_path, capsys, line, reason):
    """Exit 0, the good records purified, the bad one in OUT.rejected.jsonl with its line number and reason, and
    the summary counts it. Breakages checked: rejection turned off (the first bad line stops the file)."""
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join([json.dumps(GOOD), line, json.dumps({**GOOD, "id": "last"})]) + "\n")
    code, out = run_cli(tmp_path, src)
    assert code == 0
    assert [r["id"] for r in lines(out)] == [1, "last"]
    [rejected] = lines(out.with_name("out.rejected.jsonl"))
    assert rejected["line"] == 2 and reason in rejected["reason"]
    assert "\n" not in rejected["reason"]
    unparsed = reason.startswith(("not valid JSON", "expected a JSON object", "holds a lone"))
    assert rejected["text" if unparsed else "record"] == (line if unparsed else json.loads(line))
    printed = capsys.readouterr().out
    assert re.search(r"^records rejected\s+1$", printed, re.MULTILINE)
    assert printed.endswith(f"rejected records, each with its line number and reason: {out.with_name('out.rejected.jsonl')}\n")


def test_strict_refuses_the_file_and_writes_nothing(tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps(GOOD) + "\n" + json.dumps({"id": 2}) + "\n")
    (tmp_path / "out.jsonl").write_text("previous result\n")
    code, out = run_cli(tmp_path, src, "--strict")
    assert code == 2
    assert capsys.readouterr().err == f'error: {src}:2: no trajectory: expected {{"messages": [...]}}, ' \
        '{"prompt": [...], "completion": [...]}, {"input_prompt": "...", "output_response": "..."}, ' \
        '{"input": "...", "output": "...", "score": ..., "step": ...} or ' \
        '{"conversations": [{"from": ..., "value": ...}]}\n'
    assert out.read_text() == "previous result\n" and not out.with_name("out.rejected.jsonl").exists()


def test_a_file_of_nothing_readable_exits_1(tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"\xff\xfe\x00garbage\n")
    code, out = run_cli(tmp_path, src)
    assert code == 1
    assert lines(out.with_name("out.rejected.jsonl"))[0]["reason"] == "not UTF-8 text (invalid start byte at byte 0)"
    assert "no record of" in capsys.readouterr().err


def test_a_stale_rejected_file_is_removed(tmp_path):
    (tmp_path / "out.rejected.jsonl").write_text("from an earlier run\n")
    code, out = run_cli(tmp_path, EXAMPLE)
    assert code == 0 and not (tmp_path / "out.rejected.jsonl").exists()


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                           max_leaves=8)
messages = st.lists(st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant", "tool", 3]),
     "content": st.sampled_from(["q", "```python\nprint(1)\n```", "```python\nprint(", "Error: x", None,
                                 chat.hermes_call_text("1")])},
    optional={"status": json_values, "prefill": st.sampled_from(["", "```", 1]), "tool_calls": json_values,
              "error_type": json_values}), max_size=6)
BOTH = "```python\nprint(1)\n```\n" + chat.hermes_call_text("1")  # a call in either format
calls = st.lists(st.tuples(  # an assistant message with a call, then an output message, with random extras
    st.fixed_dictionaries({"role": st.just("assistant"), "content": st.sampled_from([BOTH, BOTH, None])},
                          optional={"tool_calls": json_values, "prefill": json_values}),
    st.fixed_dictionaries({"role": st.sampled_from(["tool", "user"]), "content": st.sampled_from(["1", "1", None])},
                          optional={"status": json_values, "error_type": json_values})), min_size=1, max_size=3)
structured = calls.map(lambda pairs: {"messages": [{"role": "user", "content": "q"}] + [m for p in pairs for m in p]})
records = structured | st.fixed_dictionaries({}, optional={"id": json_values, "messages": messages | json_values,
                                               "prompt_messages": json_values, "prompt": messages,
                                               "completion": messages, "input_prompt": json_values,
                                               "output_response": json_values})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(record=records, fmt=st.sampled_from(["hermes", "markdown"]))
def test_any_json_record_is_read_or_rejected_never_a_traceback(tmp_path, tok, record, fmt):
    """Read, rejected, or (a first record no reader knows) the file refused with one line. Breakages checked: a
    non-string `status` (unhashable, TypeError), null content outside an assistant message with tool_calls."""
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps(record) + "\n")
    try:
        items, rejected = purify.read_items(src, tok, purify.ReadOptions(chat.get_format(fmt)), strict=False)
    except purify.PurifyFileError as e:
        assert "no reader knows" in str(e) and "\n" not in str(e)
        return
    assert len(items) + len(rejected) == 1


# -- options ------------------------------------------------------------------------------------------------------------


def test_bad_option_values_are_clear_errors(tmp_path, capsys):
    out = tmp_path / "o.jsonl"
    cases = [(["--gamma", "1.5"], "error: saar.gamma must be in [0, 1], got 1.5"),
             (["--format", "xml"], "error: unknown chat format 'xml'"),
             (["--error-pattern", "(^Error"], "error: --error-pattern '(^Error' is not a valid regular expression"),
             (["--tokenizer", "qwen9"], "error: qwen9 is neither a known name (lab, smollm2-135m-instruct, smollm2), "
                                        "a .gguf file nor a folder"),
             (["--tokenizer", str(tmp_path)], f"error: {tmp_path} holds no checkpoint (no tokenizer.json or "
                                              "tokenizer_config.json there)")]
    for options, message in cases:
        assert purify_cli.main([str(EXAMPLE), str(out), *options]) == 2
        err = capsys.readouterr().err
        assert err.startswith(message) and err.count("\n") == 1
    assert purify_cli.main([str(tmp_path / "missing.jsonl"), str(out)]) == 2
    assert "No such file" in capsys.readouterr().err
    assert not out.exists()


def test_p_zero_changes_no_message(tmp_path):
    code, out = run_cli(tmp_path, EXAMPLE, "--rollback-probability", "0")
    assert code == 0
    for rid, rec in by_id(out).items():
        assert rec["messages"] == by_id(EXAMPLE)[rid]["messages"]
