"""Reading data files as text: strictly UTF-8, and JSON lines with their line numbers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from tunelab.errors import DataError


def read_utf8(path) -> str:
    """The whole file as text, strictly UTF-8 (a leading BOM is dropped); DataError names the bad line."""
    path = Path(path)
    if not path.exists():
        raise DataError(path, "file not found")
    if path.is_dir():
        raise DataError(path, "is a directory, not a data file")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(path, f"cannot read the file: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8-sig")  # strict: errors="strict" is the default
    except UnicodeDecodeError as e:
        # decode() reports a byte offset (into the BOM-less bytes if there was a BOM); turn it into a line.
        offset = e.start + (3 if raw.startswith(b"\xef\xbb\xbf") else 0)
        line = raw.count(b"\n", 0, offset) + 1
        raise DataError(path, f"not valid UTF-8 (byte 0x{raw[offset]:02x})", line=line) from None
    if not text.strip():
        raise DataError(path, "file is empty")
    return text


def iter_jsonl_objects(path, text: str) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a JSONL text; DataError names the line otherwise."""
    # split on "\n" only: str.splitlines would also split on U+2028 etc., which JSON strings may hold.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(path, f"not valid JSON: {e.msg} (column {e.colno})", line=number) from None
        except (ValueError, RecursionError) as e:  # e.g. an integer too long to convert, absurd nesting
            raise DataError(path, f"not valid JSON: {e}", line=number) from None
        if not isinstance(record, dict):
            raise DataError(path, f"expected a JSON object, got {type(record).__name__}", line=number)
        yield number, record


def read_lines(path: str) -> list[tuple[int, str]]:
    """(line number, line) of each non-blank line of a text file (`-` for stdin), line ends removed."""
    import sys

    text = sys.stdin.read() if path == "-" else read_utf8(path)
    lines = [(n, line.rstrip("\r")) for n, line in enumerate(text.split("\n"), start=1)]
    lines = [(n, line) for n, line in lines if line.strip()]
    if not lines:
        raise DataError(path, "no inputs in the file")
    return lines
