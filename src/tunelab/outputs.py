"""Writing and reading results. Output folders are all-or-nothing: work happens in `NAME.partial/`, renamed to
`NAME/` at the end; single files are written beside their place and renamed over it.

A failed or interrupted command leaves no folder that looks finished, and an existing result is never
replaced without --overwrite.

Under `accelerate launch` (several processes) every process enters `atomic_output` and gets the same work
folder, but only the main process creates, clears and renames it; the others wait until it exists. Code inside
should let the main process alone write the final files.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import socket
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tunelab import signals
from tunelab.distributed import distributed_state
from tunelab.errors import UsageError

Inputs = Iterable[tuple[str, "str | os.PathLike | None"]]  # (what it is, path): what a command reads


def partial_dir(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def old_dir(out: Path) -> Path:
    return out.with_name(out.name + ".old")


def _why(path: Path, exc: OSError) -> str:
    """What stops a folder being made: a file where one of its parent folders would be, or the OS's words."""
    for parent in Path(path).parents:
        if parent.exists():
            return f"{parent} is a file, not a folder" if not parent.is_dir() else str(exc.strerror or exc)
    return str(exc.strerror or exc)


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
        (f"{flag} {given}'s {role} {norm.name}{suffix}", _real(norm.with_name(norm.name + suffix)))
        for suffix, role in ((".partial", "work folder"), (".old", "old copy"), (".lock", "lock file"))
    ]
    for what, path in inputs:
        if (
            not isinstance(path, str | os.PathLike)
            or str(path) == ""
            or not os.path.lexists(Path(path).expanduser())
        ):
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


def newest_checkpoint(work: Path) -> Path | None:
    """The newest checkpoint marked COMPLETE in a work folder (see tunelab.training.checkpoint), if any."""
    steps = [
        (int(p.parent.name[5:]), p.parent)
        for p in (Path(work) / "checkpoints").glob("step-*/COMPLETE")
        if p.parent.name[5:].isdigit()
    ]
    return max(steps, default=(None, None))[1]


def has_resumable_checkpoint(work: Path) -> bool:
    """Whether a work folder holds a complete training checkpoint (see tunelab.training)."""
    return newest_checkpoint(work) is not None


FULL_DISK_WORDS = (  # what a full disk looks like when a library reports it in a message of its own
    "No space left on device",
    "StorageFull",  # safetensors (Rust's io::ErrorKind)
    "file write failed",  # torch.save (PyTorchStreamWriter)
    "unexpected pos",  # torch.save: inline_container.cc, a short write
)


def full_disk(exc: BaseException) -> OSError | BaseException | None:
    """The error in exc's chain that says the disk (or quota) is full, if any."""
    seen = set()
    while exc is not None and id(exc) not in seen and not isinstance(exc, UsageError):  # (already clear)
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return exc
        if not isinstance(exc, OSError) and any(w in str(exc) for w in FULL_DISK_WORDS):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def newest_file(folder: Path) -> Path | None:
    """The file modified last under a folder (None when it holds none)."""
    files = [p for p in Path(folder).rglob("*") if p.is_file()] if Path(folder).is_dir() else []
    return max(files, key=lambda p: p.stat().st_mtime_ns) if files else None


