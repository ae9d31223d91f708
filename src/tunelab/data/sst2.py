"""SST-2 (binary sentiment) reader: GLUE TSV, CSV or JSONL, validated row by row.

Every problem raises `DataError` naming the file, the 1-based line and what is wrong.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError, UsageError

LABELS = ("0", "1")


@dataclass(frozen=True)
class SST2Example:
    text: str
    label: int | None  # None for unlabelled files (GLUE test)
    line: int  # 1-based line in the file, or 1-based record index for the Hub


def read_utf8(path) -> str:
    """The whole file as text, strictly UTF-8 (a leading BOM is dropped); DataError names the bad line.

    Shared by the SST-2 and SQuAD readers.
    """
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


def read_sst2(path) -> list[SST2Example]:
    """Read an SST-2 file; the format follows the suffix: .tsv (GLUE), .csv or .jsonl."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".tsv", ".csv", ".jsonl"):
        raise DataError(
            path, f"unknown SST-2 file type {suffix or '(none)'!r}: expected .tsv, .csv or .jsonl"
        )
    text = read_utf8(path)
    if suffix == ".jsonl":
        return _read_jsonl(path, text)
    return _read_delimited(path, text, suffix)


def _read_delimited(path: Path, text: str, suffix: str) -> list[SST2Example]:
    if suffix == ".tsv":
        # GLUE sentences contain bare quotes (`"`), so no quoting at all: one line is one row.
        reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE)
        sep = "tab"
    else:
        reader = csv.reader(io.StringIO(text, newline=""), strict=True)
        sep = "comma"
    header = None
    examples = []
    while True:
        start = reader.line_num + 1  # a quoted CSV field may span lines: report where the row starts
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            raise DataError(path, f"cannot parse the row: {e}", line=start) from None
        if not row or (len(row) == 1 and not row[0].strip()):
            continue  # blank line (e.g. at the end of the file)
        if header is None:
            header = [name.strip() for name in row]
            if "sentence" not in header:
                raise DataError(
                    path,
                    f"header must name a 'sentence' column, got {row!r} (is the header row missing?)",
                    line=start,
                )
            for name in header:
                if name and header.count(name) > 1:
                    raise DataError(path, f"column {name!r} appears twice in the header", line=start)
            text_col = header.index("sentence")
            label_col = header.index("label") if "label" in header else None
            continue
        if len(row) != len(header):
            raise DataError(
                path,
                f"expected {len(header)} {sep}-separated fields ({', '.join(header)}), got {len(row)}",
                line=start,
            )
        label = None
        if label_col is not None:
            label = _label(path, row[label_col].strip(), start)
        examples.append(SST2Example(_text(path, row[text_col], start), label, start))
    if header is None:
        raise DataError(path, "file is empty")
    if not examples:
        raise DataError(path, "no rows after the header")
    return examples


def iter_jsonl_objects(path, text: str):
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


def _read_jsonl(path: Path, text: str) -> list[SST2Example]:
    examples = []
    for number, record in iter_jsonl_objects(path, text):
        key = "sentence" if "sentence" in record else "text"
        if key not in record:
            raise DataError(path, "object has no 'sentence' (or 'text') field", line=number)
        if not isinstance(record[key], str):
            raise DataError(path, f"{key!r} must be a string, got {type(record[key]).__name__}", line=number)
        label = record.get("label")
        if label is not None:
            # accept 0/1 as numbers or strings; bool is an int in Python but not a label here
            if isinstance(label, bool) or not isinstance(label, (int, str)):
                shown = json.dumps(label) if isinstance(label, (bool, float)) else type(label).__name__
                raise DataError(path, f"label must be 0 or 1, got {shown}", line=number)
            label = _label(path, str(label).strip(), number)
        examples.append(SST2Example(_text(path, record[key], number), label, number))
    if not examples:
        raise DataError(path, "file is empty")
    return examples


def _label(path: Path, value: str, line: int) -> int:
    if value not in LABELS:
        raise DataError(path, f"label must be 0 or 1, got {value!r}", line=line)
    return int(value)


def _text(path: Path, value: str, line: int) -> str:
    text = value.strip()  # GLUE sentences end with a space
    if not text:
        raise DataError(path, "sentence is empty", line=line)
    return text


def load_sst2_hub(split: str) -> list[SST2Example]:
    """SST-2 from the Hugging Face Hub (`nyu-mll/glue`, `sst2`); split train, validation (or dev), test."""
    hub_split = "validation" if split == "dev" else split
    if hub_split not in ("train", "validation", "test"):
        raise UsageError(f"unknown SST-2 split {split!r}: expected train, dev (validation) or test")
    try:
        import datasets
    except ImportError:
        raise UsageError(
            "loading SST-2 from the Hub needs the `datasets` package: pip install 'tunelab[hub]' "
            "(or use local files with --data-dir / TUNELAB_DATA_DIR)"
        ) from None
    try:
        rows = datasets.load_dataset("nyu-mll/glue", "sst2", split=hub_split)
        examples = []
        for i, row in enumerate(rows, start=1):
            label = row.get("label")
            examples.append(
                SST2Example(
                    str(row["sentence"]).strip(), None if label is None or label < 0 else int(label), i
                )
            )
    except Exception as e:  # noqa: BLE001 -- offline, unknown split, changed schema: report plainly
        raise UsageError(
            f"could not load SST-2 split {hub_split!r} from the Hugging Face Hub (nyu-mll/glue, sst2): "
            f"{type(e).__name__}: {e}. Offline? Use local files with --data-dir / TUNELAB_DATA_DIR"
        ) from None
    return examples


def summarize_sst2(examples) -> dict:
    """Counts: rows, labelled rows, and rows per label."""
    labels = {"0": 0, "1": 0}
    for ex in examples:
        if ex.label is not None:
            labels[str(ex.label)] += 1
    return {"rows": len(examples), "labelled": labels["0"] + labels["1"], "labels": labels}
