"""Checkpoints marked COMPLETE whose files are missing or damaged: --resume says exactly what is broken and
falls back to the checkpoint before (the two newest are kept), ending with the weights of a run that never
stopped; with none sound left it stops with one clear message. A full disk while saving leaves the checkpoint
before and no temporary folder."""

from __future__ import annotations

import errno
import os
import shutil

import pytest
import torch
from helpers import full_disk
from test_resume import Crash, _cfg, _evaluate, _features, _model, _trainable

from tunelab.errors import UsageError
from tunelab.training import checkpoint, train


@pytest.fixture(scope="module")
def reference(tiny_model_dir, tmp_path_factory):
    model = _model(tiny_model_dir)
    ref = train(
        model,
        _features(),
        _cfg(),
        pad_id=0,
        work_dir=tmp_path_factory.mktemp("ref"),
        evaluate=_evaluate(),
        progress=False,
    )
    return ref, _trainable(model)


@pytest.fixture(scope="module")
def stopped(tiny_model_dir, tmp_path_factory):
    """A run stopped at step 8 (its second evaluation): checkpoints at steps 3 and 6 are kept."""
    work = tmp_path_factory.mktemp("stopped") / "run"
    with pytest.raises(Crash):
        train(
            _model(tiny_model_dir),
            _features(),
            _cfg(),
            pad_id=0,
            work_dir=work,
            evaluate=_evaluate(crash_at=2),
            progress=False,
        )
    assert [p.name for p in checkpoint.complete_checkpoints(work / "checkpoints")] == ["step-6", "step-3"]
    return work


def _crashed(stopped, work):
    """A copy of the stopped run's work folder (each test damages its own)."""
    shutil.copytree(stopped, work)
    return work / "checkpoints"


def _truncate(path):
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)


def _scramble(path):  # same size, other bytes
    data = bytearray(path.read_bytes())
    for i in range(0, len(data), 7):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))


DAMAGE = {
    "model truncated": ("model.safetensors", _truncate, "model.safetensors: "),
    "optimizer missing": ("optimizer.bin", os.unlink, "optimizer.bin: missing"),
    "optimizer scrambled": ("optimizer.bin", _scramble, "optimizer.bin: damaged"),
    "model header scrambled": ("model.safetensors", _scramble, "model.safetensors: damaged"),
    "state not JSON": ("trainer_state.json", _scramble, "trainer_state.json: damaged"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_what_is_broken_in_a_checkpoint_is_named(stopped, tmp_path, damage):
    name, spoil, words = DAMAGE[damage]
    root = _crashed(stopped, tmp_path / "run")
    assert checkpoint.problems(root / "step-6") == []
    spoil(root / "step-6" / name)
    found = checkpoint.problems(root / "step-6")
    assert any(p.startswith(words) for p in found), found
    assert checkpoint.problems(root / "step-3") == []


def test_a_broken_newest_checkpoint_falls_back_to_the_one_before(
    tiny_model_dir, stopped, tmp_path, reference, capsys
):
    root = _crashed(stopped, tmp_path / "run")
    _scramble(root / "step-6" / "optimizer.bin")
    capsys.readouterr()
    model = _model(tiny_model_dir)
    got = train(
        model,
        _features(),
        _cfg(),
        pad_id=0,
        work_dir=tmp_path / "run",
        evaluate=_evaluate(),
        resume=True,
        progress=False,
    )
    out = capsys.readouterr().out
    assert (
        f"the checkpoint {root / 'step-6'} is broken (optimizer.bin: damaged" in out and "resumed from" in out
    )
    assert got.resumed_from == 3
    ref, want = reference
    have = _trainable(model)
    for k in want:
        assert torch.equal(want[k], have[k]), k
    assert got.evals == ref.evals and [e["loss"] for e in got.log] == [e["loss"] for e in ref.log]


def test_a_checkpoint_that_cannot_be_loaded_falls_back(tiny_model_dir, stopped, tmp_path, capsys):
    """Damage the checks do not see (a sound file with the wrong content): loading fails, the one before is
    used."""
    root = _crashed(stopped, tmp_path / "run")
    shutil.copy(root / "step-3" / "rank-0.json", root / "step-6" / "rank-0.json")
    (root / "step-6" / "rank-0.json").write_text('{"rng": {"python": [], "numpy": []}, "running": 0}')
    marker = root / "step-6" / "COMPLETE"
    marker.write_text('{"step": 6}')  # without the size list (as an older tunelab wrote it)
    got = train(
        _model(tiny_model_dir),
        _features(),
        _cfg(),
        pad_id=0,
        work_dir=tmp_path / "run",
        evaluate=_evaluate(),
        resume=True,
        progress=False,
    )
    assert got.resumed_from == 3 and "cannot be loaded" in capsys.readouterr().out


def test_no_sound_checkpoint_left_is_one_clear_error(tiny_model_dir, stopped, tmp_path):
    root = _crashed(stopped, tmp_path / "run")
    (root / "step-6" / "optimizer.bin").unlink()
    _truncate(root / "step-3" / "model.safetensors")
    with pytest.raises(UsageError) as info:
        train(
            _model(tiny_model_dir),
            _features(),
            _cfg(),
            pad_id=0,
            work_dir=tmp_path / "run",
            resume=True,
            progress=False,
        )
    msg = str(info.value)
    assert "cannot resume: no sound checkpoint is left" in msg
    assert "step-6: optimizer.bin: missing" in msg and "step-3: model.safetensors: " in msg
    assert "--overwrite" in msg


def test_a_full_disk_while_saving_keeps_the_checkpoint_before(tiny_model_dir, tmp_path, monkeypatch):
    import safetensors.torch

    full_disk(monkeypatch, safetensors.torch.save_file, fail_at=2)  # the checkpoint at step 6
    work = tmp_path / "run"
    with pytest.raises(OSError) as info:
        train(_model(tiny_model_dir), _features(), _cfg(), pad_id=0, work_dir=work, progress=False)
    assert info.value.errno == errno.ENOSPC
    root = work / "checkpoints"
    assert [p.name for p in root.iterdir()] == ["step-3"]  # no .tmp-step-6 left using the space
    assert checkpoint.problems(root / "step-3") == []
