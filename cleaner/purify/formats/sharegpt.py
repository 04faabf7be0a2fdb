"""`{"conversations": [{"from": ..., "value": ...}, ...], "system": ..., "tools": ...}`: ShareGPT as LLaMA-Factory
reads tool-use data. `human` is a user message, `gpt` an assistant message, `function_call` an assistant message
whose whole value is the call (`{"name": ..., "arguments": ...}`, read as OpenAI `tool_calls`; a value that is not
such JSON is a malformed call), `observation` the call's output (a `tool` message); the optional `system` is the
first prompt message and `tools` (a JSON string or a list) the tool schemas. A spliced `gpt` entry gets the new
value; a `function_call` entry is written as it was (its turn has no reasoning, so a splice takes the fix whole)."""

from __future__ import annotations

import json
from typing import Any

from cleaner.purify.formats import Purified, Reader, register
from cleaner.purify.log import Log, PurifyInputError, check_messages, content_text, first_generated, prompt_count

ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "function_call": "assistant",
         "observation": "tool", "tool": "tool", "function": "tool", "system": "system"}


def _message(entry: Any, k: int) -> dict[str, Any]:
    if not (isinstance(entry, dict) and isinstance(entry.get("from"), str) and isinstance(entry.get("value"), str)):
        raise PurifyInputError(f'conversations entry {k} must be {{"from": str, "value": str}}')
    role = ROLES.get(entry["from"])
    if role is None:
        raise PurifyInputError(f"conversations entry {k} is from {entry['from']!r}; valid: {', '.join(ROLES)}")
    if entry["from"] != "function_call":
        return {"role": role, "content": entry["value"]}
    try:
        call = json.loads(entry["value"])
    except json.JSONDecodeError:
        call = None
    if not (isinstance(call, dict) and isinstance(call.get("name"), str)
            and isinstance(call.get("arguments"), (str, dict))):
        return {"role": "assistant", "content": f"<tool_call>\n{entry['value']}\n</tool_call>"}  # malformed
    return {"role": "assistant", "content": None,
            "tool_calls": [{"type": "function", "function": {"name": call["name"], "arguments": call["arguments"]}}]}


def _system(record: dict[str, Any]) -> list[dict[str, Any]]:
    system = record.get("system")
    return [{"role": "system", "content": system}] if isinstance(system, str) and system else []


def read(record: dict[str, Any], prompt_messages: int | None) -> Log:
    entries = record["conversations"]
    if not isinstance(entries, list):
        raise PurifyInputError("conversations must be a list of {\"from\": ..., \"value\": ...} entries")
    messages = check_messages(_system(record) + [_message(e, k) for k, e in enumerate(entries)], "messages")
    n = prompt_count(prompt_messages, messages)
    return Log(messages, n or first_generated(messages), tools=record.get("tools"))


def write(record: dict[str, Any], log: Log, purified: Purified, text: str) -> dict[str, Any]:
    offset, entries = len(_system(record)), record["conversations"]
    prompt = entries[: log.prompt_messages - offset]
    out = []
    for k, m in purified:
        entry = entries[k - offset]
        unchanged = m is log.messages[k] or entry["from"] == "function_call"
        out.append(entry if unchanged else {**entry, "value": content_text(m)})
    return {**record, "conversations": prompt + out}


register(Reader("sharegpt", ("conversations",), '{"conversations": [{"from": ..., "value": ...}]}', read, write))
