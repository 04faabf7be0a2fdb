"""Readers of log formats, one file each, in a small registry (`READERS`). A reader turns one record into a `Log`
(chat messages, `cleaner.purify.log`) and puts purified messages back into a copy of the record; every field it
does not change is kept as it was. Adding a format is one file here that registers a `Reader`, and one import below.

A record is read by the first reader (in registry order) whose keys it holds, or by the one `--input-format NAME`
names; a record no reader claims is rejected, and when the file's first record is one, the whole file is refused
with one line (`unknown_format`) rather than read as something else.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cleaner.purify.log import Log
from cleaner.registry import Registry

Purified = list[tuple[int, dict[str, Any]]]  # the generated messages after purification, each with its source index


@dataclass(frozen=True)
class Reader:
    name: str
    keys: tuple[str, ...]  # a record holding all of them is of this format
    shape: str  # the record as messages show it, e.g. '{"messages": [...]}'
    read: Callable[[dict[str, Any], int | None], Log]  # record, --prompt-messages (None: the record's or inferred)
    write: Callable[[dict[str, Any], Log, Purified, str], dict[str, Any]]  # record, its log, purified, response text


READERS = Registry("log format")


def register(reader: Reader) -> Reader:
    return READERS.register(reader.name)(reader)


def claims(record: dict[str, Any]) -> str | None:
    """The first reader (registry order) whose keys `record` holds, or None."""
    return next((name for name, r in READERS.items() if all(key in record for key in r.keys)), None)


def formats_read() -> str:
    return ", ".join(f"{name} {r.shape}" for name, r in READERS.items())


def expected() -> str:
    """The shapes of every format, for the reason a record no reader claims is rejected."""
    shapes = [r.shape for r in READERS.values()]
    return f"no trajectory: expected {', '.join(shapes[:-1])} or {shapes[-1]}"


def unknown_format(record: dict[str, Any], where: str) -> str:
    """The one line that refuses a file whose first record no reader knows."""
    keys = ", ".join(list(record)[:8]) + (", ..." if len(record) > 8 else "")
    return f"{where}: no reader knows a record with keys [{keys}]; formats read: {formats_read()}"


# the registry's order is the order records are claimed in
from cleaner.purify.formats import messages, prompt_completion  # noqa: E402,F401,I001
from cleaner.purify.formats import chatml, sharegpt  # noqa: E402,F401
