"""Checkpoints for `--resume`: written atomically and durably, found again, and checked against the run that
wants to resume from them.

Every `save_every` steps the model, optimizer, LR schedule, every process's RNG states (Python, NumPy, torch
CPU and CUDA), the data position, the running loss and the log so far go into `work_dir/checkpoints/step-N`,
written in a temporary folder, flushed to disk, marked COMPLETE and renamed. COMPLETE lists every file with
its size; the two newest complete checkpoints are kept, so that one found broken (`problems`) when resuming
falls back to the one before.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import os
import random
import shutil
import zipfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from tunelab.errors import UsageError
from tunelab.options import NOT_TRAINING, SPEED_OPTIONS, TrainConfig
from tunelab.outputs import full_disk, newest_file

KEEP = 2  # complete checkpoints kept: a broken newest one falls back to the one before


def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode("ascii")


def _unb64(s: str) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(base64.b64decode(s), dtype=np.uint8).copy())


def rng_state() -> dict:
    """Python, NumPy, torch CPU and CUDA generator states as plain JSON (no pickle to load back)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": _b64(torch.get_rng_state()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(_unb64(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_unb64(s) for s in state["cuda"]])


def _write_json_durably(path: Path, obj) -> None:
    with open(path, "w") as f:
        f.write(json.dumps(obj))
        f.flush()
        os.fsync(f.fileno())


def _fsync_tree(root: Path) -> None:
    """Flush every file under root and the folders themselves, so a rename after this publishes data that is
    on disk (a power cut cannot leave a COMPLETE checkpoint with empty files)."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems do not fsync folders
    finally:
        os.close(fd)


def save(accelerator, ckpt_root: Path, step: int, shared: dict, own: dict) -> None:
    """Save into a temporary folder, flush it, write COMPLETE last, then rename: a crash mid-save never leaves
    a checkpoint that looks complete, and a failed save (a full disk) leaves no temporary folder behind.
    `shared` (trainer_state.json) is the main process's; `own` (rank-R.json: RNG states, running loss) is
    each process's."""
    tmp = ckpt_root / f".tmp-step-{step}"
    if accelerator.is_main_process:
        ckpt_root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():  # left by a save that was killed
            shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(tmp), safe_serialization=True)
        tmp.mkdir(parents=True, exist_ok=True)
        _write_json_durably(tmp / f"rank-{accelerator.process_index}.json", own)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            _write_json_durably(tmp / "trainer_state.json", {"step": step, **shared})
            _fsync_tree(tmp)
            _write_json_durably(tmp / "COMPLETE", {"step": step, "files": _sizes(tmp)})
            _fsync_dir(tmp)
            final = ckpt_root / f"step-{step}"
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            _fsync_dir(ckpt_root)
            _prune(ckpt_root)
    except BaseException as exc:
        if not accelerator.is_main_process:
            raise
        last = newest_file(tmp)
        shutil.rmtree(tmp, ignore_errors=True)
        if full_disk(exc) is not None and last is not None:  # name the file (torch's error does not)
            raise OSError(
                errno.ENOSPC, os.strerror(errno.ENOSPC), f"{last} (checkpoint step {step})"
            ) from exc
        raise
    accelerator.wait_for_everyone()


def _sizes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}


def _prune(ckpt_root: Path) -> None:
    """Keep the KEEP newest complete checkpoints; remove the others, half-written ones, `.tmp-*` leftovers."""
    keep = set(complete_checkpoints(ckpt_root)[:KEEP])
    for old in list(ckpt_root.glob("step-*")) + list(ckpt_root.glob(".tmp-step-*")):
        if old not in keep:
            shutil.rmtree(old, ignore_errors=True)


def complete_checkpoints(ckpt_root: Path) -> list[Path]:
    """The checkpoints marked COMPLETE, newest first (folders without the marker are half-written)."""
    done = []
    for p in Path(ckpt_root).glob("step-*"):
        suffix = p.name.split("-", 1)[1]
        if suffix.isdigit() and (p / "COMPLETE").is_file() and (p / "trainer_state.json").is_file():
            done.append((int(suffix), p))
    return [p for _, p in sorted(done, reverse=True)]


