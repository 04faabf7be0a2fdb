"""Offline SAAR: purify logged agent trajectories with the same functions the online rollout uses.

    python -m cleaner.purify IN OUT.jsonl [--input-format auto|NAME] [--format hermes|markdown]
                             [--outputs-in auto|tool|user] [--code-argument NAME] [--prompt-messages N]
                             [--error-pattern REGEX] [--tokenizer lab|smollm2|DIR|FILE.gguf] [--strict]
                             [--gamma G] [--similarity NAME] [--max-retries K] [--rollback-probability P] [--seed S]

Input: JSON Lines or one JSON array, optionally gzip-compressed (`cleaner.purify.sources`), in one of the formats
of `cleaner.purify.formats` (docs/purify.md shows each): OpenAI chat messages, TRL's prompt-completion, SkyRL's
and verl's ChatML dumps, ShareGPT / LLaMA-Factory. A reader turns each record into chat messages (`Log`): the
prompt (the messages before the first assistant message, or the first N by `"prompt_messages": N` or
`--prompt-messages N`, which may hold a few-shot demonstration; never changed), then assistant messages, each
followed by the output of its call when it made one (a `tool` or `user` message, `--outputs-in`).

Calls: in the content (a hermes `<tool_call>` or a ```python fence, `--format`) or in OpenAI `tool_calls` (one per
message), to a tool of any name. The code is the call's argument named by `--code-argument`, else the one the
record's `tools` schema gives that tool (`code`, or its only string parameter), else `code`. A call to a tool that
is not a code interpreter (its arguments hold no code, and it is not `code_interpreter`) is kept as it is and never
triggers SAAR. Which calls failed: `cleaner.purify.detect` (the log's own mark first, then the text). A call our
parser cannot read is `malformed` unless the log marks its outcome. A call with no output after it was never
executed (SAAR abandons a retry like that); when such a last message ends inside its call, it was cut by a length
limit, so no `<|im_end|>` follows it in the tokens. The classification of every call is written to the output
(`read_as.calls`).

Offline, the retries a failure event looks ahead to are simply the next assistant turns of the log. A log
recorded without SAAR shows retry i after the whole chain of earlier failures, whereas online SAAR shows it only
the latest attempt; the splice is the same either way.

Two ways to cut a turn into reasoning and call. Without a tokenizer (the default) the purifier works on text: a
turn is cut at the character where its call starts, nothing is tokenized and tokens are not counted. With
`--tokenizer` each text is encoded and cut at the token holding that character, exactly as a sampled turn is
(`chat.split_turn`), and token-level trajectories (`cleaner.trajectory`) are written beside OUT as
`<OUT stem>.tokens.jsonl`; a spliced message is then rebuilt from the ids of its whole spans.

Output: the same records, unrelated fields kept, the generated messages purified, `purification` holding the stats
(`cleaner.saar.SaarStats`) and `read_as` how the record was read. A message that no splice touched is written as it
was. Tool outputs are shown to the model as the format wraps them (`<tool_response>`, ```output) unless they
already carry that wrapper; outputs in user messages are shown as they are. With SmolLM2's tokenizer the prompt
and outputs are rendered by its own chat template instead (`cleaner.purify.template`). A record that cannot be
read goes to `<OUT stem>.rejected.jsonl` with its place and one-line reason, and the others are purified;
`--strict` refuses the whole file instead. Records stream through in chunks (`CHUNK_RECORDS`), so memory does not
grow with the file (but for the hashes of the ids seen); files are replaced atomically when the run ends. A record
no splice changed is written as its input line with the two keys appended, byte for byte.
"""

from __future__ import annotations

import gc
import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

from cleaner import chat, saar
from cleaner.purify import formats, sources
from cleaner.purify.detect import (  # noqa: F401 (classify_output and STATUS_ALIASES: the module's API)
    STATUS_ALIASES, classify_output, classify_text, log_mark)
from cleaner.purify.log import Log, PurifyInputError, content_text, model_text, with_text
from cleaner.purify.template import ChatTemplate
from cleaner.trajectory import Provenance, Span, ToolResult, Trajectory, Turn

OUTPUT_ROLES = {"auto": ("tool", "user"), "tool": ("tool",), "user": ("user",)}  # --outputs-in -> roles read
CHUNK_RECORDS = 256  # records read, tokenized, purified and written together
DEFAULT_CODE_ARGUMENT = "code"


class PurifyFileError(ValueError):
    """A file that cannot be read at all (its format is unknown, or --strict met a bad record): one line."""


# ---------------------------------------------------------------------------------------------------------------
# Calls: where they are, which tool, which argument holds the code.


