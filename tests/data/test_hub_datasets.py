"""Data read through the real `datasets` package (no stand-in): folders the tests write with `datasets` itself
(save_to_disk, parquet files), given as `--dataset`, a task file's `data.dataset` or a study's
`tasks.<name>.dataset`, checked and reported as files are."""

import json

import pytest
import yaml

datasets = pytest.importorskip("datasets")

from tunelab.cli import main  # noqa: E402
from tunelab.data.hub import DatasetRef  # noqa: E402
from tunelab.errors import DataError, UsageError  # noqa: E402
from tunelab.tasks import get_task, load_task  # noqa: E402

POS = ["a good and great film", "truly wonderful , a great movie", "the film was good", "great and wonderful"]
NEG = ["a bad and awful film", "truly terrible , an awful movie", "the film was bad", "awful and terrible"]
CTX = "The Denver Broncos won Super Bowl 50 in Santa Clara ."


def _sst2_rows(n: int, suffix: str = "") -> dict:
    texts = [(POS if i % 2 else NEG)[i % 4] + suffix for i in range(n)]
    return {"sentence": texts, "label": [i % 2 for i in range(n)], "idx": list(range(n))}


def sst2_disk(path, dev_rows: dict | None = None):
    """A GLUE-SST-2-shaped DatasetDict saved with save_to_disk (ClassLabel labels, as on the Hub)."""
    features = datasets.Features(
        {
            "sentence": datasets.Value("string"),
            "label": datasets.ClassLabel(names=["negative", "positive"]),
            "idx": datasets.Value("int32"),
        }
    )
    dd = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict(_sst2_rows(16), features=features),
            "validation": datasets.Dataset.from_dict(dev_rows or _sst2_rows(6, " indeed"), features=features),
        }
    )
    dd.save_to_disk(str(path))
    return str(path)


def squad_disk(path):
    """A rajpurkar/squad-shaped DatasetDict (answers stored column-wise)."""
    qs = [
        ("Who won ?", "Denver Broncos"),
        ("Where was it ?", "Santa Clara"),
        ("Which game ?", "Super Bowl 50"),
    ]

    def rows(prefix):
        return {
            "id": [f"{prefix}{i}" for i in range(len(qs))],
            "title": ["Broncos"] * len(qs),
            "context": [CTX] * len(qs),
            "question": [q for q, _ in qs],
            "answers": [{"text": [a], "answer_start": [CTX.index(a)]} for _, a in qs],
        }

    dd = datasets.DatasetDict(
        {"train": datasets.Dataset.from_dict(rows("t")), "validation": datasets.Dataset.from_dict(rows("v"))}
    )
    dd.save_to_disk(str(path))
    return str(path)


def test_save_to_disk_and_parquet_folders_read_like_files(tmp_path):
    sst2 = get_task("sst2")
    disk = sst2_disk(tmp_path / "disk")
    examples, where = sst2.load_split("dev", dataset=disk)
    assert where == f"{disk} [validation]"
    assert [(e.text, e.label, e.line) for e in examples[:2]] == [
        ("a bad and awful film indeed", 0, 1),
        ("truly wonderful , a great movie indeed", 1, 2),
    ]
    # a folder of parquet files, read by datasets.load_dataset (splits from the file names)
    folder = tmp_path / "pq"
    folder.mkdir()
    loaded = datasets.load_from_disk(disk)
    for split in ("train", "validation"):
        loaded[split].to_parquet(str(folder / f"{split}.parquet"))
    train, where = sst2.load_split("train", dataset=str(folder))
    assert where.endswith("[train]") and len(train) == 16 and {e.label for e in train} == {0, 1}


