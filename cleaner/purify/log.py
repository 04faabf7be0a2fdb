"""One record as chat messages (`Log`): what every reader of `cleaner.purify.formats` turns a record into, and the
checks every message passes.

A message is OpenAI-shaped: `role`, `content` (a string, null in an assistant message with `tool_calls`, or a list
of text parts `[{"type": "text", "text": ...}]`, joined with a line break as vLLM joins them), optionally
`tool_calls`, `prefill`, a reasoning model's `reasoning_content` (vLLM; `reasoning` is read the same way) and, on
an output message, the outcome marks of `cleaner.purify.detect`. A reasoning model's turn is the text
`<think>\\n{reasoning}\\n</think>\\n\\n{content}`, as Qwen3's chat template renders it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PROMPT_ROLES = ("system", "user")  # roles that may precede the first assistant message without `prompt_messages`
REASONING_KEYS = ("reasoning_content", "reasoning")
THINK_OPEN, THINK_CLOSE = "<think>\n", "\n</think>\n\n"


class PurifyInputError(ValueError):
    """A record that cannot be read; the message says why in one line."""


@dataclass(frozen=True)
class Log:
    """One record as chat messages: `messages[:prompt_messages]` is the prompt, the rest was generated.
    `last_cut`: whether the last message was cut by a length limit (True/False when the record says, None to
    infer it). `tools`: the record's tool schemas (OpenAI `tools`), where the code argument of a call is looked up."""

    messages: list[dict[str, Any]]
    prompt_messages: int
    last_cut: bool | None = None
    tools: Any = None


def content_text(m: dict[str, Any]) -> str:
    """The text of a message's content (checked by `check_messages`)."""
    content = m.get("content")
    if isinstance(content, list):
        return "\n".join(part["text"] for part in content)
    return content or ""


def reasoning_of(m: dict[str, Any]) -> str | None:
    return next((m[key] for key in REASONING_KEYS if isinstance(m.get(key), str)), None)


def model_text(m: dict[str, Any]) -> str:
    """What the model wrote in an assistant message, its thinking included."""
    reasoning = reasoning_of(m)
    content = content_text(m)
    return content if reasoning is None else f"{THINK_OPEN}{reasoning}{THINK_CLOSE}{content}"


def with_text(source: dict[str, Any], text: str) -> dict[str, Any]:
    """`source` with its model text replaced by `text` (a spliced turn): the thinking back in its field when the
    message has one, the content a string, or one text part when it was a list of parts."""
    message = dict(source)
    key = next((k for k in REASONING_KEYS if isinstance(source.get(k), str)), None)
    if key is not None and text.startswith(THINK_OPEN) and THINK_CLOSE in text:
        reasoning, text = text[len(THINK_OPEN):].split(THINK_CLOSE, 1)
        message[key] = reasoning
    if isinstance(source.get("content"), list):
        message["content"] = [{"type": "text", "text": text}]
    else:
        message["content"] = text if text or source.get("content") is not None else None
    return message


def check_messages(messages: Any, key: str) -> list[dict[str, Any]]:
    if not isinstance(messages, list):
        raise PurifyInputError(f"{key} must be a list of messages")
    where = "" if key == "messages" else f"{key} "
    for k, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise PurifyInputError(f"{where}message {k} must be an object with a string 'role'")
        content = m.get("content")
        if isinstance(content, list):
            for j, part in enumerate(content):
                if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                    kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                    raise PurifyInputError(f"{where}message {k}: content part {j} is of type {kind!r}; only text "
                                           'parts {"type": "text", "text": ...} can be read')
        elif not isinstance(content, str) and not (content is None and m["role"] == "assistant"
                                                   and m.get("tool_calls")):
            raise PurifyInputError(f"{where}message {k} must have a string 'content' (null only in an assistant "
                                   "message with tool_calls)")
        if not isinstance(m.get("status", ""), str) or not isinstance(m.get("error_type", ""), (str, type(None))):
            raise PurifyInputError(f"{where}message {k}: status and error_type must be strings")
        if "prefill" in m and not (isinstance(m["prefill"], str) and content_text(m).startswith(m["prefill"])
                                   and reasoning_of(m) is None):
            raise PurifyInputError(f"{where}message {k}: prefill must be a string that its content starts with "
                                   "(and no reasoning_content beside it)")
    return messages


def prompt_count(n: Any, messages: list[Any]) -> int | None:
    """The number of prompt messages a record (`"prompt_messages"`) or `--prompt-messages` gives; None: none."""
    if n is None:
        return None
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n < len(messages):
        raise PurifyInputError(f"prompt_messages must be an integer from 1 to {len(messages) - 1} (the messages "
                               f"before the first generated one), got {n!r}")
    return n


def first_generated(messages: list[dict[str, Any]]) -> int:
    first = next((i for i, m in enumerate(messages) if m["role"] == "assistant"), len(messages))
    if first in (0, len(messages)):
        raise PurifyInputError(f"needs prompt messages ({'/'.join(PROMPT_ROLES)}) and then an assistant message")
    for k, m in enumerate(messages[:first]):
        if m["role"] not in PROMPT_ROLES:
            raise PurifyInputError(f"message {k} has role {m['role']!r} before the first assistant message; valid "
                                   f"there: {', '.join(PROMPT_ROLES)} (or give \"prompt_messages\": N, or "
                                   "--prompt-messages N)")
    return first
