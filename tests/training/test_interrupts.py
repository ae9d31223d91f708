"""SIGINT and SIGTERM (tunelab.signals): a run stops after the optimizer step in progress, keeps a checkpoint
of that step (with --save-every), says which and that --resume continues from it, leaves nothing half-written,
and exits 130 (SIGINT) or 143 (SIGTERM); resuming gives the weights of a run that was never stopped. A rerun
without --resume refuses to throw the checkpoint away."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from test_resume import (
    _cfg,
    _evaluate,
    _features,
    _model,
    _trainable,
    comparable_log,
    comparable_metrics,
    env,
    finetune_cmd,
    sst2_tsv,
)

from tunelab import signals
from tunelab.training import last_checkpoint, train


def _signal_at_call(n: int, signum: int):
    """A loss function that sends `signum` to this process in its n-th call (inside an optimizer step)."""
    calls = []

    def loss_fn(model, batch):
        calls.append(1)
        if len(calls) == n:
            os.kill(os.getpid(), signum)
        return model(**batch).loss

    return loss_fn


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_inside_a_step_finishes_it_checkpoints_it_and_resume_matches(
    tiny_model_dir, tmp_path, signum
):
    feats, cfg = _features(), _cfg(save_every=4)  # 10 steps of 2 micro-batches; evals at 4 and 8
    model = _model(tiny_model_dir)
    ref = train(model, feats, cfg, pad_id=0, work_dir=tmp_path / "ref", evaluate=_evaluate(), progress=False)
    want = _trainable(model)

    work = tmp_path / "run"
    with signals.handled(), pytest.raises(signals.Interrupted) as stopped:
        # the 11th micro-batch is in step 6: not a checkpoint step, no evaluation due
        train(
            _model(tiny_model_dir),
            feats,
            cfg,
            pad_id=0,
            work_dir=work,
            evaluate=_evaluate(),
            loss_fn=_signal_at_call(11, signum),
            progress=False,
        )
    assert stopped.value.signum == signum and stopped.value.exit_code == 128 + signum
    assert last_checkpoint(work / "checkpoints").name == "step-6"  # the step the signal came in, finished

    model = _model(tiny_model_dir)
    got = train(model, feats, cfg, pad_id=0, work_dir=work, evaluate=_evaluate(), resume=True, progress=False)
    assert got.resumed_from == 6
    have = _trainable(model)
    for k in want:
        assert torch.equal(want[k], have[k]), k
    assert got.evals == ref.evals and got.tokens == ref.tokens
    assert [e["loss"] for e in got.log] == [e["loss"] for e in ref.log]


def test_a_signal_in_a_step_before_an_evaluation_keeps_the_checkpoint_before(tiny_model_dir, tmp_path):
    feats, cfg = _features(), _cfg(save_every=3)  # evals at steps 4 and 8, checkpoints at 3, 6, 9
    work = tmp_path / "run"
    with signals.handled(), pytest.raises(signals.Interrupted):
        train(  # micro-batch 15 is in step 8, which owes an evaluation: abandoned, step-6 kept
            _model(tiny_model_dir),
            feats,
            cfg,
            pad_id=0,
            work_dir=work,
            evaluate=_evaluate(),
            loss_fn=_signal_at_call(15, signal.SIGTERM),
            progress=False,
        )
    assert last_checkpoint(work / "checkpoints").name == "step-6"


def test_a_second_signal_stops_at_once(tiny_model_dir, tmp_path):
    feats, cfg = _features(), _cfg(save_every=3)
    calls = []

    def loss_fn(model, batch):
        calls.append(1)
        if len(calls) == 3:  # in step 2: two signals
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGINT)
        return model(**batch).loss

    work = tmp_path / "run"
    with signals.handled(), pytest.raises(signals.Interrupted) as stopped:
        train(_model(tiny_model_dir), feats, cfg, pad_id=0, work_dir=work, loss_fn=loss_fn, progress=False)
    assert stopped.value.signum == signal.SIGINT and len(calls) == 3  # the step was abandoned
    assert last_checkpoint(work / "checkpoints") is None


# ---- the command line, in a fresh process, signalled from outside at a random moment
# ---------------------------------------------------------


@pytest.fixture(scope="module")
def cli_data(tmp_path_factory):
    d = tmp_path_factory.mktemp("signals-data") / "SST-2"
    d.mkdir()
    (d / "train.tsv").write_text(sst2_tsv(48, 0))
    (d / "dev.tsv").write_text(sst2_tsv(16, 1))
    return d.parent


@pytest.fixture(scope="module")
def reference(tiny_model_dir, cli_data, tmp_path_factory):
    """The run that is never interrupted."""
    ref = tmp_path_factory.mktemp("signals-ref") / "ref"
    done = subprocess.run(
        finetune_cmd(tiny_model_dir, cli_data, ref), env=env(), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return ref


def _wait_for(path: Path, proc: subprocess.Popen, seconds: float = 240) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)


def _same_weights(a: Path, b: Path) -> None:
    from safetensors.torch import load_file

    x, y = load_file(str(a / "adapter_model.safetensors")), load_file(str(b / "adapter_model.safetensors"))
    assert x.keys() == y.keys()
    for k in x:
        assert torch.equal(x[k], y[k]), k


@pytest.mark.parametrize(
    "signum",
    [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)],  # (the same path; SIGINT's is
    ids=["SIGTERM", "SIGINT"],  # also covered fast, in process, above)
)
def test_cli_signalled_at_a_random_moment_then_resumed_matches_uninterrupted(
    tiny_model_dir, cli_data, reference, tmp_path, signum
):
    rng = random.Random()
    # A random moment: after the output folder appears (loading, the first steps), or after a random
    # checkpoint step (between steps, inside one, during a save or an evaluation), plus a random delay.
    after = rng.choice([None, *range(2, 20, 2)])
    delay = rng.uniform(0, 1.5 if after is None else 0.3)
    where = f"{signal.Signals(signum).name} {delay:.2f} s after " + (
        f"checkpoint {after}" if after else "start"
    )

    out = tmp_path / "run"
    partial = tmp_path / "run.partial"
    cmd = finetune_cmd(tiny_model_dir, cli_data, out)
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(partial / "checkpoints" / f"step-{after}" / "COMPLETE" if after else partial, proc)
        time.sleep(delay)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signum, f"{where}: exit {proc.returncode}\n{err[-3000:]}"
    assert "Traceback" not in err and f"tunelab: interrupted by {signal.Signals(signum).name}" in err, where
    assert not out.exists(), where
    assert not (tmp_path / "run.lock").exists(), where
    kept = last_checkpoint(partial / "checkpoints")
    if kept is None:  # stopped before the first checkpoint: nothing left behind
        assert not partial.exists() and "no checkpoint was kept" in err, (where, err)
    else:  # the message names the checkpoint and how to continue; nothing half-written beside it
        assert f"kept the checkpoint {kept}" in err and "--resume" in err, (where, err)
        assert not list((partial / "checkpoints").glob(".tmp-*")), where
        state = json.loads((kept / "trainer_state.json").read_text())
        assert state["step"] == int(kept.name[5:])
        # without --resume the checkpoint is not thrown away
        again = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=300)
        assert again.returncode == 2 and "holds a complete checkpoint" in again.stderr, (where, again.stderr)
        assert last_checkpoint(partial / "checkpoints") == kept
    resumed = subprocess.run(cmd + ["--resume"], env=env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, (where, resumed.stderr[-3000:])
    assert ("resumed from" in resumed.stdout + resumed.stderr) == (kept is not None), where
    _same_weights(reference, out)
    assert comparable_log(out) == comparable_log(reference), where
    assert comparable_metrics(out) == comparable_metrics(reference), where
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"], where
