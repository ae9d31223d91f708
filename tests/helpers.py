"""Small builders the tests share (fixtures live in conftest.py)."""

from __future__ import annotations

import numpy as np

from tunelab.data.squad import SquadExample
from tunelab.data.sst2 import SST2Example
from tunelab.tasks.classification import Prompt
from tunelab.training import TrainConfig

PLAIN = Prompt.from_config({"text": "Review: {sentence}\nSentiment:",
                            "verbalizers": {"negative": [" negative", " Negative"], "positive": [" positive"]}})


def sst2_examples(n: int = 48, seed: int = 0) -> list[SST2Example]:
    """A learnable SST-2-like set: the label is which word ("great"/"awful") the sentence holds."""
    rng = np.random.default_rng(seed)
    fill = ["a", "film", "movie", "the", "and", "truly", "review"]
    out = []
    for i in range(n):
        label = i % 2
        words = list(rng.choice(fill, size=int(rng.integers(2, 8))))
        words.insert(int(rng.integers(0, len(words) + 1)), "great" if label else "awful")
        out.append(SST2Example(" ".join(words), label, i + 2))
    return out


def tiny_train_config(**kw) -> TrainConfig:
    """Settings that train the tiny test model in seconds."""
    base = {"learning_rate": 3e-3, "epochs": 1, "batch_size": 8, "max_length": 32, "warmup_ratio": 0.0, "log_every": 2,
                "seed": 0, "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0}
    base.update(kw)
    return TrainConfig(**base)


def qa_examples(n):
    out = []
    for i in range(n):
        who = ["Denver Broncos", "Santa Clara", "the film"][i % 3]
        ctx = f"The game was won by the {who} in the end . It was a great film and a good review ."
        out.append(SquadExample(id=f"q{i}", title="t", context=ctx, question="Who won ?",
                                answers=[{"text": who, "answer_start": ctx.index(who)}]))
    return out
