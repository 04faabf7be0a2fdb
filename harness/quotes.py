"""The report's tables quoted in the README and docs, so that each figure has one source (`results/report/`).

A doc quotes a table between two markers; everything between them is the table's Markdown as the report wrote it,
less its `source` column (its links are relative to the report's folder):

    <!-- report: comparison.md -->
    ...
    <!-- /report -->

`python -m harness.quotes` rewrites every quoted block of README.md and docs/*.md from the report (`make comparison`
runs it after the report); `--check` changes nothing and exits 1 naming each block that differs (the tests run it).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
REPORT = REPO / "results" / "report"
BLOCK = re.compile(r"(<!-- report: (?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- /report -->)", re.S)


def without_column(markdown: str, column: str = "source") -> str:
    """`markdown` with the named column removed from each of its tables (a table: consecutive lines starting with
    `|`, its first line the header); a table without that column, and every other line, unchanged."""
    out: list[str] = []
    drop: int | None = None
    for line in markdown.splitlines():
        if not line.startswith("|"):
            drop = None
            out.append(line)
            continue
        cells = line.strip().removeprefix("|").removesuffix("|").split("|")
        if drop is None:  # the table's first line: its header
            names = [c.strip() for c in cells]
            drop = names.index(column) if column in names else -1
        if drop >= 0:
            del cells[drop]
        out.append("|" + "|".join(cells) + "|")
    return "\n".join(out) + "\n"


def quoted(name: str, report: Path = REPORT) -> str:
    """The body of a `<!-- report: NAME -->` block: the report's NAME without its source column."""
    path = report / name
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such report table")
    return without_column(path.read_text())


def refreshed(text: str, report: Path = REPORT) -> str:
    """`text` with every quoted block's body replaced by the report's table."""
    return BLOCK.sub(lambda m: m.group(1) + quoted(m.group("name"), report) + m.group(4), text)


def stale(docs: list[Path], report: Path = REPORT) -> list[str]:
    """`doc: NAME` for each quoted block that differs from the report."""
    return [f"{doc}: {m.group('name')}" for doc in docs for m in BLOCK.finditer(doc.read_text())
            if m.group("body") != quoted(m.group("name"), report)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.quotes", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a quoted block differs")
    parser.add_argument("--report", type=Path, default=REPORT, help=f"the report's folder (default: {REPORT})")
    args = parser.parse_args(argv)
    docs = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    try:
        differ = stale(docs, args.report)
        if args.check:
            for line in differ:
                print(f"stale quote: {line} (python -m harness.quotes rewrites it)", file=sys.stderr)
            return 1 if differ else 0
        for doc in docs:
            text = doc.read_text()
            if (new := refreshed(text, args.report)) != text:
                doc.write_text(new)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{len(differ)} quoted tables rewritten from {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
