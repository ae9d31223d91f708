"""Output folders that are all-or-nothing: work happens in `NAME.partial/`, renamed to `NAME/` at the end.

A failed or interrupted command leaves no folder that looks finished, and an existing result is never
replaced without --overwrite.
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

from tunelab.errors import UsageError


def partial_dir(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


@contextmanager
def atomic_output(out: str | Path, *, overwrite: bool = False, keep_partial: bool = False, resume: bool = False):
    """Yield a work folder; on success it becomes `out`. On failure it is removed unless keep_partial
    (training keeps it, so `--resume` can continue from its checkpoints). Without `resume`, a partial folder
    left by an earlier run is cleared first."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise UsageError(f"{out} already exists: choose another --out or pass --overwrite")
    work = partial_dir(out)
    if work.exists() and not resume:
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    try:
        yield work
    except BaseException:
        if not keep_partial:
            shutil.rmtree(work, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    os.replace(work, out)


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_jsonl(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
