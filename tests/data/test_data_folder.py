"""Locating data files (argument / $TUNELAB_DATA_DIR, the built-in tasks' layouts), the built-in task of a
file, and `data check` summaries."""

import json
import os
from pathlib import Path

import pytest

from tunelab.data import resolve_data_dir
from tunelab.errors import DataError, UsageError
from tunelab.tasks import get_task
from tunelab.tasks.builtin import task_for_file


def sst2_path(data_dir, split):
    return get_task("sst2").data_path(split, data_dir)


def squad_path(data_dir, version, split):
    return get_task("squad").for_version(version).data_path(split, data_dir)


def read_any(path):
    task = task_for_file(path)
    return task.name, task.read(path)


def check_file(path):
    return task_for_file(path).check_file(path)


def format_summary(summary):
    return get_task(summary["task"]).format_summary(summary)


SQUAD = {
    "version": "1.1",
    "data": [
        {
            "title": "T",
            "paragraphs": [
                {
                    "context": "abc def",
                    "qas": [{"id": "a", "question": "q?", "answers": [{"text": "def", "answer_start": 4}]}],
                }
            ],
        }
    ],
}


def touch(path, text="x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_argument_wins_over_env(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_DATA_DIR", "/does/not/matter")
    assert resolve_data_dir(str(tmp_path)) == tmp_path


def test_env_is_used_without_argument(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_DATA_DIR", str(tmp_path))
    assert resolve_data_dir(None) == tmp_path


def test_neither_says_how_to_set_it(monkeypatch):
    monkeypatch.delenv("TUNELAB_DATA_DIR", raising=False)
    with pytest.raises(UsageError, match="give --data-dir DIR or set TUNELAB_DATA_DIR=DIR"):
        resolve_data_dir(None)


def test_missing_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_DATA_DIR", str(tmp_path / "gone"))
    with pytest.raises(UsageError, match=r"gone.*\(from TUNELAB_DATA_DIR\) does not exist"):
        resolve_data_dir(None)


@pytest.mark.parametrize("folder", ["SST-2", "sst2"])
@pytest.mark.parametrize(
    "split, file", [("train", "train"), ("dev", "dev"), ("validation", "dev"), ("test", "test")]
)
def test_sst2_path(tmp_path, folder, split, file):
    expected = touch(tmp_path / folder / f"{file}.tsv")
    assert sst2_path(tmp_path, split) == expected


def test_sst2_missing_lists_paths_tried(tmp_path):
    with pytest.raises(UsageError) as info:
        sst2_path(tmp_path, "dev")
    message = str(info.value)
    assert "no SST-2 dev file found" in message
    assert str(tmp_path / "SST-2" / "dev.tsv") in message and str(tmp_path / "sst2" / "dev.tsv") in message


def test_unknown_split(tmp_path):
    with pytest.raises(UsageError, match="unknown split 'eval'"):
        sst2_path(tmp_path, "eval")
    with pytest.raises(UsageError, match="unknown split 'test'"):
        squad_path(tmp_path, "1.1", "test")


@pytest.mark.parametrize(
    "version, split, relative",
    [
        ("1.1", "dev", "squad/v1.1-dev.json"),
        ("2.0", "train", "squad/v2.0-train.json"),
        ("1.1", "train", "squad/train-v1.1.json"),
        ("2.0", "validation", "squad/dev-v2.0.json"),
        ("v1.1", "dev", "dev-v1.1.json"),
        ("2.0", "train", "train-v2.0.json"),
    ],
)
def test_squad_path_layouts(tmp_path, version, split, relative):
    expected = touch(tmp_path / relative)
    assert squad_path(tmp_path, version, split) == expected


def test_squad_missing_lists_paths_tried(tmp_path):
    with pytest.raises(UsageError) as info:
        squad_path(tmp_path, "2.0", "dev")
    message = str(info.value)
    assert "no SQuAD v2.0 dev file found" in message
    for relative in ["squad/v2.0-dev.json", "squad/dev-v2.0.json", "dev-v2.0.json"]:
        assert str(tmp_path / relative) in message


def test_squad_unknown_version(tmp_path):
    with pytest.raises(UsageError, match=r"unknown SQuAD version .3\.0."):
        squad_path(tmp_path, "3.0", "dev")


def test_read_any_and_check(tmp_path):
    tsv = touch(tmp_path / "a.tsv", "sentence\tlabel\ngood\t1\nbad\t0\nfine\t1\n")
    jsonl = touch(tmp_path / "b.jsonl", '{"text": "good"}\n')
    squad = touch(tmp_path / "c.json", json.dumps(SQUAD))
    assert read_any(tsv)[0] == "sst2" and len(read_any(tsv)[1]) == 3
    assert read_any(squad)[0] == "squad"

    summary = check_file(tsv)
    assert summary == {
        "task": "sst2",
        "file": str(tsv),
        "rows": 3,
        "labelled": 3,
        "labels": {"negative": 1, "positive": 2},
    }
    assert format_summary(summary) == f"{tsv}: SST-2, 3 rows, labels negative/positive: 1 / 2"
    assert format_summary(check_file(jsonl)) == f"{jsonl}: SST-2, 1 rows, no labels"
    summary = check_file(squad)
    assert summary == {
        "task": "squad",
        "file": str(squad),
        "articles": 1,
        "paragraphs": 1,
        "questions": 1,
        "unanswerable": 0,
        "version": "1.1",
    }
    assert format_summary(summary) == (
        f"{squad}: SQuAD v1.1, 1 articles, 1 distinct paragraphs, 1 questions, 0 unanswerable"
    )
    json.dumps(summary)  # the CLI may print it as JSON


def test_read_any_rejects_other_files(tmp_path):
    with pytest.raises(DataError, match=r"unknown data file type .\.txt."):
        read_any(touch(tmp_path / "a.txt"))
    with pytest.raises(DataError, match="file not found"):
        read_any(tmp_path / "nothing")
    with pytest.raises(DataError, match="top-level 'data' is missing"):
        read_any(touch(tmp_path / "other.json", '{"rows": []}'))


DATA = os.environ.get("TUNELAB_DATA_DIR")


@pytest.mark.skipif(not DATA, reason="TUNELAB_DATA_DIR is not set")
def test_real_folder():
    assert sst2_path(None, "validation") == Path(DATA) / "SST-2" / "dev.tsv"
    summary = check_file(squad_path(None, "1.1", "dev"))
    assert (summary["articles"], summary["paragraphs"], summary["questions"], summary["unanswerable"]) == (
        48,
        2_067,
        10_570,
        0,
    )  # the official dev-v1.1.json
    assert format_summary(summary).endswith(
        "v1.1-dev.json: SQuAD v1.1, 48 articles, 2,067 distinct paragraphs, 10,570 questions, 0 unanswerable"
    )
    summary = check_file(squad_path(None, "2.0", "dev"))
    assert (summary["questions"], summary["unanswerable"], summary["version"]) == (2_650, 1_204, "2.0")
    summary = check_file(sst2_path(None, "test"))
    assert (summary["rows"], summary["labelled"]) == (1_821, 0)
