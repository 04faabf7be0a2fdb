"""Chat formats: parse the model's tool call, render tool responses as token deltas, split a sampled turn.

Two call formats (a registry, `FORMATS`):
- `hermes` (Qwen3, DemyAgent, CLEANER):
  `<tool_call>\\n{"name": "code_interpreter", "arguments": {"code": "..."}}\\n</tool_call>`
- `markdown`: a fenced block, ```` ```python\\n...\\n``` ````, for models without tool support (SmolLM2).

A call that cannot be parsed (bad JSON, no `code`, an unknown tool name, an unterminated call, two calls in one
turn) is a model error: `parse_call` returns it with an observation text telling the model what was wrong. It never
raises. An unterminated call (the turn ended inside it) is marked apart: it was cut, so SAAR never takes it as a
retry (`cleaner.saar.step`).

Splitting a sampled turn into reasoning and call is done in one pass over the token ids: each id maps to its bytes
(the byte-level BPE table, built once per tokenizer), the call is found in the decoded text by the same parser
that reads logged messages, and its character offset maps back to a token index by bisection. The authors' code
re-decodes every prefix instead, which is quadratic (see tests/benchmarks/test_call_location.py).
"""

from __future__ import annotations

import json
import re
from bisect import bisect_right
from dataclasses import dataclass
from functools import lru_cache
from itertools import accumulate
from typing import Any, Callable

from cleaner.registry import Registry
from cleaner.trajectory import Provenance, Span, ToolResult

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
TOOL_NAMES = ("code_interpreter",)  # the tool names the hermes parser accepts


@dataclass(frozen=True)
class ParsedCall:
    """A tool call found in assistant text. `start` is the character offset where the call begins. `error` is
    None for a valid call, else the observation text for the malformed call. For a malformed call `code` is what
    could be salvaged (the `"code"` string when one can be read, else the raw body); it is never executed and
    serves only to compare the attempt with its retry."""

    start: int
    code: str
    error: str | None = None
    unterminated: bool = False  # the text ended inside the call (no closing marker): it was cut, never complete

    @property
    def malformed(self) -> bool:
        return self.error is not None


def user_turn_text(content: str) -> str:
    """The token delta after a sampled `<|im_end|>`: close the assistant turn, a user turn holding `content`, and
    the next assistant header."""
    return f"\n{IM_START}user\n{content}{IM_END}\n{IM_START}assistant\n"


@dataclass(frozen=True)
class ChatFormat:
    name: str
    parse: Callable[[str], ParsedCall | None]
    response_open: str  # the user turn shows a tool output as response_open + output + response_close
    response_close: str

    def tool_response(self, output: str) -> str:
        return f"{self.response_open}{output}{self.response_close}"

    def observation_text(self, output: str) -> str:
        """The user turn that shows a tool output, as a token delta (`user_turn_text`)."""
        return user_turn_text(self.tool_response(output))


FORMATS = Registry("chat format")
get_format = FORMATS.__getitem__


_HERMES_OPEN, _HERMES_CLOSE = "<tool_call>", "</tool_call>"
_CODE_FIELD = re.compile(r'"code"\s*:\s*"((?:[^"\\]|\\.)*)"')
_HERMES_EXAMPLE = '<tool_call>\n{"name": "code_interpreter", "arguments": {"code": "print(1 + 1)"}}\n</tool_call>'


def _malformed(start: int, body: str, why: str, example: str, unterminated: bool = False) -> ParsedCall:
    m = _CODE_FIELD.search(body)
    code = body
    if m is not None:
        try:
            code = json.loads(f'"{m.group(1)}"')
        except json.JSONDecodeError:
            pass  # an invalid escape inside the string: keep the raw body
    error = f"Error: malformed tool call: {why}. Write exactly one call, like:\n{example}"
    return ParsedCall(start, code, error, unterminated)


