"""Errors a user can fix. The CLI prints them as one clear message and exits with status 2 (no traceback)."""

from __future__ import annotations


class UsageError(Exception):
    """Bad input: a file, a record, an option. The message names where and what is wrong."""

    exit_code = 2


class DataError(UsageError):
    """A data file that cannot be read as what it claims to be.

    `where` names the file and, when known, the line (TSV/CSV/JSONL) or record id (SQuAD).
    """

    def __init__(self, path, problem: str, *, line: int | None = None, record: str | None = None):
        self.path = str(path)
        self.line = line
        self.record = record
        self.problem = problem
        where = self.path
        if line is not None:
            where += f", line {line}"
        if record is not None:
            where += f", record {record!r}"
        super().__init__(f"{where}: {problem}")


class ModelError(UsageError):
    """A model spec that cannot be resolved or loaded (not a model folder, gated without a token,
    offline…)."""
