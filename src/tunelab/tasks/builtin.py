"""The built-in tasks, written as task files are (see configs/tasks/*.yaml and docs/architecture.md): SST-2,
SQuAD v1.1 and SQuAD v2.0, read from the data folder (`--data-dir`, a study's data_dir, $TUNELAB_DATA_DIR).

What each data file is comes from ../shared/data/SOURCES.md: SST-2 is GLUE's files byte for byte;
`squad/v1.1-dev.json` is the official v1.1 dev set and `squad/v1.1-train.json` the whole training set rebuilt
("SQuAD v1.1 train (rebuilt)"); the v2.0 files are article-level splits of the official v2.0 dev set, so their
scores are not comparable with published SQuAD 2.0 numbers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tunelab.tasks.base import Task

SST2_VERBALIZERS = {"negative": [" negative", " Negative"], "positive": [" positive", " Positive"]}

SST2_QUESTION = (
    "Is the sentiment of this movie review positive or negative? Answer with one word.\n\nReview: {sentence}"
)

SST2 = {
    "title": "SST-2",
    "kind": "classification",
    "description": "binary sentiment classification (GLUE SST-2)",
    "unit": "sentences",
    "data": {
        "relative_to": "data_dir",
        "text": "sentence",
        "label": "label",
        "splits": {
            "train": [
                {"file": f"{d}/train.tsv", "name": "GLUE SST-2 train", "official": True}
                for d in ("SST-2", "sst2")
            ],
            "dev": [
                {"file": f"{d}/dev.tsv", "name": "GLUE SST-2", "official": True} for d in ("SST-2", "sst2")
            ],
            "test": [
                {"file": f"{d}/test.tsv", "name": "GLUE SST-2 test (unlabelled)", "official": True}
                for d in ("SST-2", "sst2")
            ],
        },
    },
    "labels": ["negative", "positive"],
    "verbalizers": SST2_VERBALIZERS,
    "prompts": {  # {sentence} is the text; `chat` wraps it in the model's chat template (instruct models)
        "chat": {  # the answer started for the model: "Sentiment:" then the label word
            "text": SST2_QUESTION,
            "chat": True,
            "answer_prefix": "Sentiment:",
            "verbalizers": SST2_VERBALIZERS,
        },
        # The zero-shot default: chosen among benchmarks/zeroshot_prompts.yaml's candidates on SST-2 train
        # sentences, then 84.98% against chat's 83.03% on dev (paired bootstrap p 0.03,
        # benchmarks/results/zeroshot-prompts-cpu.json). Fine-tuning keeps `chat` as its input prompt: its
        # figures were measured with it.
        "chat-sentiment-is": {
            "text": SST2_QUESTION,
            "chat": True,
            "answer_prefix": "The sentiment of this review is",
            "verbalizers": SST2_VERBALIZERS,
        },
        "plain": {
            "text": "Review: {sentence}\nSentiment (positive or negative):",
            "chat": False,
            "verbalizers": SST2_VERBALIZERS,
        },
        "harness": {  # lm-evaluation-harness's GLUE sst2 prompt
            "text": "{sentence}\nQuestion: Is this sentence positive or negative?\nAnswer:",
            "chat": False,
            "verbalizers": {"negative": [" negative"], "positive": [" positive"]},
        },
    },
    "example": "a gorgeous , witty , seductive movie .",
    # detokenize: the sentences as ordinary text ("it's", not "it 's"); chosen on SST-2 training sentences,
    # then +1.9 points on dev (benchmarks/results/zeroshot-detokenize-cpu.json)
    "zeroshot": {"prompt": "chat-sentiment-is", "calibration": "batch", "batch_size": 32, "detokenize": True},
    "finetune": {"input_prompt": "chat", "learning_rate": 2e-5, "batch_size": 32, "max_length": 128},
    "hub": {"dataset": "nyu-mll/glue", "config": "sst2"},
    "card": {
        "limitations": [
            "Trained on SST-2 movie-review sentences (lower-cased, PTB-tokenised: `it 's`, `-lrb-`); "
            "other domains and text styles will score lower.",
            "Two labels only (negative/positive): neutral or mixed text is forced into one of them.",
        ]
    },
}

REBUILT_NOTE = (
    "the v1.1 training set rebuilt from the SQuAD explorer's pages (../shared/data/SOURCES.md): the "
    "official questions and answers, but not all official question ids and answer positions"
)
ARTICLE_NOTE = (
    "an article-level split of the official SQuAD v2.0 dev set (the v2.0 training set is not "
    "available offline): training used other articles of the same dev set, so these scores are not "
    "comparable with published SQuAD 2.0 numbers"
)
QA_LIMITATIONS = ["English Wikipedia passages; other domains will score lower."]
QA_EXAMPLE = {
    "question": "Who won Super Bowl 50?",
    "context": "The Denver Broncos won Super Bowl 50 in Santa Clara.",
}


def _squad_files(version: str, split: str, ours: dict) -> list[dict]:
    """This project's file for a split, then the official file names (in squad/ or at the top)."""
    hub = "validation" if split == "dev" else split
    official = {"name": f"SQuAD v{version}" + ("" if split == "dev" else f" {hub}"), "official": True}
    return [
        {"file": f"squad/v{version}-{split}.json", **ours},
        {"file": f"squad/{split}-v{version}.json", **official},
        {"file": f"{split}-v{version}.json", **official},
    ]


