"""Text-classification files: TSV, CSV or JSONL with a text column, an optional second text column (sentence
pairs) and an optional label column (label names or their numbers 0..N-1), validated row by row.

Every problem raises `DataError` naming the file, the 1-based line and what is wrong. Read with the standard
`csv` module rather than pandas or `datasets`: they do not say which line is bad, and GLUE's TSV needs no
quoting at all. Rows of a dataset (tunelab.data.hub) go through the same checks (`read_records`).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

from tunelab.data.text import iter_jsonl_objects, read_utf8
from tunelab.errors import DataError

SUFFIXES = (".tsv", ".csv", ".jsonl")


@dataclass(frozen=True)
class TextExample:
    text: str
    label: int | None  # the label's number (its index in the task's labels); None for unlabelled files
    line: int  # 1-based line in the file, or 1-based record index for the Hub
    text_pair: str | None = None  # the second text of a sentence pair


@dataclass(frozen=True)
class Columns:
    """Where a file keeps its texts and labels. In JSONL a `text` field stands in for the text column."""

    text: str = "sentence"
    text_pair: str | None = None
    label: str = "label"


@dataclass(frozen=True)
class LabelSet:
    names: tuple[str, ...]

    def _numeric_names(self) -> bool:
        """Names that are numbers themselves ([-1, 1], star ratings 1-5): a number is then a name, never
        an index (a `0` where the labels are -1 and 1 is an error, not the first label)."""
        return all(_is_number(name) for name in self.names)

    def rule(self) -> str:
        n = len(self.names)
        numbers = "0 or 1" if n == 2 else f"0-{n - 1}"
        if list(self.names) == [str(i) for i in range(n)]:
            return numbers
        if self._numeric_names():
            return f"one of {', '.join(self.names)}"
        return f"{numbers} or a label name ({', '.join(self.names)})"

    def parse(self, value: str) -> int | None:
        """The label number of a name or a number written as text; None if it is neither."""
        value = value.strip()
        if value in self.names:
            return self.names.index(value)
        # ASCII digits only (str.isdigit also takes "²" and "٣"), short enough for int()
        if value.isascii() and value.isdigit() and len(value) < 10 and not self._numeric_names():
            number = int(value)
            return number if number < len(self.names) else None
        return None


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_table(
    path, columns: Columns, labels: LabelSet, *, what: str = "classification"
) -> list[TextExample]:
    """Read a classification file; the format follows the suffix: .tsv (no quoting), .csv or .jsonl."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise DataError(
            path, f"unknown {what} file type {suffix or '(none)'!r}: expected .tsv, .csv or .jsonl"
        )
    text = read_utf8(path)
    reader = _Rows(path, columns, labels)
    if suffix == ".jsonl":
        return reader.jsonl(text)
    return reader.delimited(text, suffix)


def summarize(examples: list[TextExample], labels: LabelSet) -> dict:
    """Counts: rows, labelled rows, and rows per label name."""
    counts = {name: 0 for name in labels.names}
    for ex in examples:
        if ex.label is not None:
            counts[labels.names[ex.label]] += 1
    return {"rows": len(examples), "labelled": sum(counts.values()), "labels": counts}


def read_records(
    where: str, records: list[dict], columns: Columns, labels: LabelSet, *, unlabelled: int | None = None
) -> list[TextExample]:
    """Classification examples from the rows of a dataset (tunelab.data.hub), checked as JSONL lines are;
    errors name `where` and the 1-based row. A label equal to `unlabelled` (the Hub's -1) means none."""
    reader = _Rows(where, columns, labels, unit="row")
    if unlabelled is not None:
        records = [{**r, columns.label: None} if r.get(columns.label) == unlabelled else r for r in records]
    return reader.records(enumerate(records, start=1))


