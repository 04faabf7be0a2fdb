"""A model's own chat template (Jinja), rendered as token deltas for the purifier's texts.

The purifier's texts are the prompt (its messages and the assistant header) and, after each `<|im_end|>` a turn
ends with, the observation: the rest of the assistant message's rendering, the message holding its call's output,
and the next assistant header. Without a template both are ChatML as the lab's and Qwen's templates render them
(`cleaner.chat.render_prompt`, a tool output in a user turn inside the format's wrapper). With one (`--tokenizer
smollm2`: SmolLM2's, carried by its GGUF file), they are cut from the template's own renderings of the log's
messages, so whatever the template does (SmolLM2's: a default system prompt when the first message is not a system
message; a `tool` message in a turn of its own role, its content unwrapped) is what the tokens hold.

The cut: the observation after message k is `render(messages[:k + 2], add_generation_prompt=True)` less its prefix
`render(messages[:k + 1])`, preceded by what that prefix holds after its last `<|im_end|>`. What is not
protected: a template whose rendering of a prefix is not a prefix of the whole (Qwen3's drops the thinking of
earlier turns) is refused with `ValueError`; each observation renders the messages before it again (quadratic in
the messages of a record, on the tokenized path only).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from cleaner import chat


@lru_cache(maxsize=8)
def _compiled(source: str) -> Any:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise ValueError(f"chat template: {message}")

    # the environment transformers renders chat templates in (apply_chat_template)
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = raise_exception
    return env.from_string(source)


class ChatTemplate:
    """Renders messages (`{"role": ..., "content": str}`) with a Jinja chat template."""

    def __init__(self, source: str):
        self.source = source
        self._template = _compiled(source)

    def render(self, messages: list[dict[str, Any]], add_generation_prompt: bool = False) -> str:
        return self._template.render(messages=messages, add_generation_prompt=add_generation_prompt)

    def prompt(self, messages: list[dict[str, Any]]) -> str:
        """The prompt: its messages and the assistant header (`add_generation_prompt`)."""
        return self.render(messages, add_generation_prompt=True)

    def observation(self, messages: list[dict[str, Any]]) -> str:
        """The text after the `<|im_end|>` of the assistant message `messages[-2]` up to the next assistant header:
        the rest of that message's rendering, then `messages[-1]` (the output), then the header."""
        before = self.render(messages[:-1])
        whole = self.render(messages, add_generation_prompt=True)
        if not whole.startswith(before):
            raise ValueError("this chat template renders a conversation's start differently once it goes on; the "
                             "purifier cannot cut its turns into token deltas")
        end = before.rfind(chat.IM_END)
        if end < 0:
            raise ValueError(f"this chat template does not end an assistant message with {chat.IM_END}")
        return before[end + len(chat.IM_END):] + whole[len(before):]