def tool_code_arguments(tools: Any) -> dict[str, str]:
    """Tool name -> the argument that holds its code, from OpenAI-style tool schemas (a list, or a JSON string of
    one, as LLaMA-Factory keeps them): `code` when the tool has it, else its only string parameter."""
    if isinstance(tools, str):
        try:
            tools = json.loads(tools)
        except json.JSONDecodeError:
            return {}
    out: dict[str, str] = {}
    for entry in tools if isinstance(tools, list) else ():
        fn = entry.get("function", entry) if isinstance(entry, dict) else None
        params = fn.get("parameters") if isinstance(fn, dict) else None
        props = params.get("properties") if isinstance(params, dict) else None
        if not (isinstance(fn.get("name") if fn else None, str) and isinstance(props, dict)):
            continue
        strings = [k for k, v in props.items() if isinstance(v, dict) and v.get("type") == "string"]
        if "code" in props or len(strings) == 1:
            out[fn["name"]] = "code" if "code" in props else strings[0]
    return out


@dataclass(frozen=True)
class Call:
    """What an assistant message calls: `parsed` for a code-interpreter call (valid or malformed), else `tool`,
    the name of another tool, whose call is kept as it is."""

    parsed: chat.ParsedCall | None = None
    tool: str | None = None


def _call_of(name: Any, args: Any, start: int, code_argument: str, malformed: chat.ParsedCall) -> Call:
    """The call to tool `name` with `args` (a dict, or a JSON string of one); `malformed`: what to return when it
    is a code-interpreter call without its code."""
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            return Call(malformed)
    if isinstance(args, dict) and isinstance(args.get(code_argument), str):
        return Call(chat.ParsedCall(start, args[code_argument]))
    if name in chat.TOOL_NAMES or not isinstance(name, str) or not isinstance(args, dict):
        return Call(malformed)
    return Call(tool=name)


def _content_call(text: str, fmt: chat.ChatFormat, code_argument: Any) -> Call:
    """The call in assistant text. A hermes call the strict parser refuses only for its tool name or argument
    name is read with any name and the code argument of that tool."""
    parsed = fmt.parse(text)
    if fmt.name != "hermes" or parsed is None or not parsed.malformed or parsed.unterminated:
        return Call(parsed)
    open_, close = "<tool_call>", "</tool_call>"
    body_start = parsed.start + len(open_)
    end = text.find(close, body_start)
    if open_ in text[end:]:
        return Call(parsed)  # two calls in one turn: malformed
    try:
        body = json.loads(text[body_start:end])
    except json.JSONDecodeError:
        return Call(parsed)
    if not isinstance(body, dict):
        return Call(parsed)
    return _call_of(body.get("name"), body.get("arguments"), parsed.start, code_argument(body.get("name")), parsed)


def _assistant_text(m: dict[str, Any], where: str, code_argument: Any) -> tuple[str, Call | None]:
    """The text the model wrote (its thinking first, `log.model_text`), and its call when it is in OpenAI
    `tool_calls` (None: look for it in the text). A `tool_calls` call is rendered after the content as Qwen's chat
    template renders it: `\\n<tool_call>\\n{"name": ..., "arguments": ...}\\n</tool_call>`."""
    content = model_text(m)
    calls = m.get("tool_calls")
    if not calls:
        return content, None
    if not isinstance(calls, list) or len(calls) != 1:
        raise PurifyInputError(f"{where} has {len(calls) if isinstance(calls, list) else 'malformed'} tool_calls; "
                               "one call per message can be purified")
    fn = calls[0].get("function") if isinstance(calls[0], dict) else None
    if not (isinstance(fn, dict) and isinstance(fn.get("name"), str) and isinstance(fn.get("arguments"), (str, dict))):
        raise PurifyInputError(f'{where}: tool_calls[0] must be {{"function": {{"name": str, "arguments": ...}}}}')
    args = fn["arguments"] if isinstance(fn["arguments"], str) else json.dumps(fn["arguments"], ensure_ascii=False)
    name = json.dumps(fn["name"], ensure_ascii=False)
    separator = "\n" if content_text(m) else ""  # Qwen3: a line break only after content, not after thinking
    text = f'{content}{separator}<tool_call>\n{{"name": {name}, "arguments": {args}}}\n</tool_call>'
    arg = code_argument(fn["name"])
    malformed = chat.ParsedCall(len(content), args, "Error: malformed tool call: `arguments` must be an object "
                                f'with a string field "{arg}"')
    return text, _call_of(fn["name"], fn["arguments"], len(content), arg, malformed)


# ---------------------------------------------------------------------------------------------------------------
# A log -> turns as text.


@dataclass(frozen=True)
class ReadOptions:
    fmt: chat.ChatFormat  # where calls are found in assistant content
    outputs_in: str = "auto"  # a key of OUTPUT_ROLES
    error_pattern: re.Pattern[str] | None = None  # an output it matches failed too (besides a traceback)
    code_argument: str | None = None  # the call argument holding the code; None: the tools schema's, else "code"
    prompt_messages: int | None = None  # --prompt-messages: the first N messages of every record are prompt
    template: ChatTemplate | None = None  # the tokenizer's own chat template; None: ChatML (`cleaner.chat`)


