"""ChatML text dumps: the decoded prompt and response of each sample, special tokens kept, split into messages at
`<|im_start|>role\\n ... <|im_end|>`; a response that ends without `<|im_end|>` was cut. The purified response is
the text of the purified turns.

- `skyrl_dump`: SkyRL's evaluation dump (`dump_per_dataset_eval_results`), `{"input_prompt", "output_response"}`.
- `verl_dump`: verl's rollout dump (`trainer.rollout_data_dir`, `RayPPOTrainer._dump_generations`): one line
  `{"input", "output", "gts", "score", "step", ...}` per sample. verl decodes it with
  `skip_special_tokens=True`, which removes the turn markers: such a record is refused with how to dump it
  instead. Decoded with `skip_special_tokens=False`, the prompt keeps verl's left padding and the response its
  right padding (runs of the pad token, e.g. `<|endoftext|>`): both are stripped before reading and the response
  is written back without them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from cleaner import chat
from cleaner.purify.formats import Purified, Reader, register
from cleaner.purify.log import Log, PurifyInputError

_MESSAGE = re.compile(r"<\|im_start\|>(\w+)\n(.*?)(<\|im_end\|>\n?|\Z)", re.DOTALL)
_SPECIAL = r"<\|[a-z_]+\|>|<pad>|</s>|<unk>"  # pad tokens seen in dumps
_LEFT_PAD = re.compile(rf"\A(?:{_SPECIAL})+(?=<\|im_start\|>)")
_RIGHT_PAD = re.compile(r"(?:<\|endoftext\|>|<pad>|</s>|<unk>)+\Z|(?<=<\|im_end\|>)(?:<\|im_end\|>)+\Z")
ASSISTANT_HEADER = f"{chat.IM_START}assistant\n"
VERL_HINT = ("verl decodes its rollout dump with skip_special_tokens=True, which removes the turn markers, so "
             "turns cannot be told apart: dump with skip_special_tokens=False (decode batch['prompts'] and "
             "batch['responses'] so in your trainer's _dump_generations; the padding is stripped here) or log "
             "chat messages")


def strip_padding(prompt: str, response: str) -> tuple[str, str]:
    """The prompt without its left padding, the response without its right padding (when <|im_end|> is itself
    the pad token, one is kept)."""
    return _LEFT_PAD.sub("", prompt), _RIGHT_PAD.sub("", _RIGHT_PAD.sub("", response))


def read_chatml(prompt: Any, response: Any, prompt_key: str, response_key: str, hint: str = "") -> Log:
    if not isinstance(prompt, str) or not isinstance(response, str):
        raise PurifyInputError(f"{prompt_key} and {response_key} must be strings")
    if not prompt.endswith(ASSISTANT_HEADER):
        hint = f" ({hint})" if hint and chat.IM_START not in prompt else ""
        raise PurifyInputError(f"{prompt_key} is not ChatML text ending with the assistant header "
                               f"{chat.IM_START}assistant\\n{hint}")
    text = prompt + response
    found = list(_MESSAGE.finditer(text))
    if not found or found[0].start() != 0 or any(a.end() != b.start() for a, b in zip(found, found[1:])) \
            or found[-1].end() != len(text) or any(chat.IM_START in m.group(2) for m in found):
        raise PurifyInputError(f"{prompt_key} + {response_key} is not a sequence of ChatML messages "
                               f"({chat.IM_START}role\\n...{chat.IM_END}\\n)")
    messages = [{"role": m.group(1), "content": m.group(2)} for m in found]
    prompt_messages = sum(1 for m in found if m.end() <= len(prompt) - len(ASSISTANT_HEADER))
    return Log(messages, prompt_messages, last_cut=not found[-1].group(3))


def _writer(response_key: str) -> Callable[[dict[str, Any], Log, Purified, str], dict[str, Any]]:
    def write(record: dict[str, Any], log: Log, purified: Purified, text: str) -> dict[str, Any]:
        return {**record, response_key: text}

    return write


def _read_skyrl(record: dict[str, Any], prompt_messages: int | None) -> Log:
    return read_chatml(record["input_prompt"], record["output_response"], "input_prompt", "output_response")


def _read_verl(record: dict[str, Any], prompt_messages: int | None) -> Log:
    prompt, response = record["input"], record["output"]
    if isinstance(prompt, str) and isinstance(response, str):
        prompt, response = strip_padding(prompt, response)
    return read_chatml(prompt, response, "input", "output", VERL_HINT)


register(Reader("skyrl_dump", ("input_prompt", "output_response"), '{"input_prompt": "...", "output_response": "..."}',
                _read_skyrl, _writer("output_response")))
register(Reader("verl_dump", ("input", "output"), '{"input": "...", "output": "...", "score": ..., "step": ...}',
                _read_verl, _writer("output")))