class _Rows:
    def __init__(self, path: Path | str, columns: Columns, labels: LabelSet, unit: str = "line"):
        self.path, self.columns, self.labels, self.unit = path, columns, labels, unit

    def _error(self, problem: str, line: int) -> DataError:
        if self.unit == "line":
            return DataError(self.path, problem, line=line)
        return DataError(f"{self.path}, {self.unit} {line}", problem)

    def _text(self, value: str, line: int, column: str) -> str:
        text = value.strip()  # GLUE sentences end with a space
        if not text:
            raise self._error(f"{column} is empty", line)
        return text

    def _label(self, value: str, line: int) -> int:
        label = self.labels.parse(value)
        if label is None:
            raise self._error(f"label must be {self.labels.rule()}, got {value.strip()!r}", line)
        return label

    # TSV / CSV

    def delimited(self, text: str, suffix: str) -> list[TextExample]:
        # Line numbers count "\n" only (as grep -n, wc -l and the UTF-8 / JSONL errors do), not the csv
        # reader's line_num, which also counts a lone "\r" (one inside a quoted field too).
        newlines = 0  # "\n" in the lines the reader has taken so far

        def lines():
            nonlocal newlines
            for line in io.StringIO(text, newline=""):
                newlines += line.count("\n")
                yield line

        if suffix == ".tsv":
            # GLUE sentences contain bare quotes (`"`), so no quoting at all: one line is one row.
            reader = csv.reader(lines(), delimiter="\t", quoting=csv.QUOTE_NONE)
            sep = "tab"
        else:
            reader = csv.reader(lines(), strict=True)
            sep = "comma"
        header: list[str] | None = None
        examples = []
        while True:
            start = newlines + 1  # a quoted CSV field may span lines: report where the row starts
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                raise DataError(self.path, f"cannot parse the row: {e}", line=start) from None
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # blank line (e.g. at the end of the file)
            if header is None:
                header = self._header(row, start)
                continue
            if len(row) != len(header):
                raise DataError(
                    self.path,
                    f"expected {len(header)} {sep}-separated fields ({', '.join(header)}), got {len(row)}",
                    line=start,
                )
            examples.append(self._row(dict(zip(header, row, strict=True)), start))
        if header is None:
            raise DataError(self.path, "file is empty")
        if not examples:
            raise DataError(self.path, "no rows after the header")
        return examples

    def _header(self, row: list[str], line: int) -> list[str]:
        header = [name.strip() for name in row]
        for column in (self.columns.text, self.columns.text_pair):
            if column and column not in header:
                raise DataError(
                    self.path,
                    f"header must name a {column!r} column, got {row!r} (is the header row missing?)",
                    line=line,
                )
        for name in header:
            if name and header.count(name) > 1:
                raise DataError(self.path, f"column {name!r} appears twice in the header", line=line)
        self._check_label_column(header, line)
        return header

    def _check_label_column(self, names, line: int) -> None:
        """A file without the task's label column is unlabelled, unless it has a column called `label`:
        then the task names the wrong column, and reading the file as unlabelled would hide it."""
        stray = next((n for n in names if n.lower() == "label" and n != self.columns.label), None)
        if self.columns.label not in names and stray:
            raise self._error(
                f"the task's label column is {self.columns.label!r}, which this file lacks, but it has a "
                f"{stray!r} column: name that one in the task file (data.label: {stray})",
                line,
            )

    def _row(self, row: dict[str, str], line: int) -> TextExample:
        c = self.columns
        label = self._label(row[c.label], line) if c.label in row else None
        pair = self._text(row[c.text_pair], line, c.text_pair) if c.text_pair else None
        return TextExample(self._text(row[c.text], line, c.text), label, line, pair)

    # JSONL

    def jsonl(self, text: str) -> list[TextExample]:
        return self.records(iter_jsonl_objects(self.path, text))

    def records(self, numbered) -> list[TextExample]:
        """Examples from (line or row number, object) pairs."""
        c = self.columns
        examples = []
        for number, record in numbered:
            first = self._field(record, c.text, number, fallback="text")
            pair = self._field(record, c.text_pair, number) if c.text_pair else None
            if c.label not in record:
                self._check_label_column(list(record), number)
            label = record.get(c.label)
            examples.append(
                TextExample(first, None if label is None else self._json_label(label, number), number, pair)
            )
        if not examples:
            raise DataError(self.path, "no rows" if self.unit == "row" else "file is empty")
        return examples

    def _field(self, record: dict, column: str, line: int, fallback: str | None = None) -> str:
        key = column if column in record or not fallback else fallback
        if key not in record:
            alt = f" (or {fallback!r})" if fallback and fallback != column else ""
            raise self._error(f"object has no {column!r}{alt} field", line)
        if not isinstance(record[key], str):
            raise self._error(f"{key!r} must be a string, got {type(record[key]).__name__}", line)
        return self._text(record[key], line, column)

    def _json_label(self, label, line: int) -> int:
        # a name, or a number (as a number or a string); bool is an int in Python but not a label here
        if isinstance(label, bool) or not isinstance(label, (int, str)):
            shown = json.dumps(label) if isinstance(label, (bool, float)) else type(label).__name__
            raise self._error(f"label must be {self.labels.rule()}, got {shown}", line)
        return self._label(str(label), line)