@dataclass(frozen=True)
class LoggedTurn:
    """One assistant message read as text, before it is tokenized."""

    message: int  # its index in `Log.messages`
    prefill: str  # the forced start of its content; encoded with the context before it, so mask 0
    sampled: str  # the rest, as the model sampled it (its thinking and a `tool_calls` call rendered in)
    call: Call  # its call (none: `Call()`), found in prefill + sampled
    stop: bool  # an <|im_end|> follows it (False: cut by a length limit)
    result: ToolResult | None  # None: no code call, or a call never executed
    observation: str | None  # the text after <|im_end|>: the user turn showing the output, then the next prefill

    @property
    def fmt(self) -> chat.ChatFormat:
        """A format whose parser returns this turn's call (the text was parsed once, here)."""
        return chat.ChatFormat("read", lambda _, c=self.call.parsed: c, "", "")


def _hint(text: str, opts: ReadOptions) -> str:
    if opts.fmt.name != "markdown" and chat.parse_markdown(text) is not None:
        return "; its ```python fence is a call with --format markdown"
    if opts.fmt.name == "markdown" and "```" in text:
        return "; only ```python or ```py fences are calls"
    return "; if it is a few-shot demonstration, give \"prompt_messages\": N or --prompt-messages N"


def _classify(message: dict[str, Any], call: chat.ParsedCall, pattern: re.Pattern[str] | None,
              where: str) -> tuple[ToolResult, str]:
    """(result of one code call, the rule that decided it): the log's own mark, else the parser, else the text."""
    content = content_text(message)
    mark = log_mark(message, content, where)
    if mark is not None:
        return mark
    if call.malformed:
        return replace(chat.malformed_result(call), output=content), "parser"
    return classify_text(content, pattern)


def read_log(log: Log, opts: ReadOptions) -> tuple[str, list[LoggedTurn], dict[str, Any]]:
    """The prompt text, the turns and how the record was read (`read_as`), or `PurifyInputError` saying why it
    cannot be read. Text only: `build_trajectory` tokenizes."""
    messages, n = log.messages, log.prompt_messages
    schema = tool_code_arguments(log.tools) if log.tools is not None and opts.code_argument is None else {}

    def code_argument(name: Any) -> str:
        if opts.code_argument is not None:
            return opts.code_argument
        return schema.get(name, DEFAULT_CODE_ARGUMENT) if isinstance(name, str) else DEFAULT_CODE_ARGUMENT

    def prefill(k: int) -> str:
        return messages[k].get("prefill", "") if k < len(messages) else ""

    rendered = [{"role": m["role"], "content": _assistant_text(m, f"message {k}", code_argument)[0]
                 if m["role"] == "assistant" else content_text(m)} for k, m in enumerate(messages[:n])]
    template = opts.template
    prompt_text = (chat.render_prompt(rendered) if template is None else template.prompt(rendered)) + prefill(n)
    turns, calls, roles, k = [], [], set(), n
    while k < len(messages):
        m, where = messages[k], f"message {k}"
        if m["role"] != "assistant":
            raise PurifyInputError(f"{where} has role {m['role']!r} where an assistant message must come")
        text, call = _assistant_text(m, where, code_argument)
        if call is None:
            call = _content_call(text, opts.fmt, code_argument)
        parsed, nxt = call.parsed, messages[k + 1] if k + 1 < len(messages) else None
        cut = nxt is None and (log.last_cut if log.last_cut is not None else parsed is not None and parsed.unterminated)
        result, observation = None, None  # of a call whose output follows
        if parsed is None and call.tool is None:
            if nxt is not None:
                raise PurifyInputError(f"{where} makes no tool call ({opts.fmt.name} format), so it must be the last "
                                       f"message, but message {k + 1} (role {nxt['role']!r}) follows"
                                       + _hint(text, opts))
        elif nxt is None:
            calls.append({"message": k, "status": None, "error_type": None, "by": "cut" if cut else "no output"})
        elif nxt["role"] in OUTPUT_ROLES[opts.outputs_in]:
            roles.add(nxt["role"])
            output = content_text(nxt)
            if parsed is None:
                calls.append({"message": k, "status": None, "error_type": None, "by": "other tool", "tool": call.tool})
                result = None
            else:
                result, by = _classify(nxt, parsed, opts.error_pattern, f"message {k + 1}")
                calls.append({"message": k, "status": result.status, "error_type": result.error_type, "by": by})
            if template is None:
                shown = output
                if nxt["role"] == "tool" and opts.fmt.response_open.strip() not in shown:
                    shown = opts.fmt.tool_response(shown)
                observation = chat.user_turn_text(shown)
            else:
                rendered += [{"role": "assistant", "content": text}, {"role": nxt["role"], "content": output}]
                observation = template.observation(rendered)
            observation += prefill(k + 2)
        else:
            raise PurifyInputError(f"{where} makes a tool call, so message {k + 1} must hold its output "
                                   f"({' or '.join(OUTPUT_ROLES[opts.outputs_in])} role), not role {nxt['role']!r}")
        start = prefill(k)
        turns.append(LoggedTurn(k, start, text[len(start):], call, not cut, result, observation))
        k += 2 if observation is not None else 1
    if len(roles) > 1:
        raise PurifyInputError("outputs come in both tool and user messages; use one role per record")
    return prompt_text, turns, {"prompt_messages": n, "outputs_in": next(iter(roles), None), "calls": calls}