def _size(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _full_disk_error(exc: BaseException, work: Path, out: Path) -> UsageError | None:
    """One clear message for a full disk: which file was being written, the free space, what is kept."""
    cause = full_disk(exc)
    if cause is None:
        return None
    written = getattr(cause, "filename", None)
    if not written:  # torch and safetensors do not say which file: name the one written last
        last = newest_file(work)
        written = f"{last.parent} (the file written last: {last.name})" if last else work
    place = next((p for p in work.parents if p.exists()), Path("/"))
    free = _size(shutil.disk_usage(place).free)
    unchanged = f"; {out} is unchanged" if out.exists() else ""
    return UsageError(
        f"no space left on the device while writing {written} ({free} free on the file system of "
        f"{place}){unchanged}: free some space (or choose an --out on another disk) and run again"
    )


def _what_was_kept(
    exc: BaseException, work: Path, keep_partial: bool | Callable[[Path], bool], resume: bool
) -> None:
    """Say, on the exception (a note the CLI prints), what a failed or interrupted run left behind."""
    if callable(keep_partial):  # a folder of several runs (finetune --seeds)
        if keep_partial(work):
            how = "run the same command again" if resume else "run the same command with --resume"
            exc.add_note(f"kept the finished runs in {work}: {how} to continue with the rest")
        return
    ckpt = newest_checkpoint(work) if keep_partial else None
    if ckpt is not None:
        how = "run the same command again" if resume else "run the same command with --resume"
        exc.add_note(f"kept the checkpoint {ckpt} (step {ckpt.name[5:]}): {how} to continue from it")
    elif keep_partial:
        exc.add_note("no checkpoint was kept (none was complete yet; --save-every N saves one every N steps)")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def lock_path(out: Path) -> Path:
    return out.with_name(out.name + ".lock")


def _holder(fd: int) -> str:
    """Who holds a lock, from what it wrote into the lock file."""
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
        return f"pid {info['pid']} on {info['host']}, started {info['started']}: `{info['command']}`"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not yet said who it is"


def _take_lock(lock: Path, out: Path) -> int | None:
    """An open descriptor holding an exclusive flock on `lock` (None where the file system has no locks).
    The holder may remove the file between our open and our flock, and a third process create a new one:
    the lock counts only if the path still names the file we locked."""
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise UsageError(
                f"{out} is being written by another "
                f"tunelab run ({holder}); wait for it to end or choose another --out (lock file: {lock})"
            ) from None
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                print(
                    f"tunelab: warning: {lock}: this file system has no file locks ({exc.strerror}); "
                    "nothing stops two runs writing the same --out",
                    file=sys.stderr,
                )
                return None
            raise
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(lock))
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


@contextmanager
def output_lock(out: str | Path) -> Iterator[None]:
    """Hold OUT.lock (beside OUT) for the block, so that no two runs write one output folder. The lock is a
    kernel flock, hand-written rather than `filelock` because the refusal names the holder (pid, host, start
    time, command), which it writes into the file. It ends with the process however that ends, so the file a
    killed run leaves behind is stale and simply taken over; it is removed on a normal exit."""
    out = Path(out)
    lock = lock_path(out)
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        fd = _take_lock(lock, out)
    except OSError as exc:
        if full_disk(exc) is not None:
            raise
        raise UsageError(f"cannot create the output folder {out}: {_why(out, exc)}") from None
    if fd is not None:
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": " ".join(["tunelab", *sys.argv[1:]]),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode("utf-8"), 0)
    try:
        yield
    finally:
        if fd is not None:
            try:
                os.unlink(lock)  # while still holding it (see _take_lock)
            except FileNotFoundError:
                pass
            os.close(fd)


@contextmanager
def atomic_output(
    out: str | Path,
    *,
    overwrite: bool = False,
    keep_partial: bool | Callable[[Path], bool] = False,
    resume: bool = False,
    inputs: Inputs = (),
) -> Iterator[Path]:
    """Yield a work folder; on success it becomes `out`. On failure it is removed, unless keep_partial and it
    holds a complete training checkpoint (so `--resume` can continue from it; a failure before the first
    checkpoint leaves nothing behind). Without `resume`, a partial folder left by an earlier run is cleared
    first. An existing `out` is refused unless overwrite, and then replaced only once the new one is done.
    `keep_partial` may instead be a test of the work folder (a folder of several runs keeps finished ones).
    An `out` that could destroy one of `inputs` is refused (check_apart), with or without overwrite; one
    that another run is writing is refused too (output_lock, held until the end)."""
    check_apart(out, inputs)
    out = Path(os.path.normpath(Path(out).expanduser()))
    state = distributed_state()
    main = state is None or state.is_main_process
    work = partial_dir(out)
    with ExitStack() as held:
        problem = None
        if main:  # the lock, the existing OUT, an earlier run's work folder
            try:
                held.enter_context(output_lock(out))
                if out.exists() and not overwrite:
                    raise UsageError(f"{out} already exists: choose another --out or pass --overwrite")
                old = old_dir(out)
                if (out.exists() or out.is_symlink()) and (old.exists() or old.is_symlink()):
                    raise UsageError(
                        f"{old} already exists: --overwrite moves {out.name} aside there until the new one "
                        "is in, and would lose it; move or rename it first"
                    )
                _prepare(work, overwrite, resume, keep_partial)
            except Exception as exc:  # (told to the other processes before it is raised: none waits alone)
                problem = exc
        if state is not None:  # every process stops when the main one cannot go on (none waits alone)
            from accelerate.utils import broadcast_object_list

            said = broadcast_object_list([str(problem) if problem else None], from_process=0)[0]
            problem = problem or (UsageError(said) if said else None)
        if problem is not None:
            raise problem
        yield from _written(out, work, main, keep_partial, resume)


