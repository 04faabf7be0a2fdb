"""`python -m cleaner.purify`: the command line of the purifier (`cleaner.purify`), which loads the tokenizer by
name when one is asked for: `lab` (the lab's own, `cleaner.lab.tokenizer`), or for `cleaner.models.load_tokenizer`
a bundled model's, a folder or a GGUF file. Without `--tokenizer` nothing is tokenized (the summary says so).
With SmolLM2's tokenizer (`smollm2`, or a GGUF file of its pre-tokenizer type) the prompt and tool outputs are
rendered with SmolLM2's own chat template (`cleaner.purify.template`).

Exit status: 0; 1 when more than half of the records (or all) were rejected; 2 for bad options, a file whose
format no reader knows, or a bad record under `--strict` (one line on stderr, nothing written)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cleaner import chat, purify, saar
from cleaner.purify import formats


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cleaner.purify", description=purify.__doc__.split("\n\n")[0])
    p.add_argument("src", type=Path, metavar="IN")
    p.add_argument("dst", type=Path, metavar="OUT.jsonl")
    d = saar.SaarConfig()
    p.add_argument("--input-format", default="auto", metavar="NAME",
                   help="the log's format: auto (default: each record by the reader whose keys it holds) or one "
                        f"of {', '.join(formats.READERS)}")
    p.add_argument("--format", default="hermes", help="where calls are in assistant text: hermes (default) or markdown")
    p.add_argument("--outputs-in", default="auto", choices=tuple(purify.OUTPUT_ROLES),
                   help="the role of the message holding a call's output: tool, user, or auto (default: either)")
    p.add_argument("--code-argument", metavar="NAME",
                   help="the call argument that holds the code (default: from the record's tools schema, else code)")
    p.add_argument("--prompt-messages", type=int, metavar="N",
                   help="the first N messages of every record are prompt (default: the record's prompt_messages, "
                        "else the messages before the first assistant message)")
    p.add_argument("--error-pattern", metavar="REGEX",
                   help="an output is also a failure when REGEX matches it (multiline, e.g. '^Error:'); it adds to "
                        "the traceback search")
    p.add_argument("--tokenizer", help="lab, smollm2 (bundled GGUF), a .gguf file or a local Hugging Face tokenizer "
                                       "folder: cut turns at tokens, count them, write OUT.tokens.jsonl (default: "
                                       "none, text-level)")
    p.add_argument("--strict", action="store_true", help="refuse the whole file at the first record that cannot "
                                                         "be read (default: write it to OUT.rejected.jsonl)")
    p.add_argument("--gamma", type=float, default=d.gamma, help="shallow splice when similarity >= gamma (default 0.5)")
    p.add_argument("--similarity", default=d.similarity, help="difflib_code (default), difflib_segment, token, ast")
    p.add_argument("--max-retries", type=int, default=d.max_retries,
                   help="K, lookahead retries per failure (default 3)")
    p.add_argument("--rollback-probability", type=float, default=d.rollback_probability, help="p (default 1.0)")
    p.add_argument("--seed", type=int, default=0, help="seeds the per-trajectory draw with probability p")
    args = p.parse_args(argv)
    try:
        cfg = saar.SaarConfig(True, args.gamma, args.max_retries, args.rollback_probability, args.similarity)
        chat.get_format(args.format)
        input_format = None if args.input_format == "auto" else args.input_format
        if input_format is not None:
            formats.READERS[input_format]
        if args.prompt_messages is not None and args.prompt_messages < 1:
            raise ValueError(f"--prompt-messages must be >= 1, got {args.prompt_messages}")
        tokenizer = None if args.tokenizer is None else _load_tokenizer(args.tokenizer)
        report = purify.run(args.src, args.dst, cfg, tokenizer, args.tokenizer, args.seed, args.format,
                            args.outputs_in, args.error_pattern, args.strict, write_tokens=tokenizer is not None,
                            input_format=input_format, code_argument=args.code_argument,
                            prompt_messages=args.prompt_messages, template=_own_template(tokenizer))
    except (purify.PurifyInputError, ValueError, OSError) as e:  # bad input or options: one line, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"purified {args.src} -> {args.dst}")
    print(report.table())
    for line in report.warnings():
        print(line, file=sys.stderr)
    return 1 if report.mostly_rejected else 0


def _load_tokenizer(name: str):
    from cleaner.lab.tokenizer import lab_tokenizer  # transformers: imported only when a tokenizer is asked for
    from cleaner.models import load_tokenizer

    return lab_tokenizer() if name == "lab" else load_tokenizer(name, names=("lab",))


def _own_template(tokenizer) -> str | None:
    """The chat template the prompt and tool outputs are rendered with: SmolLM2's own (from its GGUF file, with a
    tokenizer `cleaner.smollm2` built), else None (ChatML, as the lab's and Qwen's templates render it)."""
    from cleaner import smollm2

    if tokenizer is None or getattr(tokenizer, "gguf_pre", None) not in smollm2.PRE_TYPES:
        return None
    return tokenizer.chat_template


if __name__ == "__main__":
    sys.exit(main())
