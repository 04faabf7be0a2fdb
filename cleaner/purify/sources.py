"""The records of an input file, one at a time, in constant memory: JSON Lines, or one JSON array (pretty-printed
or not), either of them gzip-compressed (`.gz`, told by its magic bytes). Each record comes with its place (line
number, or item number in an array) and the value, or the `PurifyInputError` saying why it is not a record."""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from cleaner.purify.log import PurifyInputError

CHUNK_BYTES = 1 << 20
_DECODER = json.JSONDecoder()


def open_bytes(path: Path) -> IO[bytes]:
    f = open(path, "rb")
    if f.peek(2)[:2] == b"\x1f\x8b":
        return gzip.open(f, "rb")  # type: ignore[return-value]
    return f


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def check_unicode(raw: str, value: Any) -> Any:
    """`value` (parsed from `raw`), or the error when it holds a lone surrogate, which is not valid Unicode."""
    if _SURROGATE_ESCAPE.search(raw) is not None:
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise PurifyInputError("holds a lone surrogate escape (\\ud800-\\udfff), which is not valid "
                                   "Unicode") from None
    return value


def _parse_line(line: str) -> Any:
    try:
        return check_unicode(line, json.loads(line))
    except json.JSONDecodeError as e:
        raise PurifyInputError(f"not valid JSON ({e.msg} at column {e.colno})") from None


def _first_char(f: IO[bytes]) -> bytes:
    head = f.peek(64) if hasattr(f, "peek") else b""
    return head.removeprefix(b"\xef\xbb\xbf").lstrip()[:1]


Entry = tuple[int, "str | bytes", "Any | PurifyInputError"]  # (place, its text (bytes: not UTF-8), value or error)


def records(path: Path) -> tuple[str, Iterator[Entry]]:
    """("line" or "item": what the places count, the entries)."""
    f = open_bytes(path)
    if _first_char(f) == b"[":
        return "item", _array_items(f)
    return "line", _lines(f)


def _lines(f: IO[bytes]) -> Iterator[Entry]:
    with f:
        for lineno, raw in enumerate(f, 1):
            if lineno == 1:
                raw = raw.removeprefix(b"\xef\xbb\xbf")
            raw = raw.rstrip(b"\n").removesuffix(b"\r")
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield lineno, raw, PurifyInputError(f"not UTF-8 text ({e.reason} at byte {e.start})")
                continue
            try:
                yield lineno, line, _parse_line(line)
            except PurifyInputError as e:
                yield lineno, line, e


def _array_items(f: IO[bytes]) -> Iterator[Entry]:
    """The items of one JSON array, parsed one at a time from a text buffer that drops what was read and is
    refilled as it empties. A syntax error ends the file with one rejected entry (the rest cannot be found)."""
    with f:
        text, pos, pending, eof = "", 0, b"", False

        def refill() -> bool:
            nonlocal text, pos, pending, eof
            if eof:
                return False
            chunk = f.read(CHUNK_BYTES)
            eof = not chunk
            data = pending + chunk
            cut = len(data) if eof else len(data) - _incomplete_tail(data)
            text, pos = text[pos:] + data[:cut].decode("utf-8", errors="surrogateescape"), 0
            pending = data[cut:]
            return True

        refill()
        pos = text.find("[") + 1
        item = 0
        while True:
            while True:  # skip whitespace and the comma before the next item
                while pos < len(text) and text[pos] in " \t\r\n,":
                    pos += 1
                if pos < len(text) or not refill():
                    break
            if pos >= len(text) or text[pos] == "]":
                return
            item += 1
            while True:
                try:
                    value, end = _DECODER.raw_decode(text, pos)
                    if end < len(text) or eof:  # a value at the buffer's end may go on after it
                        break
                    refill()
                except json.JSONDecodeError as e:
                    if refill():
                        continue
                    yield item, text[pos: pos + 200], PurifyInputError(f"not valid JSON ({e.msg} at char {e.pos})")
                    return
            raw = text[pos:end]
            pos = end
            try:
                raw.encode("utf-8")
            except UnicodeEncodeError:
                yield item, raw.encode("utf-8", errors="surrogateescape"), PurifyInputError("not UTF-8 text")
                continue
            try:
                yield item, raw, check_unicode(raw, value)
            except PurifyInputError as e:
                yield item, raw, e


def _incomplete_tail(data: bytes) -> int:
    """How many bytes at the end of `data` start a UTF-8 character that is not complete yet."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 != 0x80:  # a lead byte (or ASCII)
            need = 1 if byte < 0x80 else 2 if byte >> 5 == 0b110 else 3 if byte >> 4 == 0b1110 else 4
            return back if need > back else 0
    return 0
