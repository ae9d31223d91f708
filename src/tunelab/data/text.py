"""Reading data files as text: strictly UTF-8, and JSON lines with their line numbers."""

from __future__ import annotations

import contextlib
import gc
import json
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path

from tunelab.errors import DataError

# A data or config file larger than this is refused rather than read into memory (SQuAD v1.1 train is 30 MB).
MAX_FILE_BYTES = 2**30


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Python's cycle collector off for the block. Parsing a large file makes millions of objects and no
    cycles, and each collection pass walks them all: about 40% of reading SQuAD train (87,599 questions)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def not_regular(path: Path, mode: int) -> str:
    """What a path that is not a regular file is, as a message ("a symlink to /dev/zero, a character
    device")."""
    kind = _kind(mode)
    if path.is_symlink():
        kind = f"a symlink to {os.path.realpath(path)}, {kind}"
    return f"is {kind}, not a regular file"


def read_file_bytes(path, limit: int | None = None) -> bytes:
    """The bytes of a regular file (symlinks resolved), at most `limit` (default MAX_FILE_BYTES) of them.
    FIFOs, devices, sockets and directories are refused without blocking on them (the file is opened
    non-blocking and checked with fstat, so a path swapped for a FIFO after a check cannot hang the read);
    DataError otherwise."""
    path = Path(path)
    limit = MAX_FILE_BYTES if limit is None else limit
    if not path.exists():
        raise DataError(path, "file not found")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except IsADirectoryError:
        raise DataError(path, "is a directory, not a data file") from None
    except OSError as e:
        raise DataError(path, f"cannot read the file: {e.strerror or e}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        if stat.S_ISDIR(mode):
            raise DataError(path, "is a directory, not a data file")
        raise DataError(path, not_regular(path, mode))
    with os.fdopen(fd, "rb") as f:
        try:
            raw = f.read(limit + 1)  # bounded: a file that grows while it is read cannot exhaust memory
        except OSError as e:
            raise DataError(path, f"cannot read the file: {e.strerror or e}") from None
    if len(raw) > limit:
        raise DataError(
            path,
            f"larger than {limit:,} bytes, the most tunelab reads from one file (split it, or use a subset)",
        )
    return raw


def _stdin_bytes() -> bytes:
    import sys

    raw = sys.stdin.buffer.read(MAX_FILE_BYTES + 1)
    if len(raw) > MAX_FILE_BYTES:
        raise DataError("-", f"larger than {MAX_FILE_BYTES:,} bytes, the most tunelab reads")
    return raw


def read_utf8(path) -> str:
    """The whole file (`-`: standard input) as text, strictly UTF-8 (a leading BOM is dropped); DataError
    names the bad line."""
    raw = _stdin_bytes() if str(path) == "-" else read_file_bytes(path)
    path = Path(path)
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


# A JSON escape of a UTF-16 surrogate (\ud800-\udfff): the only way a surrogate gets into text read from
# strict UTF-8. A pair of them is a real character; a lone one is valid JSON but not text: it cannot be
# encoded (UTF-8, a tokenizer), so such a file is refused where it is read.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_SURROGATE = re.compile("[\ud800-\udfff]")


def find_surrogate(value, where: str = "") -> tuple[str, str] | None:
    """(where, the code point) of the first lone surrogate in a parsed JSON value's strings (keys too), as a
    path like `data[0].paragraphs[2].qas[1].question`; None if there is none."""
    if isinstance(value, str):
        m = _SURROGATE.search(value)
        return (where or "the value", f"U+{ord(m.group()):04X}") if m else None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        at = f"{where}[{key}]" if isinstance(key, int) else f"{where}.{key}" if where else str(key)
        found = (
            find_surrogate(key, f"a key in {where or 'the object'}") if isinstance(key, str) else None
        ) or (find_surrogate(item, at))
        if found:
            return found
    return None


def surrogate_problem(where: str, code: str) -> str:
    return (
        f"{where!r} holds a lone surrogate {code} (the JSON escape \\u{code[2:].lower()} with no "
        "partner): valid JSON, but not text that can be encoded as UTF-8 or tokenized"
    )


def may_hold_lone_surrogates(text: str) -> bool:
    """Whether parsed JSON text can hold a lone surrogate: it has a surrogate escape that is not half of a
    high-low pair (\\ud83d\\ude00, an emoji, parses to one character). Exact for valid JSON, and it looks only
    at the escapes, so a file of emoji skips find_surrogate's walk of every string (0.7 s for SQuAD train)."""
    escapes = []  # (offset, is high) of the real escapes: a match after an even run of backslashes
    for m in _SURROGATE_ESCAPE.finditer(text):
        i = m.start()
        run = i
        while run and text[run - 1] == "\\":
            run -= 1
        if (i - run) % 2 == 0:  # after an odd run, the match is an escaped backslash and then letters
            escapes.append((i, m.group()[3].lower() in "89ab"))
    k = 0
    while k < len(escapes):
        (at, high), after = escapes[k], escapes[k + 1] if k + 1 < len(escapes) else None
        if not high or after is None or after[0] != at + 6 or after[1]:
            return True
        k += 2
    return False


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        twice = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise ValueError(f"the key {twice!r} is given twice")  # (json.loads keeps the last silently)
    return obj


def loads(text: str):
    """json.loads, but an object that gives a key twice is a ValueError, as in tunelab's YAML files."""
    return json.loads(text, object_pairs_hook=_unique_keys)


def iter_jsonl_objects(path, text: str) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a JSONL text; DataError names the line otherwise."""
    # split on "\n" only: str.splitlines would also split on U+2028 etc., which JSON strings may hold.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = loads(line)
        except json.JSONDecodeError as e:
            raise DataError(path, f"not valid JSON: {e.msg} (column {e.colno})", line=number) from None
        except (ValueError, RecursionError) as e:  # e.g. an integer too long to convert, absurd nesting
            raise DataError(path, f"not valid JSON: {e}", line=number) from None
        if not isinstance(record, dict):
            raise DataError(path, f"expected a JSON object, got {type(record).__name__}", line=number)
        found = find_surrogate(record) if may_hold_lone_surrogates(line) else None
        if found:
            raise DataError(path, surrogate_problem(*found), line=number)
        yield number, record


def read_lines(path: str) -> list[tuple[int, str]]:
    """(line number, line) of each non-blank line of a text file (`-` for stdin), line ends removed."""
    text = read_utf8(path)
    lines = [(n, line.rstrip("\r")) for n, line in enumerate(text.split("\n"), start=1)]
    lines = [(n, line) for n, line in lines if line.strip()]
    if not lines:
        raise DataError(path, "no inputs in the file")
    return lines
