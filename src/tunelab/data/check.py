"""`tunelab data check`: read a data file fully (so every problem surfaces) and summarise it."""

from __future__ import annotations

from .folder import read_any
from .squad import summarize_squad
from .sst2 import summarize_sst2


def check_file(path) -> dict:
    """Read and validate `path`; a dict with "task", "file" and the counts. Problems raise DataError."""
    task, examples = read_any(path)
    summary = summarize_squad(examples) if task == "squad" else summarize_sst2(examples)
    return {"task": task, "file": str(path), **summary}


def format_summary(summary: dict) -> str:
    """One line of text for a `check_file` summary."""
    if summary["task"] == "squad":
        return (
            f"{summary['file']}: SQuAD v{summary['version']}, {summary['articles']:,} articles, "
            f"{summary['paragraphs']:,} distinct paragraphs, {summary['questions']:,} questions, "
            f"{summary['unanswerable']:,} unanswerable"
        )
    labels = summary["labels"]
    if summary["labelled"] == 0:
        counts = "no labels"
    else:
        counts = f"labels 0/1: {labels['0']:,} / {labels['1']:,}"
        if summary["labelled"] < summary["rows"]:
            counts += f" ({summary['rows'] - summary['labelled']:,} unlabelled)"
    return f"{summary['file']}: SST-2, {summary['rows']:,} rows, {counts}"
