"""Run one cell in the sandbox and print the result as one JSON object.

    python -m cleaner.sandbox [--timeout-s T] [--memory-mb M] [--backend B] [--strict] (-c CODE | FILE)

Exit status 0 whenever the sandbox worked, whatever the code did (read "status"); 1 when the sandbox failed
(status infra_error, or isolation refused under --strict); 2 for bad usage.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import replace

from cleaner.sandbox.backends import SandboxUnavailable
from cleaner.sandbox.config import BACKENDS, SandboxConfig
from cleaner.sandbox.pool import run_code


def main(argv: list[str] | None = None) -> int:
    defaults = SandboxConfig()
    parser = argparse.ArgumentParser(prog="python -m cleaner.sandbox", description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("-c", dest="code", metavar="CODE", help="the code to run")
    source.add_argument("file", nargs="?", metavar="FILE", help="a file with the code to run ('-': stdin)")
    parser.add_argument("--timeout-s", type=float, default=defaults.timeout_s, help="wall-clock limit (s)")
    parser.add_argument("--cpu-time-s", type=float, default=None, help="CPU-time limit (s); default: --timeout-s")
    parser.add_argument("--memory-mb", type=int, default=defaults.memory_mb, help="address-space limit (MiB)")
    parser.add_argument("--max-output-chars", type=int, default=defaults.max_output_chars,
                        help="characters of output in 'tool_output', cut in the middle")
    parser.add_argument("--backend", choices=BACKENDS, default=defaults.backend)
    parser.add_argument("--remote-url", default=None, help="SandboxFusion server, for --backend remote")
    parser.add_argument("--strict", action="store_true", help="refuse to run without namespace isolation")
    args = parser.parse_args(argv)
    if args.code is not None:
        code = args.code
    elif args.file == "-":
        code = sys.stdin.read()
    else:
        with open(args.file, encoding="utf-8") as f:
            code = f.read()
    try:
        config = replace(defaults, timeout_s=args.timeout_s, cpu_time_s=args.cpu_time_s or args.timeout_s,
                         memory_mb=args.memory_mb, max_output_chars=args.max_output_chars, backend=args.backend,
                         remote_url=args.remote_url, strict=args.strict)
    except ValueError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(levelname)s: %(message)s")
    try:
        result = run_code(code, config)
    except SandboxUnavailable as exc:
        print(f"cleaner.sandbox: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({**result.to_dict(), "tool_output": result.to_tool_result().output}, ensure_ascii=False))
    return 1 if result.status == "infra_error" else 0


if __name__ == "__main__":
    sys.exit(main())
