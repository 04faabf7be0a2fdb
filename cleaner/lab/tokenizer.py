"""A small chat tokenizer built locally: byte-level BPE with one token per digit, Qwen-style special tokens and a
ChatML chat template that renders tool results as Qwen3 does (a user turn holding `<tool_response>`).

Built in about a second from a corpus generated here, so nothing is downloaded; the same corpus and size give the
same vocabulary. The lab model uses it; `python -m cleaner.purify --tokenizer lab` loads it by name.
"""

from __future__ import annotations

import builtins
import keyword
import random
from collections.abc import Iterable
from functools import lru_cache

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from cleaner import chat
from cleaner.lab import sft_data, tasks

SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<tool_call>",
    "</tool_call>",
    "<tool_response>",
    "</tool_response>",
)

CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message.role == 'tool' %}"
    "{{- '<|im_start|>user\\n<tool_response>\\n' + message.content + '\\n</tool_response><|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def build_tokenizer(texts: Iterable[str], vocab_size: int = 2000) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on `texts`. Digits are split one per token, so numbers are copied digit by digit."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHAT_TEMPLATE,
        padding_side="left",
    )


def seed_corpus(num_lines: int = 6000, seed: int = 0) -> list[str]:
    """Text in the shapes the lab sees: reasoning sentences, Python code, tracebacks, tool calls, and the lab's own
    task questions, programs and answers."""
    rng = random.Random(seed)
    names = ["n", "x", "y", "total", "result", "count", "a", "b", "m", "digits", "value", "ans", "i", "k"]
    funcs = ["sum", "range", "print", "pow", "len", "str", "int", "abs", "max", "min", "math.lcm", "math.gcd"]
    errors = ["NameError: name '{v}' is not defined", "SyntaxError: invalid syntax",
              "ZeroDivisionError: division by zero", "TypeError: unsupported operand type(s) for +: 'int' and 'str'",
              "IndexError: list index out of range", "ValueError: invalid literal for int() with base 10: '{v}'",
              "TimeoutError: execution exceeded the time limit", "SyntaxError: '(' was never closed"]
    words = ("Let me compute the answer with Python . First , we need the sum of the squares . The result is "
             "so the answer is We count the integers divisible by or Then I will check the value and print it "
             "The code failed because of a typo ; let me fix it . I should use a formula instead of a loop").split()
    words += keyword.kwlist + [n for n in dir(builtins) if not n.startswith("_")]
    lines = []
    for _ in range(num_lines):
        v, f, num = rng.choice(names), rng.choice(funcs), rng.randint(0, 10**rng.randint(1, 6))
        kind = rng.randrange(7)
        if kind == 6:
            role = rng.choice(["system", "user", "assistant"])
            lines.append(f"<|im_start|>{role}\n{' '.join(rng.choices(words, k=8))}<|im_end|>\n<|im_start|>assistant\n")
            continue
        if kind == 0:
            lines.append(" ".join(rng.choices(words, k=rng.randint(6, 20))) + f" {num}.")
        elif kind == 1:
            lines.append(f"{v} = {f}({rng.choice(names)} * {num} for {rng.choice(names)} in range(1, {num}))\n"
                         f"print({v})")
        elif kind == 2:
            lines.append(f'Traceback (most recent call last):\n  File "<cell>", line {num % 9 + 1}, in <module>\n'
                         + rng.choice(errors).format(v=v))
        elif kind == 3:
            lines.append('<tool_call>\n{"name": "code_interpreter", "arguments": {"code": "import math\\n'
                         f'{v} = {f}({num})\\nprint({v})"}}}}\n</tool_call>')
        elif kind == 4:
            lines.append(f"<tool_response>\n{num}\n</tool_response> The answer is \\boxed{{{num}}}.")
        else:
            lines.append(f"def {v}_{f.split('.')[-1]}({v}):\n    if {v} % {num % 97 + 2} == 0:\n        return {v}\n"
                         f"    return {v} // 2  # {rng.choice(words)}")
    for problem in tasks.problems("train", num_lines // 6, seed=seed + 1000):
        lines += [tasks.SYSTEM_PROMPT, problem.question, rng.choice(sft_data.REASONING),
                  chat.hermes_call_text(problem.code), rng.choice(list(sft_data.FIX_REASONING.values())),
                  f"The answer is \\boxed{{{problem.answer}}}."]
    return lines


@lru_cache(maxsize=1)
def lab_tokenizer() -> PreTrainedTokenizerFast:
    """The lab's tokenizer: 2000 tokens trained on `seed_corpus()`. Built once per process (about a second)."""
    return build_tokenizer(seed_corpus())

