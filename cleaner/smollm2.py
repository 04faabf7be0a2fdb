"""SmolLM2's tokenizer, built from a GGUF file's vocabulary and merges, with the real pre-tokenizer.

    tok = gguf_tokenizer(smollm2_gguf())     # a transformers fast tokenizer, in about 4 s on two cores
    tok.chat_template                        # the template the file carries (`tokenizer.chat_template`)

transformers builds a byte-level BPE tokenizer from a GGUF file with a plain `ByteLevel` pre-tokenizer, whatever
the file's `tokenizer.ggml.pre` says, and dequantises the whole model on the way (about a minute on two cores).
For `tokenizer.ggml.pre == "smollm"` (SmolLM and SmolLM2) the real `tokenizer.json` splits every digit first,
then applies GPT-2's byte-level regex to each stretch between them (`PRE_TOKENIZER`). The two differ wherever a
whitespace run meets a digit: "\\n\\n1." is `ĊĊ 1 .` here and in the real tokenizer, `Ċ Ċ 1 .` under the GGUF
conversion (GPT-2's regex alone leaves the last whitespace character to the digit's piece); and runs of digits
are one token per digit. Only the header of the file is read (`gguf.GGUFReader` maps the file; no tensor is
touched).

What is not protected: the pre-tokenizer is written from what llama.cpp's `smollm` type and the published
SmolLM2 `tokenizer.json` are known to hold (Digits, then ByteLevel without a prefix space; ByteLevel decoder; the
control tokens of the file as special tokens); the real file is not installable here, so the ids are checked
against hand-derived cases and ids a public tokenizer port checks (tests/test_tokenizer.py), not against it.
Other pre-tokenizer types are refused (`gguf_tokenizer`); `cleaner.models` hands them to transformers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

TOKEN_TYPE_CONTROL = 3  # llama.cpp's token types: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte
TOKEN_TYPE_USER_DEFINED = 4
PRE_TYPES = ("smollm",)  # `tokenizer.ggml.pre` values this module knows the pre-tokenizer of


def gguf_metadata(path: str | Path) -> dict[str, Any]:
    """The `tokenizer.*` keys of a GGUF file's header, as Python values (strings, ints, lists)."""
    from gguf import GGUFReader  # imported here: only the tokenizer path needs it

    reader = GGUFReader(str(path))
    return {key: f.contents() for key, f in reader.fields.items() if key.startswith("tokenizer.")}


def pre_type(meta: dict[str, Any]) -> str | None:
    """The byte-level BPE pre-tokenizer type of a GGUF tokenizer (`tokenizer.ggml.pre`), None when the file's
    tokenizer is not byte-level BPE (`tokenizer.ggml.model` other than `gpt2`)."""
    if meta.get("tokenizer.ggml.model") != "gpt2":
        return None
    return meta.get("tokenizer.ggml.pre", "default")


def backend_tokenizer(meta: dict[str, Any]) -> Any:
    """A `tokenizers.Tokenizer` of a `smollm` GGUF tokenizer: BPE over the file's vocabulary and merges, the real
    pre-tokenizer (digits one by one, then GPT-2's byte-level regex, no prefix space), a ByteLevel decoder, and the
    file's control tokens (and user-defined ones) as added tokens that are never split."""
    from tokenizers import AddedToken, Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE

    if pre_type(meta) not in PRE_TYPES:
        raise ValueError(f"GGUF pre-tokenizer {pre_type(meta)!r} is not one of {', '.join(PRE_TYPES)}")
    tokens = meta["tokenizer.ggml.tokens"]
    vocab = {token: i for i, token in enumerate(tokens)}
    merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
    tok = Tokenizer(BPE(vocab, merges, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    types = meta["tokenizer.ggml.token_type"]
    tok.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False)
                            for i, t in enumerate(types) if t == TOKEN_TYPE_CONTROL])
    tok.add_tokens([AddedToken(tokens[i], special=False, normalized=False)
                    for i, t in enumerate(types) if t == TOKEN_TYPE_USER_DEFINED])
    return tok


def gguf_tokenizer(path: str | Path, meta: dict[str, Any] | None = None) -> Any:
    """A transformers fast tokenizer built from a `smollm` GGUF file (`backend_tokenizer`), its special tokens
    (bos, eos, unk, pad) and chat template from the file's metadata (`meta`, read from `path` when not given), no
    BOS added (`add_bos_token` is false in SmolLM2's file). `ValueError` for another pre-tokenizer type."""
    from transformers import PreTrainedTokenizerFast

    meta = gguf_metadata(path) if meta is None else meta
    backend = backend_tokenizer(meta)
    tokens = meta["tokenizer.ggml.tokens"]
    named = {name: tokens[meta[f"tokenizer.ggml.{key}_token_id"]]
             for name, key in (("bos_token", "bos"), ("eos_token", "eos"), ("unk_token", "unknown"),
                               ("pad_token", "padding"))
             if f"tokenizer.ggml.{key}_token_id" in meta}
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, clean_up_tokenization_spaces=False, **named)
    tok.name_or_path = str(path)
    tok.chat_template = meta.get("tokenizer.chat_template")
    tok.gguf_pre = pre_type(meta)  # what the purifier's CLI renders with the template above (`cleaner.purify`)
    return tok
