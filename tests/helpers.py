"""Small builders the tests share (fixtures live in conftest.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from tunelab.data.squad import SquadExample
from tunelab.data.table import TextExample
from tunelab.options import TrainConfig, ZeroShotOptions
from tunelab.tasks import get_task

SST2 = get_task("sst2")
SQUAD = get_task("squad")
PLAIN_SPEC = {
    "text": "Review: {sentence}\nSentiment:",
    "verbalizers": {"negative": [" negative", " Negative"], "positive": [" positive"]},
}
PLAIN = SST2.prompt(PLAIN_SPEC)
DATA = os.environ.get("TUNELAB_DATA_DIR")
ROOT = Path(__file__).resolve().parents[1]


def sst2_examples(n: int = 48, seed: int = 0) -> list[TextExample]:
    """A learnable SST-2-like set: the label is which word ("great"/"awful") the sentence holds."""
    rng = np.random.default_rng(seed)
    fill = ["a", "film", "movie", "the", "and", "truly", "review"]
    out = []
    for i in range(n):
        label = i % 2
        words = list(rng.choice(fill, size=int(rng.integers(2, 8))))
        words.insert(int(rng.integers(0, len(words) + 1)), "great" if label else "awful")
        out.append(TextExample(" ".join(words), label, i + 2))
    return out


def tiny_train_config(**kw) -> TrainConfig:
    """Settings that train the tiny test model in seconds."""
    base = {
        "learning_rate": 3e-3,
        "epochs": 1,
        "batch_size": 8,
        "max_length": 32,
        "warmup_ratio": 0.0,
        "log_every": 2,
        "seed": 0,
        "lora_r": 4,
        "lora_alpha": 8,
        "lora_dropout": 0.0,
    }
    base.update(kw)
    return TrainConfig(**base)


def zeroshot_options(task=SST2, **kw) -> ZeroShotOptions:
    return ZeroShotOptions(**{**task.zeroshot_options(), **kw})


def qa_examples(n):
    out = []
    for i in range(n):
        who = ["Denver Broncos", "Santa Clara", "the film"][i % 3]
        ctx = f"The game was won by the {who} in the end . It was a great film and a good review ."
        out.append(
            SquadExample(
                id=f"q{i}",
                title="t",
                context=ctx,
                question="Who won ?",
                answers=[{"text": who, "answer_start": ctx.index(who)}],
            )
        )
    return out


def squad_json(examples, path: Path) -> Path:
    """A SQuAD-format file of the examples (one article)."""
    paragraphs = [
        {
            "context": ex.context,
            "qas": [
                {
                    "id": ex.id,
                    "question": ex.question,
                    "answers": ex.answers,
                    **({"is_impossible": True} if ex.is_impossible else {}),
                }
            ],
        }
        for ex in examples
    ]
    path.write_text(json.dumps({"version": "1.1", "data": [{"title": "t", "paragraphs": paragraphs}]}))
    return path


def sst2_tsv(examples, path: Path) -> Path:
    path.write_text("sentence\tlabel\n" + "".join(f"{ex.text}\t{ex.label}\n" for ex in examples))
    return path


def full_disk(monkeypatch, writer, fail_at: int, error: BaseException | None = None) -> list:
    """Make the `fail_at`-th call of `writer` (a function such as safetensors.torch.save_file) fail as on a
    full disk, by default with OSError(ENOSPC), wherever it was imported under whatever name. Returns the
    list of calls so far."""
    import errno
    import sys

    calls: list = []

    def failing(*args, **kwargs):
        calls.append(args[1] if len(args) > 1 else kwargs.get("filename"))
        if len(calls) == fail_at:
            raise error or OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return writer(*args, **kwargs)

    for module in list(sys.modules.values()):
        for name, value in list(getattr(module, "__dict__", {}).items()):
            if value is writer:
                monkeypatch.setattr(module, name, failing)
    return calls


def training_features(n: int = 26, span: bool = False, seed: int = 0) -> list[dict]:
    """n random training features of 3-19 tokens: classification labels, or span positions (`span`)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        length = int(rng.integers(3, 20))
        f = {"input_ids": rng.integers(5, 300, size=length).tolist(), "attention_mask": [1] * length}
        if span:
            s = int(rng.integers(0, length))
            f["start_positions"], f["end_positions"] = s, int(rng.integers(s, length))
        else:
            f["labels"] = i % 2
        out.append(f)
    return out


def prompted_features(n: int = 26, prefix: int = 12) -> list[dict]:
    """Classification features that all start with the same `prefix` tokens, as a prompt's chat template
    and instruction do, then each its own tokens."""
    head = list(range(300, 300 + prefix))
    return [
        {**f, "input_ids": head + f["input_ids"], "attention_mask": [1] * (prefix + len(f["input_ids"]))}
        for f in training_features(n)
    ]
