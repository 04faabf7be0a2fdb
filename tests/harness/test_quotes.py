"""harness.quotes: the README and docs quote the committed report's tables verbatim (less the source column), so
a figure cannot drift from its record; a stale quote is named."""

from __future__ import annotations

from harness import quotes
from harness.records import REPO

TABLE = """### A title

| model | Pass@1 | source |
|---|---|---|
| lab | 95.0 | [`abc`](runs/abc/) |

A note | with a bar.
| only | two |
|---|---|
"""


def test_the_source_column_is_dropped_from_each_table_and_nothing_else():
    assert quotes.without_column(TABLE) == """### A title

| model | Pass@1 |
|---|---|
| lab | 95.0 |

A note | with a bar.
| only | two |
|---|---|
"""


def test_the_committed_docs_quote_the_committed_report():
    docs = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    blocks = {m.group("name") for doc in docs for m in quotes.BLOCK.finditer(doc.read_text())}
    assert {"comparison.md", "latency.md", "tuning.md", "table4.md"} <= blocks
    assert quotes.stale(docs) == []


def test_a_changed_figure_is_named_and_rewritten(tmp_path):
    report = tmp_path / "report"
    report.mkdir()
    (report / "t.md").write_text(TABLE)
    doc = tmp_path / "doc.md"
    old = "| model | Pass@1 |\n|---|---|\n| lab | 96.0 |\n"
    doc.write_text(f"Before.\n<!-- report: t.md -->\n{old}<!-- /report -->\nAfter.\n")
    assert quotes.stale([doc], report) == [f"{doc}: t.md"]
    fixed = quotes.refreshed(doc.read_text(), report)
    assert fixed == "Before.\n<!-- report: t.md -->\n" + quotes.without_column(TABLE) + "<!-- /report -->\nAfter.\n"
    doc.write_text(fixed)
    assert quotes.stale([doc], report) == []
