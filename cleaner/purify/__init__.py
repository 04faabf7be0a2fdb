"""Offline SAAR: purify logged agent trajectories with the same functions the online rollout uses.

    python -m cleaner.purify IN.jsonl OUT.jsonl [--format hermes|markdown] [--outputs-in auto|tool|user]
                             [--error-pattern REGEX] [--tokenizer lab|smollm2|DIR|FILE.gguf] [--strict]
                             [--gamma G] [--similarity NAME] [--max-retries K] [--rollback-probability P] [--seed S]

Input: JSON Lines, one trajectory per line, in one of the shapes of `SHAPES` (docs/purify.md shows each):
`{"messages": [...]}` (OpenAI chat messages), `{"prompt": [...], "completion": [...]}` (TRL's conversational
prompt-completion), or a ChatML text dump `{"input_prompt": "...", "output_response": "..."}` (SkyRL's evaluation
dump; verl's `{"input": ..., "output": ...}` when the dump kept the special tokens). `"id"` is optional (the line
number stands in). The prompt is the messages before the first assistant message, or the first
`"prompt_messages": N` messages, which may hold a few-shot demonstration with assistant turns; it is never changed.
After it come assistant messages, each followed by the output of its call when it made one: a `tool` message or a
`user` message (`--outputs-in`; `auto` takes whichever follows, and the choice is written per record). The call is
in the content (a hermes `<tool_call>` or a ```python fence, `--format`) or in OpenAI `tool_calls` (one per
message, any function name, `arguments` holding `code`). An assistant message may carry `"prefill": "..."`: the
start of its content that was forced, not sampled; those tokens get loss mask 0.

Which calls failed: an explicit `"status"` on the output message wins (one of `cleaner.trajectory.STATUSES`, or
`success`/`failure`); else a call our parser cannot read is `malformed`; else, with `--error-pattern REGEX`, the
output is a failure exactly when the pattern matches (`re.MULTILINE`, so `^Error:` matches a line start); without
it, when a Python traceback or a line `SomeError: ...` appears anywhere in it, or a time-out message. A failure is
named by its last exception class (`TimeoutError` and time-out messages are `timeout`, `MemoryError` is
`memory_limit`). A call with no output after it was never executed (SAAR abandons a retry like that); when such a
last message ends inside its call, it was cut by a length limit, so no `<|im_end|>` follows it in the tokens. The
classification of every call is written to the output (`read_as.calls`). What is NOT protected: a program that
prints a line like `KeyError: 'x'` on purpose reads as a failure without `--error-pattern`.

Offline, the retries a failure event looks ahead to are simply the next assistant turns of the log. A log
recorded without SAAR shows retry i after the whole chain of earlier failures, whereas online SAAR shows it only
the latest attempt; the splice is the same either way.

Output: the same records, unrelated fields kept, the generated messages purified, `purification` holding the stats
(`cleaner.saar.SaarStats`) and `read_as` how the record was read. A message that no splice touched is written as it
was; a spliced one is rebuilt from the token ids of its whole spans, so multi-byte text comes back byte-exact.
Tool outputs are shown to the model as the format wraps them (`<tool_response>`, ```output) unless they already
carry that wrapper; outputs in user messages are shown as they are. With `--tokenizer`, token-level trajectories
(`cleaner.trajectory`) are also written beside OUT as `<OUT stem>.tokens.jsonl`; without it, tokens are counted
with the lab tokenizer. A record that cannot be read goes to `<OUT stem>.rejected.jsonl` with its line number and
one-line reason, and the others are purified; `--strict` refuses the whole file instead. Files are replaced
atomically.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cleaner import chat, saar
from cleaner.trajectory import STATUSES, Provenance, Span, ToolResult, Trajectory, Turn, write_jsonl, write_lines_atomic

PROMPT_ROLES = ("system", "user")  # roles that may precede the first assistant message without `prompt_messages`
STATUS_ALIASES = {"success": "ok", "failure": "error"}
OUTPUT_ROLES = {"auto": ("tool", "user"), "tool": ("tool",), "user": ("user",)}  # --outputs-in -> roles read


class PurifyInputError(ValueError):
    """A record that cannot be read; the message says why in one line."""


# ---------------------------------------------------------------------------------------------------------------
# Which tool outputs are failures.

_EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_]\w*\.)*([A-Z]\w*(?:Error|Exception|Exit|Interrupt))\b(?::.*)?$")
_TIMEOUT = re.compile(r"(?i)\b(timed out|time limit exceeded|execution timeout)\b")
_TRACEBACK = "Traceback (most recent call last)"


def _failure(output: str) -> ToolResult | None:
    """The failure a traceback, an exception line or a time-out message anywhere in `output` shows; else None."""
    exceptions = [m.group(1) for ln in output.splitlines() if (m := _EXCEPTION_LINE.match(ln.strip()))]
    if exceptions:
        name = exceptions[-1]
        status = {"TimeoutError": "timeout", "MemoryError": "memory_limit"}.get(name, "error")
        return ToolResult(status, output, name)
    if _TIMEOUT.search(output):
        return ToolResult("timeout", output, "Timeout")
    if _TRACEBACK in output:
        return ToolResult("error", output, None)
    return None


def classify_output(output: str, error_pattern: re.Pattern[str] | None = None) -> ToolResult:
    """Status of a tool output that carries no explicit status (see the module docstring)."""
    if error_pattern is None:
        return _failure(output) or ToolResult("ok", output)
    if error_pattern.search(output) is None:
        return ToolResult("ok", output)
    return _failure(output) or ToolResult("error", output, None)


def _classify(message: dict[str, Any], call: chat.ParsedCall, pattern: re.Pattern[str] | None,
              where: str) -> tuple[ToolResult, str]:
    """(result of one call, the rule that decided it)."""
    content = message["content"]
    if "status" in message:
        status = STATUS_ALIASES.get(message["status"], message["status"])
        if status not in STATUSES:
            raise PurifyInputError(f"{where} has unknown status {message['status']!r}; valid: "
                                   f"{', '.join(STATUSES + tuple(STATUS_ALIASES))}")
        error_type = message.get("error_type") or (classify_output(content).error_type if status == "error" else None)
        return ToolResult(status, content, error_type), "status"
    if call.malformed:
        return replace(chat.malformed_result(call), output=content), "parser"
    return classify_output(content, pattern), "error pattern" if pattern is not None else "traceback"


# ---------------------------------------------------------------------------------------------------------------
# Record shapes: each brings a record to chat messages and puts purified messages back.


@dataclass(frozen=True)
class Log:
    """One record as chat messages: `messages[:prompt_messages]` is the prompt, the rest was generated.
    `last_cut`: whether the last message was cut by a length limit (True/False when the record says, None to
    infer it)."""

    messages: list[dict[str, Any]]
    prompt_messages: int
    last_cut: bool | None = None


@dataclass(frozen=True)
class Shape:
    keys: tuple[str, ...]  # the record keys that identify the shape and hold the trajectory
    read: Callable[[dict[str, Any]], Log]
    write: Callable[[dict[str, Any], Log, list[dict[str, Any]], str], dict[str, Any]]  # record, log, purified, text


def _prompt_count(record: dict[str, Any], messages: list[Any]) -> int | None:
    n = record.get("prompt_messages")
    if n is None:
        return None
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n < len(messages):
        raise PurifyInputError(f"prompt_messages must be an integer from 1 to {len(messages) - 1} (the messages "
                               f"before the first generated one), got {n!r}")
    return n


def _read_messages(record: dict[str, Any]) -> Log:
    messages = _message_list(record["messages"], "messages")
    return Log(messages, _prompt_count(record, messages) or _first_generated(messages))


def _read_prompt_completion(record: dict[str, Any]) -> Log:
    prompt, completion = _message_list(record["prompt"], "prompt"), _message_list(record["completion"], "completion")
    if not prompt or not completion:
        raise PurifyInputError("prompt and completion must both hold messages")
    return Log(prompt + completion, len(prompt))


_CHATML_MESSAGE = re.compile(r"<\|im_start\|>(\w+)\n(.*?)(<\|im_end\|>\n?|\Z)", re.DOTALL)


def _read_chatml(prompt_key: str, response_key: str) -> Callable[[dict[str, Any]], Log]:
    def read(record: dict[str, Any]) -> Log:
        prompt, response = record[prompt_key], record[response_key]
        if not isinstance(prompt, str) or not isinstance(response, str):
            raise PurifyInputError(f"{prompt_key} and {response_key} must be strings")
        if not prompt.endswith(f"{chat.IM_START}assistant\n"):
            hint = (" (verl's rollout dump decodes with skip_special_tokens=True, which removes the turn markers: "
                    "it cannot be read)" if chat.IM_START not in prompt else "")
            raise PurifyInputError(f"{prompt_key} is not ChatML text ending with the assistant header "
                                   f"{chat.IM_START}assistant\\n{hint}")
        text = prompt + response
        found = list(_CHATML_MESSAGE.finditer(text))
        if not found or found[0].start() != 0 or any(a.end() != b.start() for a, b in zip(found, found[1:])) \
                or found[-1].end() != len(text) or any(chat.IM_START in m.group(2) for m in found):
            raise PurifyInputError(f"{prompt_key} + {response_key} is not a sequence of ChatML messages "
                                   f"({chat.IM_START}role\\n...{chat.IM_END}\\n)")
        messages = [{"role": m.group(1), "content": m.group(2)} for m in found]
        prompt_messages = sum(1 for m in found if m.end() <= len(prompt) - len(f"{chat.IM_START}assistant\n"))
        return Log(messages, prompt_messages, last_cut=not found[-1].group(3))

    return read


def _write_messages(record: dict[str, Any], log: Log, purified: list[dict[str, Any]], text: str) -> dict[str, Any]:
    return {**record, "messages": log.messages[: log.prompt_messages] + purified}


def _write_completion(record: dict[str, Any], log: Log, purified: list[dict[str, Any]], text: str) -> dict[str, Any]:
    return {**record, "completion": purified}


def _write_chatml(response_key: str):
    def write(record: dict[str, Any], log: Log, purified: list[dict[str, Any]], text: str) -> dict[str, Any]:
        return {**record, response_key: text}

    return write


SHAPES = {  # checked in this order; the first whose keys are all in the record reads it
    "messages": Shape(("messages",), _read_messages, _write_messages),
    "prompt_completion": Shape(("prompt", "completion"), _read_prompt_completion, _write_completion),
    "skyrl_dump": Shape(("input_prompt", "output_response"), _read_chatml("input_prompt", "output_response"),
                        _write_chatml("output_response")),
    "verl_dump": Shape(("input", "output"), _read_chatml("input", "output"), _write_chatml("output")),
}


def _message_list(messages: Any, key: str) -> list[dict[str, Any]]:
    if not isinstance(messages, list):
        raise PurifyInputError(f"{key} must be a list of messages")
    where = "" if key == "messages" else f"{key} "
    for k, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise PurifyInputError(f"{where}message {k} must be an object with a string 'role'")
        content = m.get("content")
        if not isinstance(content, str) and not (content is None and m["role"] == "assistant" and m.get("tool_calls")):
            raise PurifyInputError(f"{where}message {k} must have a string 'content' (null only in an assistant "
                                   "message with tool_calls)")
        if not isinstance(m.get("status", ""), str) or not isinstance(m.get("error_type", ""), (str, type(None))):
            raise PurifyInputError(f"{where}message {k}: status and error_type must be strings")
        if "prefill" in m and not (isinstance(m["prefill"], str) and (content or "").startswith(m["prefill"])):
            raise PurifyInputError(f"{where}message {k}: prefill must be a string that its content starts with")
    return messages


def _first_generated(messages: list[dict[str, Any]]) -> int:
    first = next((i for i, m in enumerate(messages) if m["role"] == "assistant"), len(messages))
    if first in (0, len(messages)):
        raise PurifyInputError(f"needs prompt messages ({'/'.join(PROMPT_ROLES)}) and then an assistant message")
    for k, m in enumerate(messages[:first]):
        if m["role"] not in PROMPT_ROLES:
            raise PurifyInputError(f"message {k} has role {m['role']!r} before the first assistant message; valid "
                                   f"there: {', '.join(PROMPT_ROLES)} (or give \"prompt_messages\": N)")
    return first


# ---------------------------------------------------------------------------------------------------------------
# Messages -> token-level trajectory.


@dataclass(frozen=True)
class ReadOptions:
    fmt: chat.ChatFormat  # where calls are found in assistant content
    outputs_in: str = "auto"  # a key of OUTPUT_ROLES
    error_pattern: re.Pattern[str] | None = None  # an output matching it failed; None: look for a traceback


def _assistant_text(m: dict[str, Any], where: str) -> tuple[str, chat.ParsedCall | None]:
    """The text the model wrote, and its call when it is in OpenAI `tool_calls` (None: look for it in the text).
    A `tool_calls` call is rendered after the content as Qwen's chat template renders it:
    `\\n<tool_call>\\n{"name": ..., "arguments": ...}\\n</tool_call>`."""
    content = m["content"] or ""
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
    separator = "\n" if content else ""
    text = f'{content}{separator}<tool_call>\n{{"name": {name}, "arguments": {args}}}\n</tool_call>'
    try:
        parsed_args = json.loads(args)
    except json.JSONDecodeError:
        parsed_args = None
    if isinstance(parsed_args, dict) and isinstance(parsed_args.get("code"), str):
        return text, chat.ParsedCall(len(content), parsed_args["code"])
    return text, chat.ParsedCall(len(content), args, "Error: malformed tool call: `arguments` must be an object with "
                                 'a string field "code"')


def _hint(text: str, opts: ReadOptions) -> str:
    if opts.fmt.name != "markdown" and chat.parse_markdown(text) is not None:
        return "; its ```python fence is a call with --format markdown"
    if opts.fmt.name == "markdown" and "```" in text:
        return "; only ```python or ```py fences are calls"
    return "; if it is a few-shot demonstration, give \"prompt_messages\": N"


@dataclass(frozen=True)
class LoggedTurn:
    """One assistant message read as text, before it is tokenized."""

    message: int  # its index in `Log.messages`
    prefill: str  # the forced start of its content; encoded with the context before it, so mask 0
    sampled: str  # the rest, as the model sampled it (a `tool_calls` call rendered in)
    fmt: chat.ChatFormat  # finds its call in prefill + sampled
    stop: bool  # an <|im_end|> follows it (False: cut by a length limit)
    result: ToolResult | None  # None: no call, or a call never executed
    observation: str | None  # the text after <|im_end|>: the user turn showing the output, then the next prefill


def read_log(log: Log, opts: ReadOptions) -> tuple[str, list[LoggedTurn], dict[str, Any]]:
    """The prompt text, the turns and how the record was read (`read_as`), or `PurifyInputError` saying why it
    cannot be read. Text only: `build_trajectory` tokenizes."""
    messages, n = log.messages, log.prompt_messages

    def prefill(k: int) -> str:
        return messages[k].get("prefill", "") if k < len(messages) else ""

    prompt_text = chat.render_prompt([{"role": m["role"], "content": _assistant_text(m, f"message {k}")[0]}
                                      for k, m in enumerate(messages[:n])]) + prefill(n)
    turns, calls, roles, k = [], [], set(), n
    while k < len(messages):
        m, where = messages[k], f"message {k}"
        if m["role"] != "assistant":
            raise PurifyInputError(f"{where} has role {m['role']!r} where an assistant message must come")
        text, tool_call = _assistant_text(m, where)
        fmt = opts.fmt if tool_call is None else replace(opts.fmt, parse=lambda _, c=tool_call: c)
        call, nxt = fmt.parse(text), messages[k + 1] if k + 1 < len(messages) else None
        cut = nxt is None and (log.last_cut if log.last_cut is not None else call is not None and call.unterminated)
        turn = LoggedTurn(k, prefill(k), text[len(prefill(k)):], fmt, not cut, None, None)
        if call is None:
            if nxt is not None:
                raise PurifyInputError(f"{where} makes no tool call ({opts.fmt.name} format), so it must be the last "
                                       f"message, but message {k + 1} (role {nxt['role']!r}) follows"
                                       + _hint(text, opts))
        elif nxt is None:
            calls.append({"message": k, "status": None, "error_type": None, "by": "cut" if cut else "no output"})
        elif nxt["role"] in OUTPUT_ROLES[opts.outputs_in]:
            roles.add(nxt["role"])
            result, by = _classify(nxt, call, opts.error_pattern, f"message {k + 1}")
            calls.append({"message": k, "status": result.status, "error_type": result.error_type, "by": by})
            shown = nxt["content"]
            if nxt["role"] == "tool" and opts.fmt.response_open.strip() not in shown:
                shown = opts.fmt.tool_response(shown)
            turn = replace(turn, result=result, observation=chat.user_turn_text(shown) + prefill(k + 2))
        else:
            raise PurifyInputError(f"{where} makes a tool call, so message {k + 1} must hold its output "
                                   f"({' or '.join(OUTPUT_ROLES[opts.outputs_in])} role), not role {nxt['role']!r}")
        turns.append(turn)
        k += 2 if turn.observation is not None else 1
    if len(roles) > 1:
        raise PurifyInputError("outputs come in both tool and user messages; use one role per record")
    return prompt_text, turns, {"prompt_messages": n, "outputs_in": next(iter(roles), None), "calls": calls}


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
        meta_turn = {"message": t.message}
        if split.parsed is None:
            out.append(Turn(split.reasoning, split.stop, meta=meta_turn))
            continue
        observation = None if t.observation is None else Span(Provenance.OBSERVATION, next(ids), t.observation)
        out.append(Turn(split.reasoning, split.stop, split.call, split.parsed.code, t.result, observation,
                        meta=meta_turn))
    return Trajectory(trajectory_id, prompt, tuple(out), meta=meta)


def trajectory_from_messages(record: dict[str, Any], tokenizer: Any, fmt: chat.ChatFormat) -> Trajectory:
    """The token-level trajectory of one `{"id": ..., "messages": [...]}` record, read as the CLI reads it (the
    lab's SFT data is built this way); `PurifyInputError` when it cannot be read."""
    log = _read_messages(record)
    prompt_text, turns, _ = read_log(log, ReadOptions(fmt))
    ids = iter(encode_texts(tokenizer, texts_to_encode(prompt_text, turns)))
    meta = {key: v for key, v in record.items() if key not in ("id", "messages")}
    return build_trajectory(str(record["id"]), prompt_text, turns, ids, tokenizer, meta)


def purify_turns(turns: tuple[Turn, ...], cfg: saar.SaarConfig, applies: bool) -> tuple[tuple[Turn, ...], saar.SaarStats]:
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


def to_messages(log: Log, turns: tuple[Turn, ...], tokenizer: Any) -> list[dict[str, Any]]:
    """The generated messages of a purified trajectory. A turn no splice touched is its source messages as they
    were. A spliced turn is the message its call came from, with the content rebuilt from the ids of its whole
    reasoning and call spans (only the reasoning when the call is in `tool_calls`), after the prefill that stands
    at its place. Every observation is followed by the message that followed it in the log."""
    source = log.messages
    out: list[dict[str, Any]] = []
    prefill = source[log.prompt_messages].get("prefill", "")
    for turn in turns:
        k = turn.meta["message"]
        if not turn.splices:
            out.append(source[k])
        else:
            assert turn.call is not None
            in_tool_calls = bool(source[k].get("tool_calls"))
            ids = turn.reasoning.ids + (() if in_tool_calls else turn.call.ids)
            content = prefill + chat.decode(tokenizer, ids)
            message = {**source[k], "content": content if content or source[k]["content"] is not None else None}
            if prefill or "prefill" in source[k]:
                message["prefill"] = prefill
            out.append(message)
        if turn.observation is not None:
            out.append(source[k + 1])
        prefill = source[k + 2].get("prefill", "") if k + 2 < len(source) else ""
    return out


# ---------------------------------------------------------------------------------------------------------------
# Files.


@dataclass(frozen=True)
class Rejected:
    line: int
    reason: str
    record: Any  # the parsed record, or the line's text when it is not JSON

    def to_dict(self) -> dict[str, Any]:
        key = "record" if isinstance(self.record, dict) else "text"
        return {"line": self.line, "reason": self.reason, key: self.record}


def _parse_line(raw: bytes) -> dict[str, Any]:
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise PurifyInputError(f"not UTF-8 text ({e.reason} at byte {e.start})") from None
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise PurifyInputError(f"not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(record, dict):
        raise PurifyInputError("expected a JSON object")
    try:
        json.dumps(record, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise PurifyInputError("holds a lone surrogate escape (\\ud800-\\udfff), which is not valid Unicode") from None
    return record


def _shape(record: dict[str, Any]) -> str:
    for name, shape in SHAPES.items():
        if all(key in record for key in shape.keys):
            return name
    raise PurifyInputError('no trajectory: expected {"messages": [...]}, {"prompt": [...], "completion": [...]}, '
                           'or {"input_prompt": "...", "output_response": "..."}')


@dataclass
class Item:
    """One readable record on its way through."""

    line: int
    id: str  # the record's id, or "line N"
    record: dict[str, Any]
    shape: str
    log: Log
    read_as: dict[str, Any]
    prompt_text: str
    turns: list[LoggedTurn]
    original: Trajectory | None = None  # once the whole file is tokenized


def read_items(path: Path, tokenizer: Any, opts: ReadOptions, strict: bool) -> tuple[list[Item], list[Rejected]]:
    """Every record of `path` read into a trajectory, and those that could not be, with why. With `strict` the
    first record that cannot be read stops everything (`PurifyInputError` naming the file and line). All records
    are read as text first, then tokenized in one batch."""
    items, rejected, seen = [], [], set()
    raw_lines = path.read_bytes().removeprefix(b"\xef\xbb\xbf").split(b"\n")
    for lineno, raw in enumerate(raw_lines, 1):
        if not raw.strip():
            continue
        record: Any = raw.decode("utf-8", errors="backslashreplace")
        try:
            record = _parse_line(raw)
            if "id" in record and (not isinstance(record["id"], (str, int)) or isinstance(record["id"], bool)):
                raise PurifyInputError(f"id must be a string or an integer, got {record['id']!r}")
            rid = str(record["id"]) if "id" in record else f"line {lineno}"
            if rid in seen:
                raise PurifyInputError(f"duplicate id {rid!r}")
            shape = _shape(record)
            log = SHAPES[shape].read(record)
            prompt_text, turns, read_as = read_log(log, opts)
        except PurifyInputError as e:
            if strict:
                raise PurifyInputError(f"{path}:{lineno}: {e}") from None
            rejected.append(Rejected(lineno, str(e), record))
            continue
        seen.add(rid)
        items.append(Item(lineno, rid, record, shape, log, {"shape": shape, **read_as}, prompt_text, turns))
    ids = iter(encode_texts(tokenizer, [t for item in items for t in texts_to_encode(item.prompt_text, item.turns)]))
    for item in items:
        meta = {key: v for key, v in item.record.items() if key not in ("id",) + SHAPES[item.shape].keys}
        item.original = build_trajectory(item.id, item.prompt_text, item.turns, ids, tokenizer, meta)
    return items, rejected


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
    trajectories: int
    rejected: int
    tokens_before: int
    tokens_after: int
    stats: dict[str, Any]
    tokenizer: str
    rejected_path: Path

    def table(self) -> str:
        """The summary the CLI prints: counts of the run's episodes (`stats`, keys of `_COUNTS`) and tokens."""
        removed = self.tokens_before - self.tokens_after
        share = removed / self.tokens_before if self.tokens_before else 0.0
        rows = [
            ("trajectories", self.trajectories),
            ("records rejected", self.rejected),
            *((label, self.stats.get(key, 0)) for label, key in _COUNTS),
            (f"tokens before -> after ({self.tokenizer} tokenizer)", f"{self.tokens_before} -> {self.tokens_after}"),
            ("tokens removed", f"{removed} ({share:.1%})"),
        ]
        width = max(len(name) for name, _ in rows)
        table = "\n".join(f"{name:<{width}}  {value:>14}" for name, value in rows)
        return table + (f"\nrejected records, each with its line number and reason: {self.rejected_path}"
                        if self.rejected else "")


def _beside(dst: Path, suffix: str) -> Path:
    return dst.with_name(dst.name.removesuffix(".jsonl") + suffix)


def run(
    src: Path,
    dst: Path,
    cfg: saar.SaarConfig,
    tokenizer: Any,
    tokenizer_name: str = "lab",
    seed: int = 0,
    fmt: str = "hermes",
    outputs_in: str = "auto",
    error_pattern: str | None = None,
    strict: bool = False,
    write_tokens: bool = False,
) -> Report:
    """Purify the log `src` into `dst` (module docstring), counting tokens with `tokenizer` (named `tokenizer_name`
    in the report; the CLI loads it, `cleaner.models.load_tokenizer`); `write_tokens` also writes the token-level
    trajectories beside `dst`."""
    opts = ReadOptions(chat.get_format(fmt), outputs_in, None if error_pattern is None else _compile(error_pattern))
    items, rejected = read_items(src, tokenizer, opts, strict)
    originals = [item.original for item in items]
    purified = [purify(t, cfg, seed) for t in originals]
    out_records = []
    for item, traj in zip(items, purified):
        if any(t.splices for t in traj.turns):
            messages = to_messages(item.log, traj.turns, tokenizer)
            text = chat.decode(tokenizer, traj.ids[len(traj.prompt):])
            record = SHAPES[item.shape].write(item.record, item.log, messages, text)
        else:
            record = item.record
        out_records.append({**record, "purification": traj.stats, "read_as": item.read_as})
    write_lines_atomic(dst, (json.dumps(r, ensure_ascii=False) for r in out_records))
    rejected_path = _beside(dst, ".rejected.jsonl")
    if rejected:
        write_lines_atomic(rejected_path, (json.dumps(r.to_dict(), ensure_ascii=False) for r in rejected))
    else:
        rejected_path.unlink(missing_ok=True)  # a file from an earlier run would describe another input
    if write_tokens:
        write_jsonl(_beside(dst, ".tokens.jsonl"), purified)
    return Report(
        trajectories=len(purified),
        rejected=len(rejected),
        tokens_before=sum(len(t.ids) for t in originals),
        tokens_after=sum(len(t.ids) for t in purified),
        stats=saar.SaarStats.total([t.stats for t in purified]),
        tokenizer=tokenizer_name,
        rejected_path=rejected_path,
    )


def _compile(pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern, re.MULTILINE)
    except re.error as e:
        raise ValueError(f"--error-pattern {pattern!r} is not a valid regular expression: {e}") from None