def _keeps(keep_partial: bool | Callable[[Path], bool], work: Path) -> bool:
    return keep_partial(work) if callable(keep_partial) else keep_partial and has_resumable_checkpoint(work)


def _written(
    out: Path, work: Path, main: bool, keep_partial: bool | Callable[[Path], bool], resume: bool
) -> Iterator[Path]:
    try:
        yield work
    except BaseException as exc:
        if not main:
            raise
        full = _full_disk_error(exc, work, out)  # (before the clean-up: it names the file written last)
        if not _keeps(keep_partial, work):
            shutil.rmtree(work, ignore_errors=True)
        # (a usage error loses no progress, except in a folder of several runs: say which were kept)
        if full is not None or not isinstance(exc, UsageError) or callable(keep_partial):
            _what_was_kept(full or exc, work, keep_partial, resume)
        if full is not None:
            raise full from None
        raise
    if main:
        with signals.deferred():  # a signal here would leave OUT moved aside and the new one not yet in
            _publish(out, work)


def _prepare(
    work: Path, overwrite: bool, resume: bool, keep_partial: bool | Callable[[Path], bool] = False
) -> None:
    """Clear an earlier run's work folder (unless resuming), never silently discarding a checkpoint or the
    finished runs of a folder of several (keep_partial callable)."""
    earlier = not resume and not overwrite and work.is_dir()
    ckpt = newest_checkpoint(work) if earlier else None
    if ckpt is not None:
        raise UsageError(
            f"{work} holds a complete checkpoint from an interrupted run ({ckpt.name}): run the same "
            "command with --resume to continue from it, or pass --overwrite to discard it and start over"
        )
    if earlier and callable(keep_partial) and keep_partial(work):
        raise UsageError(
            f"{work} holds finished runs of an interrupted command: run the same command with --resume to "
            "continue with the rest, or pass --overwrite to discard them and start over"
        )
    try:
        if (work.exists() or work.is_symlink()) and not resume:
            _remove(work)
        work.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create the output folder {work}: {_why(work, exc)}") from None


def _publish(out: Path, work: Path) -> None:
    """`work` becomes `out`; an existing `out` (--overwrite) moves aside to OUT.old until the new one is in,
    then goes. Only an OUT.old made here is removed: one that was there (a user's backup) is never touched
    (atomic_output refuses to start an overwrite that would need its name)."""
    old = old_dir(out)
    moved = out.exists() or out.is_symlink()
    if moved:
        os.replace(out, old)
    os.replace(work, out)
    if moved:
        _remove(old)


def write_text(path: Path, text: str) -> None:
    """Write a file in one step: a temporary file beside it, renamed over it (readers never see half a
    file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        if tmp.is_dir():  # not ours: a folder where the temporary file goes
            raise UsageError(f"{tmp}: is a folder, so {path.name} cannot be written beside it") from None
        tmp.unlink(missing_ok=True)
        if isinstance(exc, IsADirectoryError) and path.is_dir():
            raise UsageError(f"{path}: is a folder, so the file cannot be written there") from None
        raise


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def read_json(path: Path, what: str = "it", *, error: type[UsageError] = UsageError) -> dict:
    """A JSON file holding an object (every JSON file tunelab writes and reads back does); a UsageError (or
    `error`) names the file when it cannot be read or parsed, or holds something else."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise error(f"{path}: cannot read {what}: {exc}") from None
    if not isinstance(doc, dict):
        raise error(f"{path}: expected a JSON object, got {type(doc).__name__}")
    return doc


def read_jsonl(path: Path) -> list[dict]:
    """The objects of a JSON-lines file written by tunelab (blank lines skipped)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UsageError(f"{path}: not JSON lines: {exc}") from None
