"""Locating the tool call in a sampled turn: one pass over the ids (ours) against decoding every prefix (the
authors' code), on turns of 1k to 16k tokens whose call comes last, as after a long reasoning.

Run with `make bench`; the ratio of the medians is recorded in docs/benchmarks.md."""

from __future__ import annotations

import pytest

from cleaner import chat
from cleaner.lab.tokenizer import seed_corpus

SIZES = (1000, 4000, 8000, 16000)


def turn_ids(tok, num_tokens: int) -> list[int]:
    text = " ".join(seed_corpus(num_lines=6000, seed=7))
    for special in ("<tool_call>", "</tool_call>", "<|im_start|>", "<|im_end|>"):
        text = text.replace(special, "")
    call = tok.encode(chat.hermes_call_text("print(sum(range(10)))"), add_special_tokens=False)
    reasoning = tok.encode(text, add_special_tokens=False)[: num_tokens - len(call)]
    assert len(reasoning) == num_tokens - len(call), "corpus too short for this size"
    return reasoning + call


@pytest.mark.parametrize("num_tokens", SIZES)
def test_one_pass(benchmark, tok, num_tokens):
    ids = turn_ids(tok, num_tokens)
    chat.token_bytes(tok)  # the per-tokenizer table is built once per process, not per call
    start, call = benchmark(chat.locate_call, tok, ids, chat.get_format("hermes"))
    assert (start, call.code) == (ids.index(tok.convert_tokens_to_ids("<tool_call>")), "print(sum(range(10)))")


@pytest.mark.parametrize("num_tokens", SIZES)
def test_prefix_decoding(benchmark, tok, naive_locate, num_tokens):
    ids = turn_ids(tok, num_tokens)
    rounds = 3 if num_tokens <= 4000 else 1
    start = benchmark.pedantic(naive_locate, args=(tok, ids), rounds=rounds, iterations=1)
    assert start == ids.index(tok.convert_tokens_to_ids("<tool_call>"))
