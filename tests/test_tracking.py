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
        f"t = Tracking(['tensorboard'], {str(tmp_path)!r}, 'run', {{'a': 1}}); t.start()\n"
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


def _run_dir_scalars(folder, tag):
    """A tag's (step, value) pairs as TensorBoard shows the run folder: its event files in order, events
    that a restart's purge_step drops left out."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)] if tag in acc.Tags()["scalars"] else []


class _Crash(Exception):
    pass


def _crash_at(monkeypatch, step):
    """Tracking.on_log raising after logging train step `step`, on the first run that reaches it."""
    from tunelab.tracking import Tracking

    orig, fired = Tracking.on_log, []

    def on_log(self, kind, entry):
        orig(self, kind, entry)
        if kind == "train" and entry["step"] == step and not fired:
            fired.append(step)
            raise _Crash

    monkeypatch.setattr(Tracking, "on_log", on_log)
    return fired


def test_resumed_finetune_logs_each_step_once(tmp_path, tiny_model_dir, monkeypatch, capsys):
    """`finetune --resume` after a crash past its checkpoint: the steps the crashed run logged after the
    checkpoint are logged again, and TensorBoard shows each step once (purge_step), as train_log.jsonl has
    them; the hyperparameters are stored once."""
    from helpers import sst2_examples, sst2_tsv

    sst2_tsv(sst2_examples(32, 0), tmp_path / "train.tsv")
    sst2_tsv(sst2_examples(6, 1), tmp_path / "dev.tsv")
    out = tmp_path / "ft"
    args = ["finetune", tiny_model_dir, "--task", "sst2", "--train-file", str(tmp_path / "train.tsv")]
    args += ["--data-file", str(tmp_path / "dev.tsv"), "--input-prompt", "plain", "--batch-size", "4"]
    args += ["--max-length", "32", "--log-every", "1", "--save-every", "2", "--eval-every", "3"]
    args += ["--report-to", "tensorboard", "--out", str(out)]
    fired = _crash_at(monkeypatch, 5)
    with pytest.raises(_Crash):
        main(args)
    assert fired and (tmp_path / "ft.partial" / "checkpoints" / "step-4").is_dir()
    assert main([*args, "--resume"]) == 0
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == list(range(1, 9))
    run = out / "tracking" / "finetune"
    got = _run_dir_scalars(run, "train/loss")
    assert [s for s, _ in got] == list(range(1, 9))
    assert [v for _, v in got] == pytest.approx([e["loss"] for e in log], rel=1e-6)
    assert [s for s, _ in _run_dir_scalars(run, "eval/accuracy")] == [3, 6]
    assert len(list(run.rglob("hparams.yml"))) == 1


def test_training_that_starts_over_replaces_its_tracking_run(tmp_path, tiny_model_dir, monkeypatch):
    """A tracking folder outside the work folder (a study's RUN/tracking): a fine-tuning that starts over
    (no checkpoint to resume) replaces what its crashed attempt logged there, and keeps files not its own;
    another run's folder is left alone."""
    from helpers import PLAIN_SPEC, SST2, sst2_examples, tiny_train_config

    from tunelab import runs

    tracking = tmp_path / "run" / "tracking"
    (tracking / "other").mkdir(parents=True)
    (tracking / "other" / "events.out.tfevents.1.x").write_text("")
    cfg = tiny_train_config(batch_size=4, log_every=1, save_every=100)

    def finetune():
        return runs.finetune(
            SST2,
            tiny_model_dir,
            sst2_examples(24),
            sst2_examples(6, seed=1),
            "fixture",
            tmp_path / "run" / "sst2" / "finetune",
            cfg,
            {"input_prompt": PLAIN_SPEC},
            resume="matching",
            overwrite=True,
            report_to=["tensorboard"],
            tracking_dir=tracking,
            run_name="sst2",
            hparams={"a": 1},
        )

    fired = _crash_at(monkeypatch, 3)
    with pytest.raises(_Crash):
        finetune()
    assert fired and len(_run_dir_scalars(tracking / "sst2", "train/loss")) == 3
    (tracking / "sst2" / "notes.txt").write_text("mine")
    finetune()
    log = [json.loads(x) for x in (tmp_path / "run/sst2/finetune/train_log.jsonl").read_text().splitlines()]
    got = _run_dir_scalars(tracking / "sst2", "train/loss")
    assert [s for s, _ in got] == [e["step"] for e in log] == list(range(1, 7))
    assert [v for _, v in got] == pytest.approx([e["loss"] for e in log], rel=1e-6)
    assert len(list((tracking / "sst2").rglob("hparams.yml"))) == 1
    assert len(list((tracking / "sst2").glob("events.out.tfevents.*"))) == 1  # the crashed attempt's: gone
    assert (tracking / "sst2" / "notes.txt").read_text() == "mine"
    assert (tracking / "other" / "events.out.tfevents.1.x").is_file()


def _summary_row() -> dict:
    """A row as summary_rows makes them."""
    return {
        "task": "sst2",
        "variant": None,
        "method": "lora",
        "metric": "Accuracy",
        "key": "accuracy",
        "zeroshot": 0.5,
        "prompting": "zero-shot",
        "finetuned": 0.75,
        "finetuned_sd": None,
        "seeds": 1,
        "params_base": 10,
        "params_finetuned": 12,
    }


def test_study_summary_is_logged_once_per_table(tmp_path):
    """The report stage runs on every invocation of a study: the summary run is logged when the table is new
    or changed (and then replaces the one before), not again for a rerun that recomputed nothing."""
    from tunelab.study.summary import log_summary

    tracking = tmp_path / "run" / "tracking"
    row = _summary_row()
    for _ in range(3):
        log_summary(["tensorboard"], tracking, {"a": 1}, [row])
    tag = "summary/sst2/accuracy/finetuned"
    assert _run_dir_scalars(tracking / "summary", tag) == [(0, 0.75)]
    assert len(list((tracking / "summary").glob("events.out.tfevents.*"))) == 1
    log_summary(["tensorboard"], tracking, {"a": 1}, [{**row, "finetuned": 0.875}])
    assert _run_dir_scalars(tracking / "summary", tag) == [(0, 0.875)]
    assert len(list((tracking / "summary").rglob("hparams.yml"))) == 1


@pytest.fixture
def fake_trackers(monkeypatch):
    """wandb, mlflow and trackio modules that record what accelerate's trackers pass them: (tracker,
    project or experiment, run name) per run started."""
    import types

    started = []

    class Run:
        def log(self, values, step=None, **kw):
            pass

        def finish(self):
            pass

    def init_for(name):
        def init(project=None, name=None, **kw):
            started.append((module_name, project, name))
            return Run()

        module_name = name
        return init

    for name in ("wandb", "trackio"):
        mod = types.ModuleType(name)
        mod.init = init_for(name)
        mod.config = types.SimpleNamespace(update=lambda values, allow_val_change=False: None)
        monkeypatch.setitem(sys.modules, name, mod)
    mlflow = types.ModuleType("mlflow")
    experiments = {}
    mlflow.search_experiments = lambda filter_string: [
        types.SimpleNamespace(experiment_id=i) for n, i in experiments.items() if f"'{n}'" in filter_string
    ]

    def create_experiment(name, artifact_location=None, tags=None):
        experiments[name] = str(len(experiments))
        return experiments[name]

    def start_run(run_id=None, experiment_id=None, run_name=None, **kw):
        started.append(("mlflow", next(n for n, i in experiments.items() if i == experiment_id), run_name))

    mlflow.create_experiment, mlflow.start_run = create_experiment, start_run
    mlflow.log_params = mlflow.log_metrics = lambda *a, **kw: None
    mlflow.end_run = lambda: None
    limits = types.SimpleNamespace(MAX_PARAM_VAL_LENGTH=6000, MAX_PARAMS_TAGS_PER_BATCH=100)
    mlflow.utils = types.SimpleNamespace(validation=limits)
    monkeypatch.setitem(sys.modules, "mlflow", mlflow)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    return started


def test_remote_trackers_get_the_output_folder_as_project_and_the_run_name(
    tmp_path, tiny_model_dir, fake_trackers, capsys
):
    """wandb and trackio get the output folder's name as the project and the run's name as the run name
    (accelerate passes its first argument as the project); MLflow the same as experiment and run name."""
    import datasets

    from tunelab.study.summary import log_summary

    rows = {"sentence": ["a good film", "a bad film"] * 4, "label": [1, 0] * 4}
    disk = str(tmp_path / "sst2")
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_dict(rows), "validation": datasets.Dataset.from_dict(rows)}
    ).save_to_disk(disk)
    args = ["finetune", tiny_model_dir, "--task", "sst2", "--dataset", disk, "--out", str(tmp_path / "my-ft")]
    args += ["--input-prompt", "plain", "--batch-size", "4", "--max-length", "32"]
    assert main([*args, "--report-to", "wandb,mlflow,trackio"]) == 0
    assert sorted(fake_trackers) == [
        ("mlflow", "my-ft", "finetune"),
        ("trackio", "my-ft", "finetune"),
        ("wandb", "my-ft", "finetune"),
    ]
    fake_trackers.clear()
    seeds = [
        "finetune",
        tiny_model_dir,
        "--task",
        "sst2",
        "--dataset",
        disk,
        "--out",
        str(tmp_path / "my-seeds"),
    ]
    seeds += ["--input-prompt", "plain", "--batch-size", "4", "--max-length", "32", "--seeds", "1,2"]
    assert main([*seeds, "--report-to", "wandb"]) == 0
    assert fake_trackers == [("wandb", "my-seeds", "seed-1"), ("wandb", "my-seeds", "seed-2")]
    fake_trackers.clear()
    log_summary(
        ["wandb", "mlflow", "trackio"], tmp_path / "study-run" / "tracking", {"a": 1}, [_summary_row()]
    )
    assert sorted(fake_trackers) == [
        ("mlflow", "study-run", "summary"),
        ("trackio", "study-run", "summary"),
        ("wandb", "study-run", "summary"),
    ]
