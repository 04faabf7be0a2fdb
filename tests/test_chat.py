"""Tool-call parsing, observation rendering and the one-pass split of sampled turns."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cleaner import chat
from cleaner.trajectory import Provenance

HERMES = chat.get_format("hermes")
MARKDOWN = chat.get_format("markdown")


@pytest.mark.parametrize(
    "text, code",
    [
        ('Let me.\n<tool_call>\n{"name": "code_interpreter", "arguments": {"code": "print(1)"}}\n</tool_call>', "print(1)"),
        ('<tool_call>{"name": "code_interpreter", "arguments": "{\\"code\\": \\"x = 2\\"}"}</tool_call>', "x = 2"),
        ('a<tool_call>{"arguments": {"code": "s = \'\\u00e9\'\\nprint(s)"}, "name": "code_interpreter"}</tool_call>',
         "s = 'é'\nprint(s)"),
    ],
)
def test_hermes_valid_calls(text, code):
    call = HERMES.parse(text)
    assert call is not None and not call.malformed
    assert (call.code, call.start) == (code, text.index("<tool_call>"))


@pytest.mark.parametrize(
    "text, why, salvaged",
    [
        ('<tool_call>{"name": "code_interpreter", "arguments": {"code": "print(1)"}</tool_call>', "not valid JSON",
         "print(1)"),
        ('<tool_call>{"name": "code_interpreter", "arguments": {"source": "print(1)"}}</tool_call>',
         'string field "code"', '{"name": "code_interpreter", "arguments": {"source": "print(1)"}}'),
        ('<tool_call>{"name": "web_search", "arguments": {"code": "print(1)"}}</tool_call>', "unknown tool 'web_search'",
         "print(1)"),
        ('<tool_call>{"name": "code_interpreter", "arguments": {"code": "print(1)"}}', "no closing </tool_call>",
         "print(1)"),
        ('<tool_call>{"name": "code_interpreter", "arguments": {"code": "a"}}</tool_call>'
         '<tool_call>{"name": "code_interpreter", "arguments": {"code": "b"}}</tool_call>', "more than one", "a"),
        ('<tool_call>[1, 2]</tool_call>', "JSON object", "[1, 2]"),
    ],
)
def test_hermes_malformed_calls_are_model_errors_with_a_clear_message(text, why, salvaged):
    call = HERMES.parse(text)
    assert call.malformed and why in call.error and call.error.startswith("Error: malformed tool call")
    assert '"code_interpreter"' in call.error  # the message shows a valid call
    assert call.code == salvaged
    result = chat.malformed_result(call)
    assert (result.status, result.output) == ("malformed", call.error)


def test_no_call_is_none():
    assert HERMES.parse("The answer is \\boxed{3}.") is None
    assert MARKDOWN.parse("Use `print` to show it.") is None


def test_markdown_calls():
    call = MARKDOWN.parse("Compute:\n```python\nprint(2 + 2)\n```\nDone.")
    assert (call.code, call.start, call.error) == ("print(2 + 2)\n", 9, None)
    assert MARKDOWN.parse("```python\nprint(1)\n").malformed
    assert "more than one" in MARKDOWN.parse("```python\na\n```\n```python\nb\n```").error


@pytest.mark.parametrize(
    "fmt, text, unterminated",
    [
        (MARKDOWN, "```python\nprint(1)\n", True),  # the turn ended inside the fence
        (MARKDOWN, "```python\na\n```\n```python\nb\n```", False),
        (HERMES, '<tool_call>\n{"name": "code_interpreter", "arguments": {"code": "1"}}', True),
        (HERMES, '<tool_call>\n{"name": "code_interpreter"}\n</tool_call>', False),
    ],
)
def test_unterminated_calls_are_marked(fmt, text, unterminated):
    call = fmt.parse(text)
    assert call.malformed and call.unterminated is unterminated
    assert chat.malformed_result(call).error_type == (chat.UNTERMINATED if unterminated else "MalformedToolCall")


def test_observation_text_is_the_qwen3_tool_turn():
    assert HERMES.observation_text("42") == (
        "\n<|im_start|>user\n<tool_response>\n42\n</tool_response><|im_end|>\n<|im_start|>assistant\n")
    assert MARKDOWN.observation_text("42") == "\n<|im_start|>user\n```output\n42\n```<|im_end|>\n<|im_start|>assistant\n"


def test_unknown_format_lists_valid_ones():
    with pytest.raises(ValueError, match="hermes, markdown"):
        chat.get_format("xml")


def test_render_prompt_matches_the_tokenizer_chat_template(tok):
    messages = [{"role": "system", "content": "sys"}, {"role": "user", "content": "What is 2+2?"}]
    assert chat.render_prompt(messages) == tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def test_split_turn_cuts_ids_and_logprobs_at_the_call(tok):
    text = "I will compute 12 * 12.\n" + chat.hermes_call_text("print(12 * 12)")
    ids = tok.encode(text, add_special_tokens=False) + [tok.convert_tokens_to_ids("<|im_end|>")]
    logprobs = [-(k + 1) / 10 for k in range(len(ids))]
    split = chat.split_turn(tok, ids, logprobs, HERMES)
    cut = ids.index(tok.convert_tokens_to_ids("<tool_call>"))
    assert split.reasoning.ids == tuple(ids[:cut]) and split.reasoning.logprobs == tuple(logprobs[:cut])
    assert split.call.ids == tuple(ids[cut:-1]) and split.call.logprobs == tuple(logprobs[cut:-1])
    assert split.stop.ids == (ids[-1],) and split.stop.logprobs == (logprobs[-1],)
    assert split.reasoning.text == "I will compute 12 * 12.\n"
    assert split.call.text == chat.hermes_call_text("print(12 * 12)") and split.stop.text == "<|im_end|>"
    assert split.parsed.code == "print(12 * 12)"
    assert {s.provenance for s in (split.reasoning, split.call, split.stop)} == {Provenance.ORIGINAL}


def test_split_turn_without_stop_token_or_call(tok):
    ids = tok.encode("The answer is 7", add_special_tokens=False)  # cut by the length limit: no <|im_end|>
    split = chat.split_turn(tok, ids, None, HERMES)
    assert (split.call, split.parsed, split.stop.ids, split.reasoning.ids) == (None, None, (), tuple(ids))


def test_fence_starting_inside_a_token_goes_to_the_call(tok):
    text = "Compute it: ```python\nprint(1)\n```"
    ids = tok.encode(text, add_special_tokens=False)
    split = chat.split_turn(tok, ids, None, MARKDOWN)
    assert split.reasoning.text + split.call.text == text
    assert split.call.text.lstrip().startswith("```python")  # the token holding " ```" belongs to the call
    assert split.parsed.code == "print(1)\n"


def test_split_turn_with_a_prefill_finds_a_call_that_starts_inside_it(tok):
    """Breakages checked: `locate_call` parsing only the sampled text (no call found)."""
    ids = tok.encode("print(1)\n```", add_special_tokens=False) + [tok.convert_tokens_to_ids("<|im_end|>")]
    split = chat.split_turn(tok, ids, None, MARKDOWN, prefix="```python\n")
    assert (split.reasoning.ids, split.call.ids, split.parsed.code) == ((), tuple(ids[:-1]), "print(1)\n")
    split = chat.split_turn(tok, ids, None, MARKDOWN, prefix="Let me compute.\n")  # a prefill without the call
    assert split.parsed is None and split.reasoning.ids == tuple(ids[:-1])


def test_token_bytes_are_exact_under_a_sequence_decoder():
    """The decoder transformers builds for a GGUF tokenizer (SmolLM2's): ByteFallback, Fuse, Replace, ByteLevel.
    Tokens holding part of a multi-byte character get exactly their bytes. Breakages checked: only a plain
    ByteLevel decoder treated as byte-level ("≡" came back as U+FFFD)."""
    from tokenizers import decoders

    from cleaner.lab.tokenizer import build_tokenizer

    tokenizer = build_tokenizer(["plain ascii words only"] * 50, vocab_size=300)
    tokenizer.backend_tokenizer.decoder = decoders.Sequence(
        [decoders.ByteFallback(), decoders.Fuse(), decoders.Replace("▁", " "), decoders.ByteLevel()])
    text = "x ≡ 3 (mod 7), y ≠ 2 → 中文"
    ids = tokenizer.encode(text, add_special_tokens=False)
    table = chat.token_bytes(tokenizer)
    assert [table[i] for i in tokenizer.encode("≡", add_special_tokens=False)] == [b"\xe2", b"\x89", b"\xa1"]
    assert chat.decode(tokenizer, ids) == tokenizer.decode(ids) == text


@settings(max_examples=60, deadline=None)
@given(
    before=st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40),
    code=st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=30),
)
def test_one_pass_location_agrees_with_prefix_decoding(tok, naive_locate, before, code):
    """On arbitrary unicode around the call, the one-pass index equals the authors' quadratic search."""
    text = before + chat.hermes_call_text(code)
    ids = tok.encode(text, add_special_tokens=False)
    found = chat.locate_call(tok, ids, HERMES)
    assert found is not None
    assert found[0] == naive_locate(tok, ids)
    assert chat.decode(tok, ids) == text
    if "<tool_call>" not in before and "</tool_call>" not in before + code:
        assert found[1].code == code


def test_token_bytes_decode_matches_the_tokenizer(tok):
    text = "naïve 日本 x=1\n\t<tool_call>ok</tool_call><|im_end|>"
    ids = tok.encode(text, add_special_tokens=False)
    assert chat.decode(tok, ids) == tok.decode(ids, skip_special_tokens=False) == text
    assert json.loads(json.dumps(chat.decode(tok, ids))) == text
