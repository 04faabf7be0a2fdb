"""`{"messages": [...]}`: OpenAI chat messages (outputs in `tool` or `user` messages, calls in the content or in
`tool_calls`), with an optional `"prompt_messages": N` and `"tools"` (OpenAI tool schemas)."""

from __future__ import annotations

from typing import Any

from cleaner.purify.formats import Purified, Reader, register
from cleaner.purify.log import Log, check_messages, first_generated, prompt_count


def read(record: dict[str, Any], prompt_messages: int | None) -> Log:
    messages = check_messages(record["messages"], "messages")
    n = prompt_count(prompt_messages if prompt_messages is not None else record.get("prompt_messages"), messages)
    return Log(messages, n or first_generated(messages), tools=record.get("tools"))


def write(record: dict[str, Any], log: Log, purified: Purified, text: str) -> dict[str, Any]:
    return {**record, "messages": log.messages[: log.prompt_messages] + [m for _, m in purified]}


register(Reader("messages", ("messages",), '{"messages": [...]}', read, write))
