"""Checkpoints and `--resume`: a fine-tuning run killed with SIGKILL at a random step and resumed ends with
the same weights, log and metrics as an uninterrupted run; half-written checkpoints are never used."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tunelab.errors import UsageError
from tunelab.training import TrainConfig, last_checkpoint, train

# The CLI in a fresh interpreter. torch's generator starts from a random seed in every process, and the runs
# initialise the new head and the LoRA matrices before `train` seeds it, so the launcher seeds torch first to
# give every run the same initial model (see docs/reliability.md).
LAUNCH = (
    "import sys, torch; torch.manual_seed(1234); from tunelab.cli import main; sys.exit(main(sys.argv[1:]))"
)


def sst2_tsv(n: int, seed: int) -> str:
    """A learnable SST-2-like file: the label is which word the sentence holds."""
    rng = np.random.default_rng(seed)
    fill = ["a", "film", "movie", "the", "and", "truly", "review"]
    rows = ["sentence\tlabel"]
    for i in range(n):
        words = list(rng.choice(fill, size=int(rng.integers(2, 8))))
        words.insert(int(rng.integers(0, len(words) + 1)), "great" if i % 2 else "awful")
        rows.append(f"{' '.join(words)}\t{i % 2}")
    return "\n".join(rows) + "\n"


@pytest.fixture
def data_dir(tmp_path):
    d = tmp_path / "data" / "SST-2"
    d.mkdir(parents=True)
    (d / "train.tsv").write_text(sst2_tsv(48, 0))
    (d / "dev.tsv").write_text(sst2_tsv(16, 1))
    return d.parent


def finetune_cmd(model_dir: str, data_dir: Path, out: Path, *extra: str) -> list[str]:
    # LoRA with dropout, so the RNG states must be restored; warm-up + linear decay, so must the schedule;
    # log and eval at steps that are not checkpoint steps, so must the running loss and the evals so far.
    return [
        sys.executable,
        "-c",
        LAUNCH,
        "finetune",
        model_dir,
        "--task",
        "sst2",
        "--data-dir",
        str(data_dir),
        "--out",
        str(out),
        "--method",
        "lora",
        "--lora-r",
        "4",
        "--lora-alpha",
        "8",
        "--lora-dropout",
        "0.1",
        "--batch-size",
        "4",
        "--grad-accum",
        "1",
        "--epochs",
        "2",
        "--learning-rate",
        "3e-3",
        "--warmup-ratio",
        "0.1",
        "--max-length",
        "32",
        "--log-every",
        "3",
        "--eval-every",
        "5",
        "--save-every",
        "2",
        "--input-prompt",
        "none",
        "--seed",
        "7",
        *extra,
    ]


def env() -> dict:
    e = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="2")
    e.pop("WORLD_SIZE", None)
    return e


def comparable_metrics(out: Path) -> dict:
    m = json.loads((out / "eval" / "metrics.json").read_text())
    for key in ("train_seconds", "eval_seconds", "model"):  # wall-clock times and the output path differ
        m.pop(key)
    return m


def comparable_log(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    for r in rows:
        r.pop("tokens_per_s")
    return rows


def test_sigkill_at_a_random_step_then_resume_matches_uninterrupted(tiny_model_dir, data_dir, tmp_path):
    from safetensors.torch import load_file

    total_steps = 24  # 48 examples / batch 4 x 2 epochs
    kill_after = random.Random().choice(range(2, total_steps - 2, 2))  # a checkpoint step; printed on failure

    ref = tmp_path / "ref"  # the uninterrupted run, alongside the one to be killed
    ref_proc = subprocess.Popen(
        finetune_cmd(tiny_model_dir, data_dir, ref),
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )

    out = tmp_path / "run"
    partial = out.with_name("run.partial")
    marker = partial / "checkpoints" / f"step-{kill_after}" / "COMPLETE"
    proc = subprocess.Popen(
        finetune_cmd(tiny_model_dir, data_dir, out),
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 240
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        os.kill(proc.pid, signal.SIGKILL)  # from outside, with no chance to clean up
    finally:
        proc.kill()
        proc.wait()
    ref_output, _ = ref_proc.communicate(timeout=300)
    assert ref_proc.returncode == 0, ref_output[-3000:]
    assert proc.returncode == -signal.SIGKILL, f"the run ended before it could be killed (step {kill_after})"
    assert not out.exists(), "a killed run must not leave a finished-looking output"
    ckpt = last_checkpoint(partial / "checkpoints")
    assert ckpt is not None and int(ckpt.name.split("-")[1]) >= kill_after

    resumed = subprocess.run(
        finetune_cmd(tiny_model_dir, data_dir, out, "--resume"),
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout + resumed.stderr, (
        f"did not resume (killed after step {kill_after})"
    )
    assert not partial.exists() and not (out / "checkpoints").exists()

    a = load_file(str(ref / "adapter_model.safetensors"))
    b = load_file(str(out / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after kill at step >= {kill_after} and resume"
    assert comparable_log(out) == comparable_log(ref)
    assert comparable_metrics(out) == comparable_metrics(ref)
    assert comparable_metrics(out)["evals_during_training"]  # evals from before the kill were kept


# ---- in-process tests of train(): fast, no subprocess
# --------------------------------------------------------


def _features(n=20, seed=0, vocab=300):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        length = int(rng.integers(3, 12))
        out.append(
            {
                "input_ids": rng.integers(5, vocab, size=length).tolist(),
                "attention_mask": [1] * length,
                "labels": i % 2,
            }
        )
    return out


def _model(model_dir, method="lora"):
    from tunelab.models import load_task_model
    from tunelab.models.params import LoraOptions, apply_method

    torch.manual_seed(0)
    model = load_task_model(model_dir, "classification")
    model.config.pad_token_id = 0
    return apply_method(
        model, "classification", method, LoraOptions(4, 8, 0.1, ("q_proj", "v_proj", "up_proj"))
    )


def _cfg(**kw):
    base = {
        "method": "lora",
        "learning_rate": 5e-3,
        "epochs": 3,
        "batch_size": 3,
        "grad_accum": 2,
        "warmup_ratio": 0.2,
        "max_length": 32,
        "seed": 3,
        "log_every": 2,
        "save_every": 3,
        "eval_every": 4,
        "lora_r": 4,
        "lora_alpha": 8,
        "lora_dropout": 0.1,
        "lora_targets": ["q_proj", "v_proj", "up_proj"],
    }
    base.update(kw)
    return TrainConfig(**base)


class Crash(Exception):
    pass


def _evaluate(crash_at=None):
    calls = []

    def evaluate(model):
        calls.append(1)
        if crash_at is not None and len(calls) == crash_at:
            raise Crash
        return {"score": float(sum(p.detach().double().sum() for p in model.parameters() if p.requires_grad))}

    return evaluate


def _trainable(model):
    return {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}


def test_crash_resume_ignores_incomplete_checkpoints(tiny_model_dir, tmp_path):
    """grad_accum 2, save every 3 steps, log every 2 (a running loss inside the checkpoint), dropout: resuming
    after a crash gives the same weights, log and evals as a run that never stopped, and a newer checkpoint
    without its COMPLETE marker (a crash mid-save) is not used."""
    feats, cfg = _features(), _cfg()
    model = _model(tiny_model_dir)
    ref = train(model, feats, cfg, pad_id=0, work_dir=tmp_path / "ref", evaluate=_evaluate(), progress=False)
    want = _trainable(model)
    assert ref.steps == 10  # ceil(20 / 3) = 7 micro-batches x 3 epochs = 21 -> 10 steps of 2

    work = tmp_path / "run"
    with pytest.raises(Crash):  # evaluation 2 is at step 8: the newest checkpoint is step 6
        train(
            _model(tiny_model_dir),
            feats,
            cfg,
            pad_id=0,
            work_dir=work,
            evaluate=_evaluate(crash_at=2),
            progress=False,
        )
    good = last_checkpoint(work / "checkpoints")
    assert good is not None and good.name == "step-6"
    lines = (work / "train_log.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["step"] == 8  # logged after the checkpoint: must not be kept twice
    # A crash mid-save: a newer folder with garbage and no COMPLETE, and a temporary one.
    fake = work / "checkpoints" / "step-9"
    shutil.copytree(good, fake)
    (fake / "COMPLETE").unlink()
    (fake / "model.safetensors").write_bytes(b"half-written")
    (work / "checkpoints" / ".tmp-step-12").mkdir()
    assert last_checkpoint(work / "checkpoints") == good

    model = _model(tiny_model_dir)
    got = train(model, feats, cfg, pad_id=0, work_dir=work, evaluate=_evaluate(), resume=True, progress=False)
    assert got.resumed_from == 6
    have = _trainable(model)
    for k in want:
        assert torch.equal(want[k], have[k]), k

    def strip(log):
        return [{k: v for k, v in e.items() if k != "tokens_per_s"} for e in log]

    assert strip(got.log) == strip(ref.log)
    file_log = [json.loads(x) for x in (work / "train_log.jsonl").read_text().splitlines()]
    assert strip(file_log) == strip(ref.log)
    assert got.evals == ref.evals and got.tokens == ref.tokens and got.steps == ref.steps


def _crashed_run(tiny_model_dir, feats, work, crash_at: int) -> Path:
    """A training that crashes at evaluation `crash_at`; its newest complete checkpoint."""
    with pytest.raises(Crash):
        train(
            _model(tiny_model_dir),
            feats,
            _cfg(),
            pad_id=0,
            work_dir=work,
            evaluate=_evaluate(crash_at=crash_at),
            progress=False,
        )
    ckpt = last_checkpoint(work / "checkpoints")
    assert ckpt is not None
    return ckpt


def test_resume_refuses_a_checkpoint_of_other_settings(tiny_model_dir, tmp_path):
    feats = _features()
    _crashed_run(tiny_model_dir, feats, tmp_path, crash_at=1)
    with pytest.raises(UsageError, match=r"cannot resume.*learning_rate"):
        train(
            _model(tiny_model_dir),
            feats,
            _cfg(learning_rate=1e-3),
            pad_id=0,
            work_dir=tmp_path,
            resume=True,
            progress=False,
        )
    with pytest.raises(UsageError, match=r"cannot resume.*training data"):
        train(
            _model(tiny_model_dir),
            _features(seed=1),
            _cfg(),
            pad_id=0,
            work_dir=tmp_path,
            resume=True,
            progress=False,
        )


def test_without_resume_old_checkpoints_are_cleared(tiny_model_dir, tmp_path):
    feats = _features()
    with pytest.raises(Crash):
        train(
            _model(tiny_model_dir),
            feats,
            _cfg(),
            pad_id=0,
            work_dir=tmp_path,
            evaluate=_evaluate(crash_at=1),
            progress=False,
        )
    assert last_checkpoint(tmp_path / "checkpoints") is not None
    got = train(
        _model(tiny_model_dir), feats, _cfg(save_every=0), pad_id=0, work_dir=tmp_path, progress=False
    )
    assert got.resumed_from == 0 and not (tmp_path / "checkpoints").exists()


def test_resume_before_any_checkpoint_starts_clean(tiny_model_dir, tmp_path):
    """A run killed before its first checkpoint, resumed: training starts over and its log holds each step
    once (the killed run's lines are not kept in front of the new ones)."""
    feats = _features()
    cfg = _cfg(save_every=50, eval_every=0, log_every=1)

    def crash(kind, entry):
        if kind == "train" and entry["step"] == 3:
            raise Crash

    with pytest.raises(Crash):
        train(
            _model(tiny_model_dir),
            feats,
            cfg,
            pad_id=0,
            work_dir=tmp_path / "w",
            progress=False,
            on_log=crash,
        )
    assert len((tmp_path / "w" / "train_log.jsonl").read_text().splitlines()) == 3
    got = train(
        _model(tiny_model_dir), feats, cfg, pad_id=0, work_dir=tmp_path / "w", resume=True, progress=False
    )
    ref = train(_model(tiny_model_dir), feats, cfg, pad_id=0, work_dir=tmp_path / "ref", progress=False)
    logged = [json.loads(x) for x in (tmp_path / "w" / "train_log.jsonl").read_text().splitlines()]
    assert got.resumed_from == 0
    assert [e["step"] for e in logged] == [e["step"] for e in ref.log] == list(range(1, ref.steps + 1))
    assert [e["loss"] for e in logged] == pytest.approx([e["loss"] for e in ref.log], rel=1e-6)


def test_last_checkpoint_needs_the_complete_marker(tmp_path):
    root = tmp_path / "checkpoints"
    for name, complete in [("step-3", True), ("step-10", False), (".tmp-step-12", True), ("step-x", True)]:
        (root / name).mkdir(parents=True)
        (root / name / "trainer_state.json").write_text("{}")
        if complete:
            (root / name / "COMPLETE").write_text("ok")
    assert last_checkpoint(root) == root / "step-3"
    assert last_checkpoint(tmp_path / "nowhere") is None


def test_a_failure_before_any_checkpoint_leaves_no_partial_folder(tmp_path):
    from tunelab.outputs import atomic_output

    out = tmp_path / "o"
    with pytest.raises(RuntimeError), atomic_output(out, keep_partial=True) as work:
        (work / "train_log.jsonl").write_text("{}\n")
        raise RuntimeError("model failed to load")
    assert not out.exists() and not (tmp_path / "o.partial").exists()
    with pytest.raises(RuntimeError), atomic_output(out, keep_partial=True) as work:
        (work / "checkpoints" / "step-2").mkdir(parents=True)
        (work / "checkpoints" / "step-2" / "COMPLETE").write_text("ok")
        raise RuntimeError("killed")
    assert (tmp_path / "o.partial" / "checkpoints" / "step-2").is_dir() and not out.exists()


def test_a_token_changed_mid_example_is_other_data_and_matching_resume_starts_over(
    tiny_model_dir, tmp_path, capsys
):
    """The checkpoint's data digest covers every token (a word edited mid-sentence is other data): --resume
    refuses it; resume="matching" (a study's stage) starts over, and ends as a fresh run on the new data."""
    feats = _features()
    feats[0] = {"input_ids": list(range(5, 29)), "attention_mask": [1] * 24, "labels": 0}
    _crashed_run(tiny_model_dir, feats, tmp_path / "run", crash_at=2)
    edited = [dict(f) for f in feats]
    edited[0]["input_ids"] = [*feats[0]["input_ids"][:12], 7, *feats[0]["input_ids"][13:]]
    with pytest.raises(UsageError, match=r"cannot resume.*training data"):
        train(_model(tiny_model_dir), edited, _cfg(), pad_id=0, work_dir=tmp_path / "run", resume=True)

    fresh = _model(tiny_model_dir)
    ref = train(
        fresh, edited, _cfg(), pad_id=0, work_dir=tmp_path / "ref", evaluate=_evaluate(), progress=False
    )
    model = _model(tiny_model_dir)
    got = train(
        model,
        edited,
        _cfg(),
        pad_id=0,
        work_dir=tmp_path / "run",
        evaluate=_evaluate(),
        resume="matching",
        progress=False,
    )
    said = capsys.readouterr().out
    assert "other settings or data (training data): training starts over" in said
    assert "no complete checkpoint yet" not in said
    assert got.resumed_from == 0 and got.steps == ref.steps and got.evals == ref.evals
    assert [e["loss"] for e in got.log] == [e["loss"] for e in ref.log]
    want, have = _trainable(fresh), _trainable(model)
    assert all(torch.equal(want[k], have[k]) for k in want)


def test_a_checkpoint_of_the_earlier_data_digest_still_resumes(tiny_model_dir, tmp_path):
    """Checkpoints written before the digest covered every token carry the earlier digest (no `data_digest`):
    the run computes that one to compare, so they still resume."""
    from tunelab.training import checkpoint

    feats = _features()
    ckpt = _crashed_run(tiny_model_dir, feats, tmp_path, crash_at=2)
    state = json.loads((ckpt / "trainer_state.json").read_text())
    old = checkpoint.fingerprint(_cfg(), feats, 1, digest=1)
    assert state["fingerprint"]["data_digest"] == 2 and "data_digest" not in old
    assert (
        old["options"] == state["fingerprint"]["options"]
        and old["data_sha256"] != state["fingerprint"]["data_sha256"]
    )
    state["fingerprint"] = old
    (ckpt / "trainer_state.json").write_text(json.dumps(state))
    got = train(
        _model(tiny_model_dir), feats, _cfg(), pad_id=0, work_dir=tmp_path, resume=True, progress=False
    )
    assert got.resumed_from > 0  # resumed, not started over (nor refused)
