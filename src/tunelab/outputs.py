"""Output folders that are all-or-nothing: work happens in `NAME.partial/`, renamed to `NAME/` at the end.

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
from contextlib import contextmanager
from pathlib import Path

from tunelab.errors import UsageError


def partial_dir(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def distributed_state():
    """accelerate's PartialState when this is one of several processes (accelerate launch, torchrun), else None.
    Creating it joins the process group, which the training Accelerator then reuses."""
    world = launched_processes()
    if world <= 1:
        return None
    import torch
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    # Without a GPU, accelerate only joins the processes together when told to use the CPU.
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available())
    check_joined(state.num_processes, world)
    return state


def launched_processes() -> int:
    """How many processes the launcher (accelerate launch, torchrun) started: $WORLD_SIZE, else 1."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1") or "1"))
    except ValueError:
        raise UsageError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not a number of processes") from None


def check_joined(joined: int, world: int) -> None:
    """Refuse to go on as `world` unconnected copies (each would train alone and write the same folder)."""
    if joined != world:
        raise UsageError(
            f"started as {world} processes (WORLD_SIZE) but accelerate joined {joined}: check the launch "
            "command and accelerate config (see configs/accelerate/); on CPUs set ACCELERATE_USE_CPU=1"
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
def atomic_output(out: str | Path, *, overwrite: bool = False, keep_partial: bool = False, resume: bool = False):
    """Yield a work folder; on success it becomes `out`. On failure it is removed, unless keep_partial and it
    holds a complete training checkpoint (so `--resume` can continue from it; a failure before the first
    checkpoint leaves nothing behind). Without `resume`, a partial folder left by an earlier run is cleared
    first. An existing `out` is refused unless overwrite, and then replaced only once the new one is done."""
    out = Path(out)
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
    if out.exists() or out.is_symlink():  # --overwrite: move the old result aside until the new one is in place
        if old.exists() or old.is_symlink():
            _remove(old)
        os.replace(out, old)
    os.replace(work, out)
    if old.exists() or old.is_symlink():
        _remove(old)


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_jsonl(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