def last_checkpoint(ckpt_root: Path) -> Path | None:
    """The newest checkpoint marked COMPLETE (folders without the marker are half-written and ignored)."""
    done = complete_checkpoints(ckpt_root)
    return done[0] if done else None


def problems(ckpt: Path) -> list[str]:
    """What is wrong with a checkpoint marked COMPLETE, file by file (empty: nothing found): files missing or
    of another size than written, JSON that does not parse, torch files whose zip CRCs fail, safetensors
    files whose header does not parse. (A flipped bit inside a safetensors tensor is not detected.)"""
    try:
        marker = json.loads((ckpt / "COMPLETE").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return [f"COMPLETE: unreadable ({exc})"]
    found = []
    for name, size in (marker.get("files") or {}).items() if isinstance(marker, dict) else ():
        path = ckpt / name
        if not path.is_file():
            found.append(f"{name}: missing")
        elif path.stat().st_size != size:
            found.append(f"{name}: {path.stat().st_size} bytes, {size} were written")
    if found:
        return found
    for path in sorted(ckpt.rglob("*")):
        why = _damage(path) if path.is_file() else None
        if why:
            found.append(f"{path.relative_to(ckpt)}: {why}")
    return found


def _damage(path: Path) -> str | None:
    try:
        if path.suffix == ".json":
            json.loads(path.read_text(encoding="utf-8"))
        elif path.suffix in (".bin", ".pt", ".pth") and zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                bad = z.testzip()  # every member's CRC
            if bad is not None:
                return f"damaged (CRC of {bad} fails)"
        elif path.suffix in (".bin", ".pt", ".pth"):
            return "damaged (not a torch zip file)"
        elif path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                f.keys()
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        return f"damaged ({exc})"
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error type
        return f"damaged ({type(exc).__name__}: {exc})"
    return None


DATA_DIGEST = 2  # 2: every token; 1 (checkpoints without `data_digest`): each feature's first and last 8


def fingerprint(cfg: TrainConfig, feats: list[dict], world: int, digest: int = DATA_DIGEST) -> dict:
    """What a checkpoint must agree on to be resumed: the training options, the number of processes and the
    training data (a digest of every feature's tokens and label keys; a word changed mid-sentence counts).
    `digest` 1: as checkpoints of earlier versions computed it, to resume those."""
    h = hashlib.sha256()
    for f in feats:
        ids = f["input_ids"]
        rest = [(k, v) for k, v in sorted(f.items()) if k not in ("input_ids", "attention_mask")]
        if digest == 1:
            h.update(repr((len(ids), ids[:8], ids[-8:], rest)).encode())
            continue
        h.update(repr((len(ids), rest)).encode())
        h.update(np.asarray(ids, dtype=np.int64).tobytes())
    options = {k: v for k, v in asdict(cfg).items() if k not in NOT_TRAINING + SPEED_OPTIONS}
    fp = {"options": options, "processes": world, "examples": len(feats), "data_sha256": h.hexdigest()}
    if digest != 1:
        fp["data_digest"] = digest
    return json.loads(json.dumps(fp))  # as it reads back from trainer_state.json (tuples become lists)


def fingerprint_changes(saved: dict, now: dict) -> str | None:
    """What differs between a checkpoint's fingerprint and this run's, or None."""
    if saved == now:
        return None
    diffs = []
    for key in ("processes", "examples", "data_sha256"):
        if saved.get(key) != now[key]:
            diffs.append(
                f"{key} {saved.get(key)!r} -> {now[key]!r}" if key != "data_sha256" else "training data"
            )
    old = saved.get("options", {})
    diffs += [f"{k} {old.get(k)!r} -> {v!r}" for k, v in now["options"].items() if old.get(k) != v]
    return "; ".join(diffs) or "the fingerprint"


def check_fingerprint(ckpt: Path, saved: dict, now: dict) -> None:
    changes = fingerprint_changes(saved, now)
    if changes is not None:
        raise UsageError(
            f"{ckpt}: cannot resume: this checkpoint was written by a run with other settings ({changes}). "
            "Resume with the original settings, or start over with --overwrite instead of --resume."
        )
