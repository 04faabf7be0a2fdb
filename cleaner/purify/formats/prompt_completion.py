"""`{"prompt": [...], "completion": [...]}`: TRL's conversational prompt-completion; `completion` is purified."""

from __future__ import annotations

from typing import Any

from cleaner.purify.formats import Purified, Reader, register
from cleaner.purify.log import Log, PurifyInputError, check_messages


def read(record: dict[str, Any], prompt_messages: int | None) -> Log:
    prompt, completion = check_messages(record["prompt"], "prompt"), check_messages(record["completion"], "completion")
    if not prompt or not completion:
        raise PurifyInputError("prompt and completion must both hold messages")
    return Log(prompt + completion, len(prompt), tools=record.get("tools"))


def write(record: dict[str, Any], log: Log, purified: Purified, text: str) -> dict[str, Any]:
    return {**record, "completion": [m for _, m in purified]}


register(Reader("prompt_completion", ("prompt", "completion"), '{"prompt": [...], "completion": [...]}', read, write))
