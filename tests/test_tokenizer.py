"""The lab's chat tokenizer."""

from __future__ import annotations

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