def test_bad_rows_are_named_and_exit_2(tmp_path, tiny_model_dir, capsys):
    bad = _sst2_rows(4)
    bad["sentence"][2] = "   "
    disk = sst2_disk(tmp_path / "bad", dev_rows=bad)
    with pytest.raises(DataError, match=r"\[validation\], row 3: sentence is empty"):
        get_task("sst2").load_split("dev", dataset=disk)
    out = tmp_path / "zs"
    rc = main(["zeroshot", tiny_model_dir, "--task", "sst2", "--dataset", disk, "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "row 3: sentence is empty" in err and disk in err
    assert not out.exists() and not (tmp_path / "zs.partial").exists()
    # an unknown split and a missing package are one message too
    with pytest.raises(UsageError, match=r"could not load SST-2 split 'nope'.*has train, validation"):
        get_task("sst2").load_split("nope", dataset=disk)


def test_missing_datasets_package(monkeypatch, tmp_path):
    monkeypatch.setitem(__import__("sys").modules, "datasets", None)  # `import datasets` raises ImportError
    with pytest.raises(UsageError, match=r"needs the `datasets` package: pip install 'tunelab\[hub\]'"):
        get_task("sst2").load_split("dev", dataset=str(tmp_path))


def test_hub_id_offline_is_one_message():
    with pytest.raises(UsageError, match=r"could not load SST-2 split 'validation'.*nyu-mll/glue.*Offline"):
        get_task("sst2").load_split("dev", dataset="nyu-mll/glue:sst2")


def test_zeroshot_and_finetune_commands_with_dataset(tmp_path, tiny_model_dir, capsys):
    disk = sst2_disk(tmp_path / "sst2")
    zs = tmp_path / "zs"
    args = ["--task", "sst2", "--dataset", disk, "--out"]
    assert main(["zeroshot", tiny_model_dir, *args, str(zs), "--prompt", "plain"]) == 0
    metrics = json.loads((zs / "metrics.json").read_text())
    assert metrics["n"] == 6 and metrics["data"] == f"{disk} [validation]"
    ft = tmp_path / "ft"
    train = ["--input-prompt", "plain", "--epochs", "1", "--batch-size", "8", "--max-length", "32"]
    assert main(["finetune", tiny_model_dir, *args, str(ft), *train]) == 0
    assert json.loads((ft / "eval" / "metrics.json").read_text())["n"] == 6
    assert (ft / "train_log.jsonl").is_file()
    ev = tmp_path / "ev"
    assert main(["evaluate", str(ft), "--dataset", disk, "--split", "train", "--out", str(ev)]) == 0
    assert json.loads((ev / "metrics.json").read_text())["data"] == f"{disk} [train]"
    capsys.readouterr()
    assert main(["data", "check", "--dataset", disk, "--task", "sst2", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["rows"] == 6 and summary["labels"] == {"negative": 3, "positive": 3}
    assert main(["data", "check", "--dataset", disk]) == 2  # a local folder names no built-in task
    # SQuAD in the Hub's layout
    sq = squad_disk(tmp_path / "squad")
    out = tmp_path / "zs-squad"
    qa = ["--task", "squad", "--dataset", sq, "--prompt", "plain", "--max-new-tokens", "3", "--out", str(out)]
    assert main(["zeroshot", tiny_model_dir, *qa]) == 0
    assert json.loads((out / "metrics.json").read_text())["n"] == 3


def test_task_file_with_dataset_and_columns(tmp_path):
    folder = tmp_path / "reviews"
    folder.mkdir()
    for split, n in (("train", 8), ("validation", 4)):
        rows = [{"review": (POS if i % 2 else NEG)[i % 4], "stars": ["low", "high"][i % 2]} for i in range(n)]
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    task_file = tmp_path / "reviews.yaml"
    task_file.write_text(
        yaml.safe_dump(
            {
                "name": "reviews",
                "kind": "classification",
                "data": {
                    "dataset": str(folder),
                    "splits": {"train": "train", "dev": "validation"},
                    "text": "review",
                    "label": "stars",
                },
                "labels": ["low", "high"],
                "verbalizers": {"low": [" bad"], "high": [" good"]},
                "prompts": {"plain": {"text": "Review: {text}\nSentiment:", "chat": False}},
            }
        )
    )
    task = load_task(str(task_file))
    dev, where = task.load_split("dev")
    assert where == f"{folder} [validation]" and [e.label for e in dev] == [0, 1, 0, 1]
    assert task.to_dict()["data"]["splits"] == {"train": "train", "dev": "validation"}  # not made paths
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**yaml.safe_load(task_file.read_text()), "data": {"config": "x"}}))
    with pytest.raises(UsageError, match=r"bad.yaml: data.config: names a config of `dataset`"):
        load_task(str(bad))


def test_study_task_with_dataset(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.delenv("TUNELAB_DATA_DIR", raising=False)  # no data folder needed
    disk = sst2_disk(tmp_path / "sst2")
    cfg = {
        "model": tiny_model_dir,
        "seed": 0,
        "tasks": {
            "sst2": {
                "dataset": disk,
                "zeroshot": {"limit": 4, "prompt": "plain", "batch_size": 4},
                "finetune": {
                    "limit": 4,
                    "input_prompt": "plain",
                    "learning_rate": 1e-3,
                    "batch_size": 8,
                    "max_length": 32,
                    "log_every": 1,
                },
            },
            "squad": {"enabled": False},
        },
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    assert main(["study", "--config", str(path), "--out", str(run)]) == 0
    assert json.loads((run / "sst2/zeroshot/metrics.json").read_text())["data"] == f"{disk} [validation]"
    assert (run / "report.md").is_file()


def test_a_dataset_spec_without_an_id_is_refused(capsys):
    from tunelab.cli import main

    for spec in (":sst2", "  "):
        assert main(["data", "check", "--task", "sst2", "--dataset", spec]) == 2
        err = capsys.readouterr().err
        assert f"--dataset: expected a Hub id (OWNER/NAME[:CONFIG]) or a local folder, got {spec!r}" in err


def test_a_folder_of_one_dataset_is_refused_not_read_as_every_split(tmp_path, capsys):
    """One saved Dataset has no splits: train and dev would be the same rows."""
    folder = tmp_path / "one"
    datasets.Dataset.from_dict(_sst2_rows(6)).save_to_disk(str(folder))
    for split in ("train", "dev"):
        with pytest.raises(UsageError, match=rf"{folder} holds one Dataset, not a DatasetDict with splits"):
            get_task("sst2").load_split(split, dataset=str(folder))
    assert main(["data", "check", "--task", "sst2", "--dataset", str(folder)]) == 2
    err = capsys.readouterr().err
    assert str(folder) in err and "save a DatasetDict" in err


def test_a_folder_under_home_is_read_from_there(tmp_path, monkeypatch):
    """`~/folder` of data files is the local folder, not a Hub id (as `~` of a save_to_disk folder was)."""
    monkeypatch.setenv("HOME", str(tmp_path))
    folder = tmp_path / "mine"
    folder.mkdir()
    loaded = datasets.load_from_disk(sst2_disk(tmp_path / "disk"))
    for split in ("train", "validation"):
        loaded[split].to_parquet(str(folder / f"{split}.parquet"))
    dev, where = get_task("sst2").load_split("dev", dataset="~/mine")
    assert where == f"{folder} [validation]" and len(dev) == 6
    assert DatasetRef.parse("~/mine:cfg") == DatasetRef(str(folder), "cfg")