def parse_hermes(text: str) -> ParsedCall | None:
    start = text.find(_HERMES_OPEN)
    if start < 0:
        return None
    body_start = start + len(_HERMES_OPEN)
    end = text.find(_HERMES_CLOSE, body_start)
    body = text[body_start:] if end < 0 else text[body_start:end]

    def malformed(why: str) -> ParsedCall:
        return _malformed(start, body, why, _HERMES_EXAMPLE, unterminated=end < 0)

    if end < 0:
        return malformed("no closing </tool_call>")
    if _HERMES_OPEN in text[end:]:
        return malformed("more than one tool call in one turn")
    try:
        call = json.loads(body)
    except json.JSONDecodeError as e:
        return malformed(f"the call is not valid JSON ({e.msg} at char {e.pos})")
    if not isinstance(call, dict):
        return malformed("the call must be a JSON object")
    name, args = call.get("name"), call.get("arguments")
    if name not in TOOL_NAMES:
        return malformed(f"unknown tool {name!r} (available: {', '.join(TOOL_NAMES)})")
    if isinstance(args, str):  # some models double-encode the arguments
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            return malformed("`arguments` is a string that is not valid JSON")
    if not isinstance(args, dict) or not isinstance(args.get("code"), str):
        return malformed('`arguments` must be an object with a string field "code"')
    return ParsedCall(start, args["code"])


_FENCE = re.compile(r"```(?:python|py)[ \t]*\n")
_FENCE_EXAMPLE = "```python\nprint(1 + 1)\n```"


def parse_markdown(text: str) -> ParsedCall | None:
    m = _FENCE.search(text)
    if m is None:
        return None
    end = text.find("```", m.end())
    if end < 0:
        why = "no closing ``` after the code"
        return _malformed(m.start(), text[m.end() :], why, _FENCE_EXAMPLE, unterminated=True)
    if _FENCE.search(text, end + 3):
        return _malformed(m.start(), text[m.end() : end], "more than one code block in one turn", _FENCE_EXAMPLE)
    return ParsedCall(m.start(), text[m.end() : end])


FORMATS.register("hermes")(ChatFormat("hermes", parse_hermes, "<tool_response>\n", "\n</tool_response>"))
FORMATS.register("markdown")(ChatFormat("markdown", parse_markdown, "```output\n", "\n```"))


def hermes_call_text(code: str) -> str:
    """The canonical hermes call for `code` (what Qwen3's chat template renders)."""
    payload = json.dumps({"name": "code_interpreter", "arguments": {"code": code}}, ensure_ascii=False)
    return f"{_HERMES_OPEN}\n{payload}\n{_HERMES_CLOSE}"


def render_prompt(messages: list[dict[str, Any]]) -> str:
    """ChatML text of the prompt messages followed by the assistant header (`add_generation_prompt`)."""
    body = "".join(f"{IM_START}{m['role']}\n{m['content']}{IM_END}\n" for m in messages)
    return f"{body}{IM_START}assistant\n"


def prompt_span(tokenizer: Any, messages: list[dict[str, Any]]) -> Span:
    text = render_prompt(messages)
    return Span(Provenance.PROMPT, tokenizer.encode(text, add_special_tokens=False), text)


def truncate_middle(text: str, max_chars: int) -> str:
    """`text` cut to at most `max_chars` characters by removing its middle: head, a marker naming how many
    characters were cut, tail. Head and tail split what is left evenly (the head gets the odd one). The paper shows
    the model 256 characters; the middle goes because outputs start, and tracebacks end, with what matters."""
    if max_chars < 0:
        raise ValueError(f"max_chars must be >= 0, got {max_chars}")
    if len(text) <= max_chars:
        return text
    cut = len(text) - max_chars
    while True:  # the marker's length depends on the count it shows, which grows with it; settle it
        marker = f"\n...[{cut} chars cut]...\n"
        keep = max_chars - len(marker)
        if keep < 2:
            return text[:max_chars]
        if len(text) - keep == cut:
            break
        cut = len(text) - keep
    tail = keep // 2
    head = keep - tail
    return text[:head] + marker + text[len(text) - tail:]


UNTERMINATED = "UnterminatedToolCall"  # error_type of a call the turn ended inside (never complete)


def malformed_result(call: ParsedCall) -> ToolResult:
    return ToolResult("malformed", call.error or "", UNTERMINATED if call.unterminated else "MalformedToolCall")


# ---------------------------------------------------------------------------------------------------------------
# Token-level: bytes per token id, and the split of a sampled turn.


