"""Writing and reading results. Output folders are all-or-nothing: work happens in `NAME.partial/`, renamed to
`NAME/` at the end; single files are written beside their place and renamed over it.

A failed or interrupted command leaves no folder that looks finished, and an existing result is never
replaced without --overwrite.

Under `accelerate launch` (several processes) every process enters `atomic_output` and gets the same work
folder, but only the main process creates, clears and renames it; the others wait until it exists. Code inside
should let the main process alone write the final files.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tunelab.distributed import distributed_state
from tunelab.errors import UsageError

Inputs = Iterable[tuple[str, "str | os.PathLike | None"]]  # (what it is, path): what a command reads


def partial_dir(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def _real(path: str | os.PathLike) -> Path:
    """The path with `~`, `..` and every symlink resolved (the path need not exist)."""
    return Path(os.path.realpath(Path(path).expanduser()))


def _shown(path: str | os.PathLike) -> str:
    real = str(_real(path))
    return str(path) if os.path.abspath(Path(path).expanduser()) == real else f"{path} (= {real})"


def check_apart(out: str | os.PathLike, inputs: Inputs = (), *, flag: str = "--out") -> None:
    """Refuse an output folder that could destroy what the command reads or where it runs: `out` (or its
    OUT.partial / OUT.old / OUT.lock companions) equal to, or containing, an input; `out` inside an input
    folder; `out` the current folder or one above it. Paths are compared with symlinks resolved.
    (--overwrite replaces OUT as a whole, so any of these would delete the input.)"""
    given = Path(out)
    norm = Path(os.path.normpath(given.expanduser()))
    target = _real(given)
    cwd = Path.cwd().resolve()
    if target == cwd or target in cwd.parents:
        where = "the current folder" if target == cwd else "a folder above the current one"
        raise UsageError(
            f"{flag} {_shown(given)} is {where}: an output folder is written and replaced as a whole, so "
            f"choose a new folder for it (e.g. {flag} runs/NAME)"
        )
    companions = [(f"{flag} {_shown(given)}", target)] + [
        (f"{flag} {given}'s work folder {norm.name}{suffix}", _real(norm.with_name(norm.name + suffix)))
        for suffix in (".partial", ".old", ".lock")
    ]
    for what, path in inputs:
        if path is None or str(path) == "" or not os.path.lexists(Path(path).expanduser()):
            continue  # (a Hub id, or a description rather than a path: nothing here to destroy)
        real = _real(path)
        for name, place in companions:
            if place == real:
                relation = "is"
            elif place in real.parents:
                relation = "contains"
            elif real in place.parents and place == target:
                relation = "lies inside"
            else:
                continue
            raise UsageError(
                f"{name} {relation} the {what} {_shown(path)}, an input of this command: writing there "
                f"could destroy it; choose an {flag} outside every input (and not containing one)"
            )


def has_resumable_checkpoint(work: Path) -> bool:
    """Whether a work folder holds a complete training checkpoint (see tunelab.training)."""
    return any((work / "checkpoints").glob("step-*/COMPLETE"))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


@contextmanager
def atomic_output(
    out: str | Path,
    *,
    overwrite: bool = False,
    keep_partial: bool = False,
    resume: bool = False,
    inputs: Inputs = (),
) -> Iterator[Path]:
    """Yield a work folder; on success it becomes `out`. On failure it is removed, unless keep_partial and it
    holds a complete training checkpoint (so `--resume` can continue from it; a failure before the first
    checkpoint leaves nothing behind). Without `resume`, a partial folder left by an earlier run is cleared
    first. An existing `out` is refused unless overwrite, and then replaced only once the new one is done.
    An `out` that could destroy one of `inputs` is refused (check_apart), with or without overwrite."""
    check_apart(out, inputs)
    out = Path(os.path.normpath(Path(out).expanduser()))
    if out.exists() and not overwrite:
        raise UsageError(f"{out} already exists: choose another --out or pass --overwrite")
    state = distributed_state()
    main = state is None or state.is_main_process
    work = partial_dir(out)
    if main:
        try:
            if (work.exists() or work.is_symlink()) and not resume:
                _remove(work)
            work.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"cannot create the output folder {work}: {exc.strerror or exc}") from None
    if state is not None:
        state.wait_for_everyone()
    try:
        yield work
    except BaseException:
        if main and not (keep_partial and has_resumable_checkpoint(work)):
            shutil.rmtree(work, ignore_errors=True)
        raise
    if not main:
        return
    old = out.with_name(out.name + ".old")
    if (
        out.exists() or out.is_symlink()
    ):  # --overwrite: move the old result aside until the new one is in place
        if old.exists() or old.is_symlink():
            _remove(old)
        os.replace(out, old)
    os.replace(work, out)
    if old.exists() or old.is_symlink():
        _remove(old)


def write_text(path: Path, text: str) -> None:
    """Write a file in one step: a temporary file beside it, renamed over it (readers never see half a
    file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def read_json(path: Path, what: str = "it", *, error: type[UsageError] = UsageError) -> Any:
    """A JSON file's content; a UsageError (or `error`) names the file when it cannot be read or parsed."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise error(f"{path}: cannot read {what}: {exc}") from None


def read_jsonl(path: Path) -> list[dict]:
    """The objects of a JSON-lines file written by tunelab (blank lines skipped)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UsageError(f"{path}: not JSON lines: {exc}") from None