# ---------------------------------------------------------------------------------------------------------------
# Turns as text -> a trajectory: token-level (with a tokenizer) or text-level (without).


def texts_to_encode(prompt_text: str, turns: list[LoggedTurn]) -> list[str]:
    """The texts `build_trajectory` takes the ids of, in its order."""
    return [prompt_text] + [t for turn in turns for t in (turn.sampled, turn.observation) if t is not None]


def encode_texts(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, in one batch call (the tokenizers library encodes a batch on all cores)."""
    return tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []


def build_trajectory(trajectory_id: str, prompt_text: str, turns: list[LoggedTurn], ids: Iterator[list[int]],
                     tokenizer: Any, meta: dict[str, Any]) -> Trajectory:
    """The token-level trajectory of a read record, from the ids of its `texts_to_encode`. Each assistant message
    is split with `chat.split_turn`, exactly as a sampled turn would be."""
    im_end = tokenizer.convert_tokens_to_ids(chat.IM_END)
    prompt = Span(Provenance.PROMPT, next(ids), prompt_text)
    out = []
    for t in turns:
        split = chat.split_turn(tokenizer, next(ids) + [im_end] * t.stop, None, t.fmt, prefix=t.prefill)
        observation = None if t.observation is None else Span(Provenance.OBSERVATION, next(ids), t.observation)
        meta_turn = {"message": t.message}
        if split.parsed is None:
            out.append(Turn(split.reasoning, split.stop, observation=observation, meta=meta_turn))
            continue
        out.append(Turn(split.reasoning, split.stop, split.call, split.parsed.code, t.result, observation,
                        meta=meta_turn))
    return Trajectory(trajectory_id, prompt, tuple(out), meta=meta)


def text_trajectory(trajectory_id: str, prompt_text: str, turns: list[LoggedTurn], meta: dict[str, Any]) -> Trajectory:
    """The trajectory of a read record without tokens: each turn cut at the character where its call starts
    (at the start of the sampled text when the call begins inside the prefill); spans hold text and no ids. The
    two stop spans are shared (spans are immutable)."""
    original, observed = Provenance.ORIGINAL, Provenance.OBSERVATION
    out = []
    for t in turns:
        stop = _TEXT_STOP if t.stop else _TEXT_NO_STOP
        observation = None if t.observation is None else Span(observed, (), t.observation)
        parsed = t.call.parsed
        if parsed is None:
            out.append(Turn(Span(original, (), t.sampled), stop, observation=observation, meta={"message": t.message}))
            continue
        cut = max(parsed.start - len(t.prefill), 0)
        out.append(Turn(Span(original, (), t.sampled[:cut]), stop, Span(original, (), t.sampled[cut:]),
                        parsed.code, t.result, observation, meta={"message": t.message}))
    return Trajectory(trajectory_id, Span(Provenance.PROMPT, (), prompt_text), tuple(out), meta=meta)


_TEXT_STOP, _TEXT_NO_STOP = Span(Provenance.ORIGINAL, (), chat.IM_END), Span(Provenance.ORIGINAL, (), "")


def trajectory_from_messages(record: dict[str, Any], tokenizer: Any, fmt: chat.ChatFormat) -> Trajectory:
    """The token-level trajectory of one `{"id": ..., "messages": [...]}` record, read as the CLI reads it (the
    lab's SFT data is built this way); `PurifyInputError` when it cannot be read."""
    log = formats.READERS["messages"].read(record, None)
    prompt_text, turns, _ = read_log(log, ReadOptions(fmt))
    ids = iter(encode_texts(tokenizer, texts_to_encode(prompt_text, turns)))
    meta = {key: v for key, v in record.items() if key not in ("id", "messages")}
    return build_trajectory(str(record["id"]), prompt_text, turns, ids, tokenizer, meta)


def purify_turns(turns: tuple[Turn, ...], cfg: saar.SaarConfig,
                 applies: bool) -> tuple[tuple[Turn, ...], saar.SaarStats]:
    """Walk the logged turns once; at each model error (when SAAR applies) run one failure event over the next
    turns with `saar.step`, and keep what it leaves in place."""
    stats = saar.SaarStats(saar_applied=applies)
    out: list[Turn] = []
    i = 0
    while i < len(turns):
        turn = turns[i]
        i += 1
        stats.count_call(turn, lookahead=False)
        if not (applies and saar.triggers(turn.result)):
            out.append(turn)
            continue
        event = saar.FailureEvent(turn, stats)
        while event.outcome is None:
            if i == len(turns):  # the log ends inside the lookahead
                event.end(saar.Outcome.ABANDONED)
            elif event.offer(turns[i], cfg) is not saar.Outcome.ABANDONED:
                i += 1
        out.append(event.in_place)
    stats.count_final(out)
    return tuple(out), stats


def purify(traj: Trajectory, cfg: saar.SaarConfig, seed: int) -> Trajectory:
    turns, stats = purify_turns(traj.turns, cfg, saar.applies_to(cfg, seed, traj.id))
    return Trajectory(traj.id, traj.prompt, turns, stats.to_dict(), traj.meta, traj.group)


def turn_text(tokenizer: Any | None, turn: Turn) -> str:
    """What the model wrote in a turn (reasoning and call), decoded from the ids of its whole spans with a
    tokenizer, so multi-byte text comes back byte-exact, or the spans' text without one."""
    if tokenizer is None:
        return turn.content
    return chat.decode(tokenizer, turn.reasoning.ids + (turn.call.ids if turn.call is not None else ()))


def response_text(tokenizer: Any | None, turns: tuple[Turn, ...]) -> str:
    """The text of the generated turns as the model saw them (ChatML), for the dumps that hold text."""
    return "".join(turn_text(tokenizer, t) + t.stop.text + (t.observation.text if t.observation is not None else "")
                   for t in turns)


def to_messages(log: Log, turns: tuple[Turn, ...], tokenizer: Any | None) -> list[tuple[int, dict[str, Any]]]:
    """The generated messages of a purified trajectory, each with its index in `log.messages`. A turn no splice
    touched is its source messages as they were (the same objects). A spliced turn is the message its call came
    from, with its model text rebuilt (`turn_text`; only the reasoning when the call is in `tool_calls`) after
    the prefill that stands at its place, and put back in its fields (`log.with_text`). Every observation is
    followed by the message that followed it in the log."""
    source = log.messages
    out: list[tuple[int, dict[str, Any]]] = []
    prefill = source[log.prompt_messages].get("prefill", "")
    for turn in turns:
        k = turn.meta["message"]
        if not turn.splices:
            out.append((k, source[k]))
        else:
            assert turn.call is not None
            in_tool_calls = bool(source[k].get("tool_calls"))
            text = turn_text(tokenizer, replace(turn, call=None) if in_tool_calls else turn)
            message = with_text(source[k], prefill + text)
            if prefill or "prefill" in source[k]:
                message["prefill"] = prefill
            out.append((k, message))
        if turn.observation is not None:
            out.append((k + 1, source[k + 1]))
        prefill = source[k + 2].get("prefill", "") if k + 2 < len(source) else ""
    return out


# ---------------------------------------------------------------------------------------------------------------
# Files, streamed.


@dataclass(frozen=True)
class Rejected:
    line: int  # the line number, or the item number in a JSON array (`where`)
    reason: str
    record: Any  # the parsed record, or the text when it is not a JSON object
    where: str = "line"

    def to_dict(self) -> dict[str, Any]:
        key = "record" if isinstance(self.record, dict) else "text"
        record = self.record.decode("utf-8", errors="backslashreplace") if isinstance(self.record, bytes) \
            else self.record
        return {self.where: self.line, "reason": self.reason, key: record}


@dataclass
class Item:
    """One readable record on its way through."""

    id: str  # the record's id, or its place: "line N" (or "item N" in a JSON array)
    record: dict[str, Any]
    reader: formats.Reader
    log: Log
    read_as: dict[str, Any]
    prompt_text: str
    turns: list[LoggedTurn]
    line: str | None = None  # its line in a JSON Lines file, as it was
    original: Trajectory | None = None  # once its chunk is tokenized


def _reason_kind(reason: str) -> str:
    """A rejection reason with its numbers and quoted values blanked, up to its first `;`: what rejections are
    counted under in the summary."""
    kind = re.sub(r"'[^']*'", "'…'", re.sub(r"\d+", "N", reason)).split("; ")[0]
    return kind if len(kind) <= 110 else kind[:109] + "…"


@dataclass
class Tally:
    """What a run saw, summed as records stream through."""

    records: int = 0
    trajectories: int = 0
    purified: int = 0  # trajectories a splice changed
    rejected: Counter = field(default_factory=Counter)  # reason kind -> count
    calls: int = 0  # code calls with an output
    failures: Counter = field(default_factory=Counter)  # rule that found a failure -> count
    tokens_before: int = 0
    tokens_after: int = 0
    stats: dict[str, Any] = field(default_factory=dict)

    def add_read_as(self, read_as: dict[str, Any]) -> None:
        for call in read_as["calls"]:
            if call["status"] is not None:
                self.calls += 1
                if call["status"] != "ok":
                    self.failures[call["by"]] += 1


class _Outputs:
    """OUT, its rejected file and its token file, written through temporary files renamed into place at the end
    (`commit`), or removed (`discard`), so readers never see half a file."""

    def __init__(self, dst: Path, write_tokens: bool):
        self.paths = {"out": dst, "rejected": _beside(dst, ".rejected.jsonl")}
        if write_tokens:
            self.paths["tokens"] = _beside(dst, ".tokens.jsonl")
        dst.parent.mkdir(parents=True, exist_ok=True)
        self.files: dict[str, TextIO] = {}

    def _tmp(self, key: str) -> Path:
        return self.paths[key].with_name(f".{self.paths[key].name}.tmp")

    def write(self, key: str, line: str) -> None:
        if key not in self.files:
            self.files[key] = open(self._tmp(key), "w", encoding="utf-8")
        self.files[key].write(line + "\n")

    def commit(self) -> None:
        for key in ("out", "tokens"):
            if key in self.paths and key not in self.files:  # an empty output still replaces an old one
                self.files[key] = open(self._tmp(key), "w", encoding="utf-8")
        for f in self.files.values():
            f.close()
        for key, path in self.paths.items():
            if key in self.files:
                self._tmp(key).replace(path)
            else:
                path.unlink(missing_ok=True)  # a rejected file from an earlier run would describe another input

    def discard(self) -> None:
        for key, f in self.files.items():
            f.close()
            self._tmp(key).unlink(missing_ok=True)


_COUNTS = (  # label in the summary table -> key of the episode statistics
    ("SAAR applied (draw with p)", "saar_applied"),
    ("first-attempt calls", "first_attempt_calls"),
    ("first-attempt failures (model errors)", "first_attempt_failures"),
    ("infrastructure failures (never trigger)", "infra_failures"),
    ("rollbacks triggered", "rollbacks_triggered"),
    ("  recovered", "rollbacks_recovered"),
    ("  exhausted (K retries failed)", "rollbacks_exhausted"),
    ("  abandoned (retry not executed)", "rollbacks_abandoned"),
    ("  interrupted (infrastructure)", "rollbacks_interrupted"),
    ("splices shallow", "splices_shallow"),
    ("splices deep", "splices_deep"),
    ("failures left in final trajectories", "final_failures"),
)


@dataclass(frozen=True)
class Report:
    records: int  # records read: trajectories + rejected
    trajectories: int
    purified: int
    rejected: int
    rejected_by_reason: dict[str, int]
    calls: int
    failures_by_rule: dict[str, int]
    tokens_before: int | None  # None: no tokenizer, tokens not counted
    tokens_after: int | None
    stats: dict[str, Any]
    tokenizer: str | None
    rejected_path: Path

    @property
    def mostly_rejected(self) -> bool:
        """More than half of the records were rejected: the CLI exits 1."""
        return self.rejected > self.trajectories

    def table(self) -> str:
        """The summary the CLI prints: records, counts of the run's episodes (`stats`, keys of `_COUNTS`), the
        failures found by the rule that found them, and tokens."""
        rows = [
            ("records read", self.records),
            ("trajectories", self.trajectories),
            ("  purified (changed)", self.purified),
            ("  unchanged", self.trajectories - self.purified),
            ("records rejected", self.rejected),
            *((label, self.stats.get(key, 0)) for label, key in _COUNTS),
            ("calls with an output", self.calls),
            ("failures found", sum(self.failures_by_rule.values())),
            *((f"  by {rule}", n) for rule, n in sorted(self.failures_by_rule.items())),
        ]
        if self.tokens_before is None or self.tokens_after is None:
            rows.append(("tokens", "not counted: no --tokenizer"))
        else:
            removed = self.tokens_before - self.tokens_after
            share = removed / self.tokens_before if self.tokens_before else 0.0
            rows += [(f"tokens before -> after ({self.tokenizer})", f"{self.tokens_before} -> {self.tokens_after}"),
                     ("tokens removed", f"{removed} ({share:.1%})")]
        width = max(len(name) for name, _ in rows)
        table = "\n".join(f"{name:<{width}}  {value:>14}" for name, value in rows)
        if self.rejected:
            table += "\nrejected, by reason:\n" + "\n".join(
                f"{n:>8}  {kind}" for kind, n in sorted(self.rejected_by_reason.items(), key=lambda kv: -kv[1]))
            table += f"\nrejected records, each with its line number and reason: {self.rejected_path}"
        return table

    def warnings(self) -> list[str]:
        """What the CLI prints to stderr: no failure found, or most records rejected."""
        out = []
        if self.calls and not self.failures_by_rule:
            out.append(f"warning: no failed call found among {self.calls} calls with an output; if this log shows "
                       "failures another way, give --error-pattern REGEX (it adds to the traceback search) or mark "
                       "outputs with a status field")
        if self.mostly_rejected and not self.trajectories:
            out.append(f"error: no record of the input could be read ({self.rejected} rejected); see "
                       f"{self.rejected_path}")
        elif self.mostly_rejected:
            out.append(f"error: {self.rejected} of {self.records} records were rejected (more than half); see "
                       f"{self.rejected_path}")
        return out


def _beside(dst: Path, suffix: str) -> Path:
    return dst.with_name(dst.name.removesuffix(".jsonl") + suffix)


def _compile(pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern, re.MULTILINE)
    except re.error as e:
        raise ValueError(f"--error-pattern {pattern!r} is not a valid regular expression: {e}") from None


def _read_entry(place: str, value: dict[str, Any], reader: formats.Reader, opts: ReadOptions,
                seen: set[int]) -> Item:
    if "id" in value and (not isinstance(value["id"], (str, int)) or isinstance(value["id"], bool)):
        raise PurifyInputError(f"id must be a string or an integer, got {value['id']!r}")
    rid = str(value["id"]) if "id" in value else place
    if hash(rid) in seen:
        raise PurifyInputError(f"duplicate id {rid!r}")
    log = reader.read(value, opts.prompt_messages)
    prompt_text, turns, read_as = read_log(log, opts)
    seen.add(hash(rid))
    return Item(rid, value, reader, log, {"shape": reader.name, **read_as}, prompt_text, turns)


def iter_items(path: Path, opts: ReadOptions, strict: bool = False, input_format: str | None = None,
               rejected: list[Rejected] | _RejectedSink | None = None) -> Iterator[Item]:
    """The readable records of `path`, one at a time; those that cannot be read are appended to `rejected` with
    why (as they come). Each record is read by `input_format`'s reader, else by the first reader that claims it (`formats`); a
    first JSON object that no reader knows raises `PurifyFileError` (the file's format is unknown: nothing is
    read as another format), as does a bad record with `strict`. Duplicate ids are found by their 64-bit hashes
    (so memory stays small; two different ids sharing a hash are reported as duplicates, about one chance in 10^7
    for a million records)."""
    where, entries = sources.records(path)
    forced = None if input_format is None else formats.READERS[input_format]
    seen: set[int] = set()
    known = forced is not None  # a record of a known format was met: an unknown one later is only rejected
    for place, raw, value in entries:
        try:
            if isinstance(value, PurifyInputError):
                raise value
            if not isinstance(value, dict):
                raise PurifyInputError("expected a JSON object")
            name = formats.claims(value) if forced is None else forced.name
            if forced is not None and not all(key in value for key in forced.keys):
                raise PurifyInputError(f"no trajectory: expected {forced.shape} (--input-format {forced.name})")
            if name is None and not known:
                raise PurifyFileError(formats.unknown_format(value, f"{path}:{place}"))
            known = True
            if name is None:
                raise PurifyInputError(formats.expected())
            item = _read_entry(f"{where} {place}", value, formats.READERS[name], opts, seen)
            item.line = raw if where == "line" and isinstance(raw, str) else None
            yield item
        except PurifyInputError as e:
            e.__traceback__ = None  # it holds this frame, which holds `value` (a source's error): a reference cycle
            if strict:
                raise PurifyFileError(f"{path}:{place}: {e}") from None
            record = value if isinstance(value, dict) else raw
            if isinstance(record, bytes):
                record = record.decode("utf-8", errors="backslashreplace")
            if rejected is not None:
                rejected.append(Rejected(place, str(e), record, where))


def read_items(path: Path, tokenizer: Any | None, opts: ReadOptions, strict: bool = False,
               input_format: str | None = None) -> tuple[list[Item], list[Rejected]]:
    """Every record of `path` read into a trajectory (`iter_items`, `_trajectories`), and those that could not
    be, with why: the whole file in memory, for tests and small logs (`run` streams)."""
    rejected: list[Rejected] = []
    items = list(iter_items(path, opts, strict, input_format, rejected))
    for item, traj in zip(items, _trajectories(items, tokenizer)):
        item.original = traj
    return items, rejected


def with_keys(line: str, record: dict[str, Any], added: dict[str, Any]) -> str | None:
    """The JSON object `line` (the text of `record`) with the keys of `added` appended before its closing brace,
    so every byte of the record stays as the log wrote it (its escapes and spacing too); None where that cannot be
    done (a key already there)."""
    body = line.rstrip()
    head = body[:-1].rstrip()
    if any(key in record for key in added) or not body.endswith("}") or head.endswith("{"):
        return None
    return head + ", " + json.dumps(added, ensure_ascii=False)[1:]  # '{"k": v, ...}' less its brace


class _RejectedSink:
    """`iter_items`' rejections during `run`: each written out as it comes, so that a file of rejected records
    (a whole log in a format read wrongly) streams in constant memory too."""

    def __init__(self, outputs: _Outputs, tally: Tally):
        self.outputs, self.tally = outputs, tally

    def append(self, r: Rejected) -> None:
        self.outputs.write("rejected", json.dumps(r.to_dict(), ensure_ascii=False))
        self.tally.rejected[_reason_kind(r.reason)] += 1


def _chunks(items: Iterator[Item], size: int) -> Iterator[list[Item]]:
    chunk: list[Item] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _trajectories(chunk: list[Item], tokenizer: Any | None) -> list[Trajectory]:
    def meta(item: Item) -> dict[str, Any]:
        return {key: v for key, v in item.record.items() if key not in ("id",) + item.reader.keys}

    if tokenizer is None:
        return [text_trajectory(item.id, item.prompt_text, item.turns, meta(item)) for item in chunk]
    ids = iter(encode_texts(tokenizer, [t for item in chunk for t in texts_to_encode(item.prompt_text, item.turns)]))
    return [build_trajectory(item.id, item.prompt_text, item.turns, ids, tokenizer, meta(item)) for item in chunk]


# Why `run` pauses Python's cyclic garbage collector while records stream through: what it builds per record
# (dicts, lists, spans, turns) holds no reference cycle, so reference counting frees each chunk once it is written
# (tests/test_purify.py checks that a run leaves nothing for the collector). The collector would only walk every
# object the process holds (a loaded tokenizer's and transformers' are some 200,000) each time a chunk's objects
# are promoted to its oldest generation: 15-20% of the run's CPU time beside the lab tokenizer, none of it freeing
# anything. It is switched back on when the run ends, whatever way it ends.


def run(
    src: Path,
    dst: Path,
    cfg: saar.SaarConfig,
    tokenizer: Any | None = None,
    tokenizer_name: str | None = None,
    seed: int = 0,
    fmt: str = "hermes",
    outputs_in: str = "auto",
    error_pattern: str | None = None,
    strict: bool = False,
    write_tokens: bool = False,
    input_format: str | None = None,
    code_argument: str | None = None,
    prompt_messages: int | None = None,
    chunk_records: int = CHUNK_RECORDS,
    template: str | None = None,
) -> Report:
    """Purify the log `src` into `dst` (module docstring), streaming `chunk_records` records at a time. With a
    `tokenizer` (named `tokenizer_name` in the report; the CLI loads it) turns are cut at token boundaries and
    tokens counted, and `write_tokens` writes the token-level trajectories beside `dst`; without one the
    purification is text-level and tokens are not counted. `template`: a chat template (Jinja) the prompt and
    observation texts are rendered with (`cleaner.purify.template`; the CLI gives SmolLM2's with its tokenizer);
    None: ChatML. `PurifyFileError` when the file cannot be read at all (then nothing is written)."""
    if input_format is not None:
        formats.READERS[input_format]  # an unknown name fails listing the valid ones
    if write_tokens and tokenizer is None:
        raise ValueError("the token file needs a tokenizer")
    opts = ReadOptions(chat.get_format(fmt), outputs_in, None if error_pattern is None else _compile(error_pattern),
                       code_argument, prompt_messages, None if template is None else ChatTemplate(template))
    tally = Tally()
    outputs = _Outputs(dst, write_tokens)
    rejected = _RejectedSink(outputs, tally)
    tally_stats: list[dict[str, Any]] = []
    collecting = gc.isenabled()
    gc.disable()  # why: the note above `run`
    try:
        for chunk in _chunks(iter_items(src, opts, strict, input_format, rejected), chunk_records):
            originals = _trajectories(chunk, tokenizer)
            for item, original in zip(chunk, originals):
                traj = purify(original, cfg, seed)
                added = {"purification": traj.stats, "read_as": item.read_as}
                if any(t.splices for t in traj.turns):
                    tally.purified += 1
                    text = response_text(tokenizer, traj.turns)
                    record = item.reader.write(item.record, item.log, to_messages(item.log, traj.turns, tokenizer),
                                               text)
                    line = json.dumps({**record, **added}, ensure_ascii=False)
                else:
                    line = None if item.line is None else with_keys(item.line, item.record, added)
                    if line is None:
                        line = json.dumps({**item.record, **added}, ensure_ascii=False)
                outputs.write("out", line)
                if write_tokens:
                    outputs.write("tokens", json.dumps(traj.to_dict(), ensure_ascii=False))
                tally.trajectories += 1
                tally.add_read_as(item.read_as)
                if tokenizer is not None:
                    tally.tokens_before += sum(len(s) for s in original.spans())
                    tally.tokens_after += sum(len(s) for s in traj.spans())
                tally_stats.append(traj.stats)
            tally.stats = saar.SaarStats.total([tally.stats, *tally_stats])
            tally_stats.clear()
    except BaseException:
        outputs.discard()
        raise
    finally:
        if collecting:
            gc.enable()
    outputs.commit()
    n_rejected = sum(tally.rejected.values())
    return Report(
        records=tally.trajectories + n_rejected,
        trajectories=tally.trajectories,
        purified=tally.purified,
        rejected=n_rejected,
        rejected_by_reason=dict(tally.rejected),
        calls=tally.calls,
        failures_by_rule=dict(tally.failures),
        tokens_before=None if tokenizer is None else tally.tokens_before,
        tokens_after=None if tokenizer is None else tally.tokens_after,
        stats=tally.stats,
        tokenizer=tokenizer_name,
        rejected_path=_beside(dst, ".rejected.jsonl"),
    )
