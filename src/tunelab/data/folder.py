"""Where the data lives: the data folder, the file for a task and split, and reading any data file."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import DataError, UsageError
from .squad import read_squad
from .sst2 import read_sst2

ENV_VAR = "TUNELAB_DATA_DIR"
SST2_SPLITS = ("train", "dev", "test")
SQUAD_SPLITS = ("train", "dev")
SQUAD_VERSIONS = ("1.1", "2.0")


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path:
    """The data folder: the argument, else $TUNELAB_DATA_DIR; it must exist."""
    chosen = data_dir if data_dir not in (None, "") else os.environ.get(ENV_VAR) or None
    if chosen is None:
        raise UsageError(
            f"no data folder: pass --data-dir DIR or set {ENV_VAR}=DIR "
            "(a folder holding SST-2/{train,dev,test}.tsv and/or squad/v1.1-dev.json etc.)"
        )
    path = Path(chosen).expanduser()
    if not path.is_dir():
        source = "--data-dir" if data_dir not in (None, "") else ENV_VAR
        raise UsageError(f"data folder {str(path)!r} (from {source}) does not exist or is not a folder")
    return path


def _split(split: str, allowed: tuple[str, ...]) -> str:
    split = "dev" if split == "validation" else split
    if split not in allowed:
        raise UsageError(f"unknown split {split!r}: expected {', '.join(allowed)} (validation means dev)")
    return split


def _first_existing(what: str, candidates: list[Path]) -> Path:
    for path in candidates:
        if path.is_file():
            return path
    tried = "\n  ".join(str(p) for p in candidates)
    raise UsageError(f"no {what} file found; tried:\n  {tried}")


def sst2_path(data_dir, split: str) -> Path:
    """The SST-2 TSV for split train, dev (alias validation) or test: SST-2/ or sst2/{split}.tsv."""
    root = resolve_data_dir(data_dir)
    split = _split(split, SST2_SPLITS)
    return _first_existing(
        f"SST-2 {split}", [root / "SST-2" / f"{split}.tsv", root / "sst2" / f"{split}.tsv"]
    )


def squad_path(data_dir, version: str, split: str) -> Path:
    """The SQuAD JSON for version 1.1/2.0 and split train/dev: this project's layout or the official names."""
    root = resolve_data_dir(data_dir)
    version = str(version).lstrip("v")
    if version not in SQUAD_VERSIONS:
        raise UsageError(f"unknown SQuAD version {version!r}: expected 1.1 or 2.0")
    split = _split(split, SQUAD_SPLITS)
    candidates = [
        root / "squad" / f"v{version}-{split}.json",  # this project's layout
        root / "squad" / f"{split}-v{version}.json",  # official names, e.g. dev-v1.1.json
        root / f"{split}-v{version}.json",
    ]
    return _first_existing(f"SQuAD v{version} {split}", candidates)


def read_any(path) -> tuple[str, list]:
    """Read a data file, telling the task from its suffix: .json is SQuAD, .tsv/.csv/.jsonl are SST-2."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".json":
        return "squad", read_squad(path)  # read_squad says so when there is no top-level "data"
    if suffix in (".tsv", ".csv", ".jsonl"):
        return "sst2", read_sst2(path)
    if not path.exists():
        raise DataError(path, "file not found")
    raise DataError(
        path,
        f"unknown data file type {suffix or '(no suffix)'!r}: "
        "expected .json (SQuAD) or .tsv/.csv/.jsonl (SST-2)",
    )
