"""Where the data lives: the data folder (--data-dir, a study's data_dir or $TUNELAB_DATA_DIR) and the first
of a split's candidate files that exists."""

from __future__ import annotations

import os
from pathlib import Path

from tunelab.errors import UsageError

ENV_VAR = "TUNELAB_DATA_DIR"


def resolve_data_dir(data_dir: str | os.PathLike | None, given_as: str = "--data-dir DIR") -> Path:
    """The data folder: the argument, else $TUNELAB_DATA_DIR; it must exist. `given_as`: how the argument is
    given (a flag; a study's config key), for messages."""
    chosen = data_dir if data_dir not in (None, "") else os.environ.get(ENV_VAR) or None
    if chosen is None:
        raise UsageError(
            f"no data folder: give {given_as} or set {ENV_VAR}=DIR "
            "(a folder holding SST-2/{train,dev,test}.tsv and/or squad/v1.1-dev.json etc.)"
        )
    path = Path(chosen).expanduser()
    if not path.is_dir():
        source = given_as.split()[0].rstrip(":") if data_dir not in (None, "") else ENV_VAR
        raise UsageError(f"data folder {str(path)!r} (from {source}) does not exist or is not a folder")
    return path


def split_name(split: str, allowed: tuple[str, ...]) -> str:
    """A split name as the task calls it (`validation` means dev)."""
    split = "dev" if split == "validation" else split
    if split not in allowed:
        raise UsageError(f"unknown split {split!r}: expected {', '.join(allowed)} (validation means dev)")
    return split


def first_existing(what: str, candidates: list[Path]) -> Path:
    from tunelab.data.text import not_regular

    for path in candidates:
        if path.is_file():
            return path
        if path.exists() and not path.is_dir():  # a FIFO, a device: say so rather than "not found"
            raise UsageError(f"{path}: the {what} file {not_regular(path, path.stat().st_mode)}")
    tried = "\n  ".join(str(p) for p in candidates)
    raise UsageError(f"no {what} file found; tried:\n  {tried}")
