"""Zero-shot SQuAD: the question's words in answers (`question_words`) and the focus's sentence scores.

A small model often answers with the passage's words that match the question ("Where in Antarctica is Halley
Station?" - "Antarctica"). `question_words: avoid` answers those questions again, constrained to whole words
that start at and hold a word the question does not, and trims the question's words and stop words from
every answer's ends. At the same time the passage focus (`focus: K`) came to weigh each shared word by its
inverse frequency among the passage's sentences (before, each counted 1).

Chosen on training questions, checked on dev, as squad_zeroshot_focus.py does:
1. no model: how often the focused passage still holds the answer, with each weighting, K = 1..3, on every
   50th question of SQuAD v1.1 train (rebuilt) from the 8th (1,752);
2. three configurations answer the selection sample (every 500th training question from the 8th: 176):
   `count-keep` (the earlier default: shared words counted, question words kept), `idf-keep` and
   `idf-avoid` (today's default); the one with the highest F1 (it must beat count-keep; ties keep the
   earlier in that order) is chosen;
3. all three answer the dev sample (every 20th official dev question: 529), each compared with count-keep
   by the paired bootstrap of F1 and EM.
Each run is `tunelab zeroshot`'s own path (the task's zero_shot with its default prompt, grounded decoding,
focus 2), on SmolLM2-135M-Instruct in tunelab's evaluation dtype. `count` weighting is this script's copy of
the earlier focus code, put in place of the task's for those runs.

    # ~12 min on 2 cores -> results/squad-zeroshot-question-words-cpu.json
    python benchmarks/squad_zeroshot_question_words.py \
        --out benchmarks/results/squad-zeroshot-question-words-cpu.json
    # the whole official dev set (10,570) with today's defaults only, ~35 min on 2 cores
    python benchmarks/squad_zeroshot_question_words.py --whole-dev \
        --out benchmarks/results/squad-zeroshot-question-words-dev-cpu.json
    # SQuAD v2.0 (its article-level splits; v2's default focus is 0, so only keep and avoid differ)
    python benchmarks/squad_zeroshot_question_words.py --task squad_v2 \
        --out benchmarks/results/squad-v2-zeroshot-question-words-cpu.json
    # a trial: prints, writes nothing without --out
    python benchmarks/squad_zeroshot_question_words.py --select 16 --dev-limit 16
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from machine_info import git_commit, machine
from squad_zeroshot_focus import SAMPLES  # the same training and dev samples

import tunelab.tasks.extractive_qa.task as qa_task
from tunelab.metrics import bootstrap_ci, paired_bootstrap
from tunelab.models import load_causal_lm, load_tokenizer
from tunelab.options import ZeroShotOptions
from tunelab.outputs import write_json
from tunelab.precision import eval_dtype
from tunelab.tasks import get_task
from tunelab.tasks.extractive_qa.focus import focus_passage, sentence_spans
from tunelab.tasks.extractive_qa.metrics import per_example_scores
from tunelab.tasks.extractive_qa.question_words import content_words, is_echo

ROOT = Path(__file__).resolve().parent.parent
RECALL_EVERY = 50  # the no-model recall sample: every 50th training question from the 8th
CONFIGS = {  # name: (focus weighting, question_words)
    "count-keep": ("count", "keep"),
    "idf-keep": ("idf", "keep"),
    "idf-avoid": ("idf", "avoid"),
}


def count_focus(passage: str, question: str, sentences: int, keep: tuple[int, int] | None = None) -> str:
    """The focus before IDF weighting: sentences ranked by the number of distinct question words they hold."""
    spans = sentence_spans(passage)
    if sentences <= 0 or len(spans) <= sentences:
        return passage
    words = content_words(question)
    overlap = [len(words & content_words(passage[a:b])) for a, b in spans]
    first = [i for i, (a, b) in enumerate(spans) if keep and a < keep[1] and keep[0] < b]
    rest = sorted((i for i in range(len(spans)) if i not in first), key=lambda i: -overlap[i])
    chosen = sorted(first + rest[: max(0, sentences - len(first))])
    return " ".join(passage[spans[i][0] : spans[i][1]] for i in chosen)


FOCUS = {"count": count_focus, "idf": focus_passage}


@contextmanager
def weighting(name: str):
    """The task's focus function replaced by `name`'s for the runs inside."""
    saved = qa_task.focus_passage
    qa_task.focus_passage = FOCUS[name]
    try:
        yield
    finally:
        qa_task.focus_passage = saved


def answer_kept(examples, weigh: str, k: int) -> float:
    """Percent of `examples` whose first answer lies inside the passage focused to K sentences."""
    held = 0
    for ex in examples:
        answer = ex.answers[0]
        start, end = answer["answer_start"], answer["answer_start"] + len(answer["text"])
        spans = sentence_spans(ex.context)
        if len(spans) <= k:
            held += 1
            continue
        chosen = FOCUS[weigh](ex.context, ex.question, k)
        kept = [(a, b) for a, b in spans if ex.context[a:b] in chosen]
        held += any(a <= start and end <= b for a, b in kept)
    return round(100.0 * held / len(examples), 2)


def scores(task, model, tok, examples, config: str, batch_size: int) -> tuple[list, list, float, int]:
    """Per-question F1 and EM (0..100) of zero-shot answers under `config`, the wall seconds, and how many
    answers are echoes of their question (`is_echo`; the no-answers of v2.0 aside)."""
    weigh, words = CONFIGS[config]
    options = ZeroShotOptions(
        **{**task.zeroshot_options(), "question_words": words, "batch_size": batch_size}
    )
    # positions as ids: the rebuilt training file's synthetic ids need not be unique
    examples = [replace(ex, id=str(k)) for k, ex in enumerate(examples)]
    t0 = time.perf_counter()
    with weighting(weigh):
        predictions, _ = task.zero_shot(model, tok, examples, options)
    seconds = time.perf_counter() - t0
    refs = {ex.id: [a["text"] for a in ex.answers] for ex in examples}
    v2 = {"version_2": True, "na_probs": predictions.na_scores, "na_threshold": predictions.na_threshold}
    per = per_example_scores(predictions.answers, refs, **(v2 if task.version_2 else {}))
    rows = [per[ex.id] for ex in examples]
    echoes = sum(bool(a) and is_echo(a, ex.question) for ex in examples for a in [predictions.answers[ex.id]])
    return [100.0 * r["f1"] for r in rows], [100.0 * r["exact_match"] for r in rows], seconds, echoes


def summary(f1: list[float], em: list[float], seconds: float, echoes: int) -> dict:
    return {
        "exact_match": float(np.mean(em)),
        "f1": float(np.mean(f1)),
        "f1_ci95": bootstrap_ci(f1),
        "seconds": round(seconds, 1),
        "echo_answers": echoes,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--task", choices=tuple(SAMPLES), default="squad", help="SQuAD v1.1 or v2.0 (squad_v2)")
    ap.add_argument("--select", type=int, default=None, help="only the first N selection questions (a trial)")
    ap.add_argument("--dev-limit", type=int, default=None, help="only the first N dev questions (a trial)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--whole-dev", action="store_true", help="only: every dev question, today's defaults")
    ap.add_argument("--out", default=None, help="result JSON (nothing is written without it)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data_dir = os.environ.get("TUNELAB_DATA_DIR") or str(ROOT.parent / "shared" / "data")
    task = get_task(args.task)
    train, train_file = task.load_split("train", data_dir)
    dev, dev_file = task.load_split("dev", data_dir)
    (every, offset), dev_every = SAMPLES[args.task]
    select = train[offset::every][: args.select]
    dev_every = 1 if args.whole_dev else dev_every
    dev = dev[::dev_every][: args.dev_limit]
    focus = task.zeroshot_options()["focus"]
    # with the whole passage the weighting changes nothing: the focus configurations collapse
    configs = list(CONFIGS) if focus else ["count-keep", "idf-avoid"]
    tok = load_tokenizer(args.model, padding_side="left")
    model = load_causal_lm(args.model, dtype=eval_dtype(torch.device("cpu"))).eval()  # as tunelab zeroshot

    out: dict = {
        "case": f"zero-shot {task.title}: focus weighting and question_words chosen on training questions, "
        "checked on dev",
        "task": args.task,
        "trial": args.select is not None or args.dev_limit is not None,
        "model": args.model,
        "decoding": task.zeroshot_options()["decoding"],
        "focus": focus,
        "configs": {name: {"focus_weighting": w, "question_words": q} for name, (w, q) in CONFIGS.items()},
        "batch_size": args.batch_size,
        "dtype": str(model.dtype).removeprefix("torch."),
        "selection_sample": f"{len(select)} questions of {train_file}: every {every}th from index {offset}",
        "dev_sample": f"{len(dev)} questions of {dev_file}"
        + (f": every {dev_every}th" if dev_every > 1 else " (every one)"),
        "machine": machine("cpu"),
        "git_commit": git_commit(),
        "command": "python benchmarks/squad_zeroshot_question_words.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
        "complete": False,
    }

    def save() -> None:
        print(json.dumps({k: v for k, v in out.items() if k != "machine"}, indent=1), file=sys.stderr)
        if args.out:
            write_json(Path(args.out), out)  # in one step: a run cut short leaves a whole file

    if args.whole_dev:
        out["case"] = f"zero-shot {task.title}, the whole dev file, today's defaults (idf-avoid)"
        f1, em, seconds, echoes = scores(task, model, tok, dev, "idf-avoid", args.batch_size)
        out["dev"] = {"idf-avoid": summary(f1, em, seconds, echoes)}
        out["complete"] = True
        save()
        return 0
    if focus and not task.version_2:
        recall_sample = train[offset::RECALL_EVERY]
        out["answer_in_focus"] = {
            "sample": f"{len(recall_sample)} questions of {train_file}: every {RECALL_EVERY}th from index "
            f"{offset}",
            **{w: {str(k): answer_kept(recall_sample, w, k) for k in (1, 2, 3)} for w in FOCUS},
        }
    out["selection"] = {}
    for name in configs:
        out["selection"][name] = summary(*scores(task, model, tok, select, name, args.batch_size))
        save()
    best = max(configs, key=lambda c: (out["selection"][c]["f1"], -configs.index(c)))
    out["chosen"] = best
    dev_f1, dev_em = {}, {}
    out["dev"] = {}
    for name in configs:
        dev_f1[name], dev_em[name], seconds, echoes = scores(task, model, tok, dev, name, args.batch_size)
        out["dev"][name] = summary(dev_f1[name], dev_em[name], seconds, echoes)
        save()
    base = configs[0]
    out["dev_minus_count_keep"] = {
        name: {
            "f1": paired_bootstrap(dev_f1[base], dev_f1[name]),
            "em": paired_bootstrap(dev_em[base], dev_em[name]),
        }
        for name in configs[1:]
    }
    out["complete"] = True
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
