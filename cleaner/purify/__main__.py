"""`python -m cleaner.purify`: the command line of the purifier (`cleaner.purify`), which loads the tokenizer by
name: `lab` (the lab's own, `cleaner.lab.tokenizer`), or for `cleaner.models.load_tokenizer` a bundled model's, a
folder or a GGUF file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cleaner import chat, purify, saar


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cleaner.purify", description=purify.__doc__.split("\n\n")[0])
    p.add_argument("src", type=Path, metavar="IN.jsonl")
    p.add_argument("dst", type=Path, metavar="OUT.jsonl")
    d = saar.SaarConfig()
    p.add_argument("--format", default="hermes", help="where calls are in assistant text: hermes (default) or markdown")
    p.add_argument("--outputs-in", default="auto", choices=tuple(purify.OUTPUT_ROLES),
                   help="the role of the message holding a call's output: tool, user, or auto (default: either)")
    p.add_argument("--error-pattern", metavar="REGEX",
                   help="an output is a failure exactly when REGEX matches it (multiline, e.g. '^Error:'); "
                        "default: a Python traceback or exception line anywhere in it")
    p.add_argument("--tokenizer", help="lab, smollm2 (bundled), a .gguf file or a local Hugging Face tokenizer "
                                       "folder; also writes OUT.tokens.jsonl")
    p.add_argument("--strict", action="store_true", help="refuse the whole file at the first record that cannot "
                                                         "be read (default: write it to OUT.rejected.jsonl)")
    p.add_argument("--gamma", type=float, default=d.gamma, help="shallow splice when similarity >= gamma (default 0.5)")
    p.add_argument("--similarity", default=d.similarity, help="difflib_code (default), difflib_segment, token, ast")
    p.add_argument("--max-retries", type=int, default=d.max_retries, help="K, lookahead retries per failure (default 3)")
    p.add_argument("--rollback-probability", type=float, default=d.rollback_probability, help="p (default 1.0)")
    p.add_argument("--seed", type=int, default=0, help="seeds the per-trajectory draw with probability p")
    args = p.parse_args(argv)
    try:
        cfg = saar.SaarConfig(True, args.gamma, args.max_retries, args.rollback_probability, args.similarity)
        chat.get_format(args.format)
        name = args.tokenizer or "lab"
        from cleaner.lab.tokenizer import lab_tokenizer  # transformers: imported once the arguments are read
        from cleaner.models import load_tokenizer

        tokenizer = lab_tokenizer() if name == "lab" else load_tokenizer(name, names=("lab",))
        report = purify.run(args.src, args.dst, cfg, tokenizer, name, args.seed, args.format,
                            args.outputs_in, args.error_pattern, args.strict, write_tokens=args.tokenizer is not None)
    except (purify.PurifyInputError, ValueError, OSError) as e:  # bad input or options: one line, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"purified {args.src} -> {args.dst}")
    print(report.table())
    if report.trajectories == 0 and report.rejected:
        print(f"error: no record of {args.src} could be read; see {report.rejected_path}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
