"""`extra_train`: more training data for a task, e.g. SQuAD v1.1 train (answerable) added to v2.0 train
(which holds the unanswerable questions) while scoring on v2.0 dev; on tiny files laid out like the shared
data folder, through `tunelab finetune` and the task API."""

from __future__ import annotations

import json

import pytest
from helpers import SQUAD

from tunelab.cli import main
from tunelab.errors import UsageError
from tunelab.tasks import get_task


def squad_file(path, prefix: str, n: int, impossible: int = 0):
    """A SQuAD JSON file: n answerable questions (and `impossible` unanswerable ones), its own passages."""
    paragraphs = []
    for i in range(n + impossible):
        who = ["Broncos", "Panthers", "Rams"][i % 3]
        context = f"In game {prefix}{i} the {who} won the cup at home ."
        qa = {"id": f"{prefix}{i}", "question": "Who won the cup ?"}
        if i < n:
            qa["answers"] = [{"text": who, "answer_start": context.index(who)}]
        else:
            context = f"In game {prefix}{i} it rained all day ."
            qa.update(answers=[], is_impossible=True, plausible_answers=[])
        paragraphs.append({"context": context, "qas": [qa]})
    version = "v2.0" if impossible else "1.1"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"version": version, "data": [{"title": prefix, "paragraphs": paragraphs}]}))
    return path


@pytest.fixture
def data_dir(tmp_path):
    d = tmp_path / "data"
    squad_file(d / "squad" / "v1.1-train.json", "a", 9)
    squad_file(d / "squad" / "v1.1-dev.json", "b", 3)
    squad_file(d / "squad" / "v2.0-train.json", "c", 4, impossible=3)
    squad_file(d / "squad" / "v2.0-dev.json", "d", 3, impossible=2)
    return d


def test_v2_trains_on_v11_train_and_v20_train(tiny_model_dir, data_dir, tmp_path):
    out, alone = tmp_path / "ft", tmp_path / "alone"
    args = ["finetune", tiny_model_dir, "--task", "squad_v2", "--data-dir", str(data_dir)]
    args += ["--max-length", "48", "--epochs", "1", "--batch-size", "4", "--no-bf16"]
    assert main([*args, "--out", str(out), "--extra-train", "squad:train"]) == 0
    m = json.loads((out / "eval" / "metrics.json").read_text())
    assert m["train_examples"] == 7 + 9  # v2.0 train + v1.1 train
    assert m["train_data"].endswith("v2.0-train.json + " + str(data_dir / "squad" / "v1.1-train.json"))
    assert "best_f1" in m and m["n"] == 5  # scored as v2.0 on v2.0 dev
    assert main([*args, "--out", str(alone)]) == 0
    assert json.loads((alone / "eval" / "metrics.json").read_text())["train_examples"] == 7


def test_extra_train_refuses_overlap_and_other_kinds(data_dir):
    v2 = get_task("squad_v2")
    dev = v2.read(data_dir / "squad" / "v2.0-dev.json")
    more, what = v2.extra_training(["squad:train"], str(data_dir), dev)
    assert len(more) == 9 and what.endswith("v1.1-train.json")
    with pytest.raises(UsageError, match="shares 5 inputs with the evaluated split"):
        v2.extra_training([str(data_dir / "squad" / "v2.0-dev.json")], str(data_dir), dev)
    with pytest.raises(UsageError, match="sst2 is a classification task"):
        SQUAD.extra_training(["sst2:train"], str(data_dir), dev)
    with pytest.raises(UsageError, match=r"extra_train: nosuch:train: not a built-in TASK:SPLIT"):
        v2.extra_training(["nosuch:train"], str(data_dir), dev)
    with pytest.raises(UsageError, match="extra_train: squad:nosplit: unknown split 'nosplit'"):
        v2.extra_training(["squad:nosplit"], str(data_dir), dev)