def _bytes_to_unicode() -> dict[int, str]:
    """The GPT-2 byte-level alphabet: every byte maps to one printable character."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


_BYTE_DECODER = {c: b for b, c in _bytes_to_unicode().items()}


_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _decoder_steps(tokenizer: Any) -> list[str]:
    """The types of the tokenizer's decoder, in order: ["ByteLevel"], or the steps of a `Sequence` decoder (a
    tokenizer that transformers builds from a GGUF file has ["ByteFallback", "Fuse", "Replace", "ByteLevel"])."""
    decoder = tokenizer.backend_tokenizer.decoder
    if decoder is None:
        return []
    state = json.loads(decoder.__getstate__())
    return [step["type"] for step in state.get("decoders", [state])]


@lru_cache(maxsize=8)
def token_bytes(tokenizer: Any) -> tuple[bytes, ...]:
    """The bytes each token id stands for, for every id of `tokenizer` (a transformers fast tokenizer).

    Exact for byte-level BPE vocabularies (GPT-2, Qwen, SmolLM2, the lab tokenizer), whether the decoder is a plain
    `ByteLevel` or a `Sequence` that holds one: a token holding part of a multi-byte character gets exactly its
    bytes. Other tokens (a vocabulary without a byte-level alphabet) are decoded on their own, which is exact only
    where a token never holds part of a multi-byte character."""
    size = len(tokenizer)
    added = {i: t.content for i, t in tokenizer.added_tokens_decoder.items()}
    pieces = tokenizer.convert_ids_to_tokens(list(range(size)))
    steps = _decoder_steps(tokenizer)
    byte_level, byte_fallback = "ByteLevel" in steps, "ByteFallback" in steps
    table = []
    for i, piece in enumerate(pieces):
        if i in added:
            table.append(added[i].encode())
        elif byte_fallback and piece is not None and (m := _BYTE_FALLBACK.fullmatch(piece)):
            table.append(bytes([int(m.group(1), 16)]))
        elif byte_level and piece is not None and all(c in _BYTE_DECODER for c in piece):
            table.append(bytes(_BYTE_DECODER[c] for c in piece))
        else:
            table.append(tokenizer.decode([i]).encode())
    return tuple(table)


def decode(tokenizer: Any, ids: tuple[int, ...] | list[int]) -> str:
    table = token_bytes(tokenizer)
    return b"".join(table[i] for i in ids).decode("utf-8", errors="replace")


def locate_call(tokenizer: Any, ids: list[int] | tuple[int, ...], fmt: ChatFormat,
                prefix: str = "") -> tuple[int, ParsedCall] | None:
    """Index of the first token of the tool call in a sampled turn, and the parsed call; None without a call.
    One pass over the ids: byte offsets per token, one decode, one parse, one bisection. `prefix` is text the turn
    continues without having sampled it (a forced prefill); the call may begin inside it, and then at token 0."""
    table = token_bytes(tokenizer)
    pieces = [table[i] for i in ids]
    offsets = list(accumulate((len(p) for p in pieces), initial=0))
    # surrogateescape keeps one character per undecodable byte, so character offsets map back to bytes exactly
    text = b"".join(pieces).decode("utf-8", errors="surrogateescape")
    call = fmt.parse(prefix + text)
    if call is None:
        return None
    before_call = (prefix + text)[: call.start].encode("utf-8", errors="surrogateescape")
    byte_start = max(0, len(before_call) - len(prefix.encode()))
    return bisect_right(offsets, byte_start) - 1, call


@dataclass(frozen=True)
class SplitTurn:
    """A sampled turn cut into spans, with its parsed call (None when the turn makes no call)."""

    reasoning: Span
    call: Span | None
    stop: Span
    parsed: ParsedCall | None


def split_turn(
    tokenizer: Any,
    ids: list[int] | tuple[int, ...],
    logprobs: list[float] | tuple[float, ...] | None,
    fmt: ChatFormat,
    provenance: Provenance = Provenance.ORIGINAL,
    prefix: str = "",
) -> SplitTurn:
    """Cut one generation (ids as sampled, ending with `<|im_end|>` unless it hit the length limit) into
    reasoning / call / stop spans. Log-probs are cut at the same indices, so they stay aligned. `prefix`: see
    `locate_call`."""
    ids = tuple(ids)
    end = len(ids) - 1 if ids and ids[-1] == tokenizer.convert_tokens_to_ids(IM_END) else len(ids)
    found = locate_call(tokenizer, ids[:end], fmt, prefix)
    cut = end if found is None else found[0]

    def span(a: int, b: int) -> Span:
        lp = None if logprobs is None else tuple(logprobs[a:b])
        return Span(provenance, ids[a:b], decode(tokenizer, ids[a:b]), lp)

    call = None if found is None else span(cut, end)
    return SplitTurn(span(0, cut), call, span(end, len(ids)), None if found is None else found[1])


def observation_span(tokenizer: Any, fmt: ChatFormat, output: str) -> Span:
    text = fmt.observation_text(output)
    return Span(Provenance.OBSERVATION, tokenizer.encode(text, add_special_tokens=False), text)