SQUAD = {
    "title": "SQuAD v1.1",
    "kind": "extractive_qa",
    "description": "extractive question answering (SQuAD v1.1)",
    "version": "1.1",
    "versions": {"2.0": "squad_v2"},
    "data": {
        "relative_to": "data_dir",
        "splits": {
            "train": _squad_files(
                "1.1", "train", {"name": "SQuAD v1.1 train (rebuilt)", "note": REBUILT_NOTE}
            ),
            "dev": _squad_files("1.1", "dev", {"name": "SQuAD v1.1", "official": True}),
        },
    },
    "example": QA_EXAMPLE,
    # focus 2: the passage's two sentences nearest the question; chosen on SQuAD v1.1 train (rebuilt)
    # questions, +5.0 F1 on the official dev sample (benchmarks/results/squad-zeroshot-focus-cpu.json)
    "zeroshot": {"prompt": "chat", "batch_size": 16, "max_new_tokens": 32, "focus": 2},
    "finetune": {"learning_rate": 3e-5, "batch_size": 12, "epochs": 2, "max_length": 384},
    "hub": {"dataset": "rajpurkar/squad", "config": "plain_text"},
    "card": {"limitations": QA_LIMITATIONS},
}

SQUAD_V2 = {
    **SQUAD,
    "title": "SQuAD v2.0",
    "description": "extractive question answering with unanswerable questions (SQuAD v2.0)",
    "version": "2.0",
    "versions": {"1.1": "squad"},
    "enabled": False,
    "data": {
        "relative_to": "data_dir",
        "splits": {
            "train": _squad_files(
                "2.0",
                "train",
                {
                    "name": "SQuAD v2.0 (article-level split of the official dev set, training part)",
                    "note": ARTICLE_NOTE,
                },
            ),
            "dev": _squad_files(
                "2.0",
                "dev",
                {"name": "SQuAD v2.0 (article-level split of the official dev set)", "note": ARTICLE_NOTE},
            ),
        },
    },
    # the whole passage: focus 1, chosen on v2.0 training questions, gained +4.1 F1 on the dev sample, not
    # significantly (p 0.065; benchmarks/results/squad-v2-zeroshot-focus-cpu.json)
    "zeroshot": {**SQUAD["zeroshot"], "focus": 0},
    "hub": {"dataset": "rajpurkar/squad_v2", "config": "squad_v2"},
}

BUILTIN = {"sst2": SST2, "squad": SQUAD, "squad_v2": SQUAD_V2}

# `tunelab data check FILE` without --task: the built-in task whose format a file suffix is
BY_SUFFIX = {".json": "squad", ".tsv": "sst2", ".csv": "sst2", ".jsonl": "sst2"}


def task_for_file(path: str) -> Task:
    """The built-in task a data file's suffix says it is for (SQuAD JSON, SST-2 TSV/CSV/JSONL)."""
    from pathlib import Path

    from tunelab.errors import DataError
    from tunelab.tasks.base import get_task

    suffix = Path(path).suffix.lower()
    if suffix not in BY_SUFFIX:
        if not Path(path).exists():
            raise DataError(path, "file not found")
        raise DataError(
            path,
            f"unknown data file type {suffix or '(no suffix)'!r}: expected .json (SQuAD) or "
            ".tsv/.csv/.jsonl (SST-2); give --task for a task of your own",
        )
    return get_task(BY_SUFFIX[suffix])
