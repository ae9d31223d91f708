"""Experiment trackers through accelerate: TensorBoard for real (event files read back with tensorboard's
EventAccumulator equal train_log.jsonl), the others never imported unless asked, a missing package one
message."""

import json
import sys

import pytest

from tunelab.cli import main
from tunelab.errors import UsageError
from tunelab.tracking import check_available, flat_hparams

pytest.importorskip("tensorboard")


def _events(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted(folder.rglob("events.out.tfevents.*"))
    assert files, f"no event files under {folder}"
    accs = []
    for f in files:
        acc = EventAccumulator(str(f))
        acc.Reload()
        accs.append(acc)
    return accs


def _scalars(accs, tag):
    return [(e.step, e.value) for a in accs if tag in a.Tags()["scalars"] for e in a.Scalars(tag)]


def test_finetune_report_to_tensorboard_matches_train_log(tmp_path, tiny_model_dir, capsys):
    import datasets

    rows = {"sentence": ["a good film", "a bad film"] * 8, "label": [1, 0] * 8}
    disk = str(tmp_path / "sst2")
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_dict(rows), "validation": datasets.Dataset.from_dict(rows)}
    ).save_to_disk(disk)
    out = tmp_path / "ft"
    args = ["finetune", tiny_model_dir, "--task", "sst2", "--dataset", disk, "--out", str(out)]
    args += ["--input-prompt", "plain", "--batch-size", "4", "--max-length", "32", "--log-every", "1"]
    assert main([*args, "--report-to", "tensorboard"]) == 0
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 4
    accs = _events(out / "tracking")
    for key, tag in (
        ("loss", "train/loss"),
        ("lr", "train/learning_rate"),
        ("tokens_per_s", "train/tokens_per_s"),
    ):
        got = _scalars(accs, tag)
        assert [s for s, _ in got] == [e["step"] for e in log]
        assert [v for _, v in got] == pytest.approx([e[key] for e in log], rel=1e-6)
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    assert _scalars(accs, "dev/accuracy") == [(4, pytest.approx(metrics["accuracy"]))]
    assert "wandb" not in sys.modules and "mlflow" not in sys.modules and "trackio" not in sys.modules


@pytest.mark.parametrize("name", ["wandb", "mlflow", "trackio", "tensorboard"])
def test_missing_tracker_package_is_one_message(monkeypatch, name, tmp_path, tiny_model_dir, capsys):
    monkeypatch.setitem(sys.modules, name, None)  # `import name` raises ImportError
    with pytest.raises(
        UsageError, match=rf"--report-to {name} needs the `{name}` package: pip install 'tunelab\[{name}\]'"
    ):
        check_available([name])
    out = tmp_path / "ft"
    rc = main(
        [
            "finetune",
            tiny_model_dir,
            "--task",
            "sst2",
            "--data-file",
            "x.tsv",
            "--out",
            str(out),
            "--report-to",
            name,
        ]
    )
    assert rc == 2 and not out.exists()


def test_unknown_tracker_and_hparams(capsys, tiny_model_dir, tmp_path):
    rc = main(
        ["finetune", tiny_model_dir, "--task", "sst2", "--out", str(tmp_path / "o"), "--report-to", "comet"]
    )
    assert rc == 2 and "--report-to must be none, or a list of tensorboard" in capsys.readouterr().err
    assert flat_hparams({"a": {"b": 1, "c": [1, 2], "d": None}}) == {"a.b": 1, "a.c": "[1, 2]", "a.d": "null"}


def test_tracking_leaves_accelerate_state_to_the_training_loop(tmp_path):
    """A tracker set up before training must not fix accelerate's process-wide state (mixed precision): the
    loop's Accelerator(mixed_precision="bf16") on a GPU would be refused."""
    import os
    import subprocess
    from pathlib import Path

    code = (
        "from tunelab.tracking import Tracking\n"
        f"t = Tracking(['tensorboard'], {str(tmp_path)!r}, 'run', {{'a': 1}})\n"
        "from accelerate import Accelerator\n"
        "Accelerator(mixed_precision='bf16', cpu=True)\n"
        "t.log({'x': 1.0}, 0); t.finish()\n"
    )
    src = str(Path(__file__).resolve().parents[1] / "src")
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": src}
    )
    assert r.returncode == 0, r.stderr
    assert list((tmp_path / "run").glob("events.out.tfevents.*"))


def test_zeroshot_and_evaluate_report_their_metrics_to_tensorboard(tmp_path, tiny_model_dir):
    """`--report-to` on the evaluation commands: the metrics.json scalars as dev/NAME, the tags fine-tuning's
    final evaluation uses; without it no tracking folder."""
    from helpers import sst2_examples, sst2_tsv

    sst2_tsv(sst2_examples(8, 0), tmp_path / "train.tsv")
    sst2_tsv(sst2_examples(6, 1), tmp_path / "dev.tsv")
    dev = ["--task", "sst2", "--data-file", str(tmp_path / "dev.tsv")]
    zs = tmp_path / "zs"
    assert main(["zeroshot", tiny_model_dir, *dev, "--out", str(zs), "--report-to", "tensorboard"]) == 0
    metrics = json.loads((zs / "metrics.json").read_text())
    accs = _events(zs / "tracking")
    for key in ("accuracy", "f1", "precision", "recall"):
        assert _scalars(accs, f"dev/{key}") == [(0, pytest.approx(metrics[key]))], key
    ft = tmp_path / "ft"
    train = ["--train-file", str(tmp_path / "train.tsv"), "--batch-size", "4", "--max-length", "32"]
    assert main(["finetune", tiny_model_dir, *dev, *train, "--out", str(ft)]) == 0
    assert not (ft / "tracking").exists()
    ev = tmp_path / "ev"
    assert main(["evaluate", str(ft), *dev, "--out", str(ev), "--report-to", "tensorboard"]) == 0
    metrics = json.loads((ev / "metrics.json").read_text())
    assert _scalars(_events(ev / "tracking"), "dev/accuracy") == [(0, pytest.approx(metrics["accuracy"]))]
    again = tmp_path / "again"
    assert main(["evaluate", str(ft), *dev, "--out", str(again)]) == 0 and not (again / "tracking").exists()
