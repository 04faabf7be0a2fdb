"""Run one cell in the sandbox and print the result as one JSON object (UTF-8, one line).

    python -m cleaner.sandbox [--timeout-s T] [--memory-mb M] [--backend B] [--preload-modules M,...] (-c CODE | FILE)
    python -m cleaner.sandbox --check [--backend B] [--preload-modules M,...]

The object is the ExecutionResult's fields, `tool_output` (what the model is shown) and `isolation` (what
protected the cell: backend, uid isolation, how memory was limited, ...; see SandboxPool.isolation). Exit status 0
whenever the sandbox worked, whatever the code did (read "status"); 1 when the sandbox failed (status
infra_error, or the isolation asked for cannot be had here); 2 for bad usage. `--check` is the prerequisite check
that every `make` target needing the sandbox runs first: one line, `sandbox ready: ...` (exit 0) or what is missing
and the fix (exit 1).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from dataclasses import replace

from cleaner.sandbox.backends import SandboxUnavailable
from cleaner.sandbox.config import BACKENDS, SandboxConfig
from cleaner.sandbox.pool import check_ready, open_pool


async def _run(code: str, config: SandboxConfig, max_output_chars: int) -> dict:
    async with open_pool(config) as pool:
        result = await pool.run(code)
        isolation = getattr(pool, "isolation", {})
    return {**result.to_dict(), "tool_output": result.to_tool_result(max_output_chars).output, "isolation": isolation}


def main(argv: list[str] | None = None) -> int:
    defaults = SandboxConfig()
    parser = argparse.ArgumentParser(prog="python -m cleaner.sandbox", description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--check", action="store_true", help="run one trivial cell: is the sandbox usable here?")
    source.add_argument("-c", dest="code", metavar="CODE", help="the code to run")
    source.add_argument("file", nargs="?", metavar="FILE", help="a file with the code to run ('-': stdin)")
    parser.add_argument("--timeout-s", type=float, default=defaults.timeout_s, help="wall-clock limit (s)")
    parser.add_argument("--cpu-time-s", type=float, default=None, help="CPU-time limit (s); default: --timeout-s")
    parser.add_argument("--memory-mb", type=int, default=defaults.memory_mb, help="memory limit of the call (MiB)")
    parser.add_argument("--max-output-chars", type=int, default=256,
                        help="characters of output in 'tool_output', cut in the middle (the paper's 256)")
    parser.add_argument("--backend", choices=BACKENDS, default=defaults.backend)
    parser.add_argument("--preload-modules", default="", metavar="M,...",
                        help="modules to import before the cell, e.g. numpy,sympy (their site-packages become "
                             "importable)")
    parser.add_argument("--remote-url", default=None, help="SandboxFusion server, for --backend remote")
    args = parser.parse_args(argv)
    if args.check:
        raw = b"pass"
    elif args.code is not None:
        raw = os.fsencode(args.code)  # argv is decoded with surrogateescape: this gives its bytes back
    elif args.file == "-":
        raw = sys.stdin.buffer.read()
    else:
        with open(args.file, "rb") as f:
            raw = f.read()
    try:
        code = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        parser.error(f"the code is not valid UTF-8 ({exc})")
    try:
        if args.max_output_chars < 1:
            raise ValueError(f"--max-output-chars must be >= 1, got {args.max_output_chars}")
        config = replace(defaults, timeout_s=args.timeout_s, cpu_time_s=args.cpu_time_s, memory_mb=args.memory_mb,
                         backend=args.backend,
                         preload_modules=tuple(m for m in args.preload_modules.split(",") if m),
                         remote_url=args.remote_url, workers=1)
    except ValueError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(levelname)s: %(message)s")
    try:
        if args.check:
            print(f"sandbox ready: backend {check_ready(config)}" + (f", preloaded {', '.join(config.preload_modules)}"
                                                                   if config.preload_modules else ""), flush=True)
            return 0
        out = asyncio.run(_run(code, config, args.max_output_chars))
    except SandboxUnavailable as exc:
        print(f"cleaner.sandbox: {exc}", file=sys.stderr)
        return 1
    # Bytes, not the locale's text stream: the object is UTF-8 whatever the terminal says (every string in it
    # is valid text by construction).
    sys.stdout.buffer.write(json.dumps(out, ensure_ascii=False).encode("utf-8") + b"\n")
    sys.stdout.flush()
    return 1 if out["status"] == "infra_error" else 0


if __name__ == "__main__":
    sys.exit(main())
