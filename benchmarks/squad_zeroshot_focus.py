"""Zero-shot SQuAD with the passage focused to its K sentences nearest the question (`focus: K`).

Chosen on training questions, checked on dev: every K of `--ks` answers the selection sample (every 500th
question of SQuAD v1.1 train (rebuilt) from the 8th: 176, the sample of zeroshot_prompts.py); the K with the
highest F1 (it must beat 0, the whole passage; ties keep the smaller K) then answers the dev sample (every
20th question of the official dev set: 529, the sample of squad_zeroshot_decoding.py) beside K = 0, with the
paired bootstrap of the F1 difference. Each run is `tunelab zeroshot`'s own path (the task's zero_shot with
its default prompt and decoding, grounded), on SmolLM2-135M-Instruct in tunelab's evaluation dtype.
`--task squad_v2` does the same on SQuAD v2.0's files (every 50th training question from the 8th, every 10th
dev question, the sample of squad_zeroshot_decoding.py --version 2.0), scored as v2.0 (no-answer included).

    # ~12 min on 2 cores -> results/squad-zeroshot-focus-cpu.json
    python benchmarks/squad_zeroshot_focus.py --out benchmarks/results/squad-zeroshot-focus-cpu.json
    # the whole official dev set (10,570) with focus 2 only, ~30 min on 2 cores
    python benchmarks/squad_zeroshot_focus.py --whole-dev 2 \
        --out benchmarks/results/squad-zeroshot-focus-dev-cpu.json
    # SQuAD v2.0 (its article-level splits): 185 training and 265 dev questions, ~4 min
    python benchmarks/squad_zeroshot_focus.py --task squad_v2 \
        --out benchmarks/results/squad-v2-zeroshot-focus-cpu.json
    # a trial: prints, writes nothing without --out
    python benchmarks/squad_zeroshot_focus.py --select 16 --dev-limit 16 --ks 0,2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from machine_info import git_commit, machine

from tunelab.metrics import bootstrap_ci, paired_bootstrap
from tunelab.models import load_causal_lm, load_tokenizer
from tunelab.options import ZeroShotOptions
from tunelab.outputs import write_json
from tunelab.precision import eval_dtype
from tunelab.tasks import get_task
from tunelab.tasks.extractive_qa.metrics import per_example_scores

ROOT = Path(__file__).resolve().parent.parent
# per task: (every N-th training question, from index), every N-th dev question. SQuAD v2.0's files are the
# article-level splits of its official dev set (9,223 and 2,650 questions): 185 and 265 questions.
SAMPLES = {"squad": ((500, 7), 20), "squad_v2": ((50, 7), 10)}


def scores(task, model, tok, examples, focus: int, batch_size: int) -> tuple[list[float], list[float], float]:
    """Per-question F1 and exact match (0..100) of zero-shot answers with `focus`, and the wall seconds."""
    options = ZeroShotOptions(**{**task.zeroshot_options(), "focus": focus, "batch_size": batch_size})
    # positions as ids: the rebuilt training file's synthetic ids need not be unique
    examples = [replace(ex, id=str(k)) for k, ex in enumerate(examples)]
    t0 = time.perf_counter()
    predictions, _ = task.zero_shot(model, tok, examples, options)
    seconds = time.perf_counter() - t0
    refs = {ex.id: [a["text"] for a in ex.answers] for ex in examples}
    v2 = {"version_2": True, "na_probs": predictions.na_scores, "na_threshold": predictions.na_threshold}
    per = per_example_scores(predictions.answers, refs, **(v2 if task.version_2 else {}))
    rows = [per[ex.id] for ex in examples]
    return [100.0 * r["f1"] for r in rows], [100.0 * r["exact_match"] for r in rows], seconds


def summary(f1: list[float], em: list[float], seconds: float) -> dict:
    return {
        "exact_match": float(np.mean(em)),
        "f1": float(np.mean(f1)),
        "f1_ci95": bootstrap_ci(f1),
        "seconds": round(seconds, 1),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--task", choices=tuple(SAMPLES), default="squad", help="SQuAD v1.1 or v2.0 (squad_v2)")
    ap.add_argument("--ks", default="0,1,2,3", help="the focus values tried (0: the whole passage)")
    ap.add_argument("--select", type=int, default=None, help="only the first N selection questions (a trial)")
    ap.add_argument("--dev-limit", type=int, default=None, help="only the first N dev questions (a trial)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument(
        "--whole-dev", type=int, default=None, metavar="K", help="only: every dev question with focus K"
    )
    ap.add_argument("--out", default=None, help="result JSON (nothing is written without it)")
    args = ap.parse_args()
    ks = sorted({int(k) for k in args.ks.split(",")} | {0})
    if args.threads:
        torch.set_num_threads(args.threads)
    data_dir = os.environ.get("TUNELAB_DATA_DIR") or str(ROOT.parent / "shared" / "data")
    task = get_task(args.task)
    train, train_file = task.load_split("train", data_dir)
    dev, dev_file = task.load_split("dev", data_dir)
    (every, offset), dev_every = SAMPLES[args.task]
    select = train[offset::every][: args.select]
    dev_every = 1 if args.whole_dev is not None else dev_every
    dev = dev[::dev_every][: args.dev_limit]
    tok = load_tokenizer(args.model, padding_side="left")
    model = load_causal_lm(args.model, dtype=eval_dtype(torch.device("cpu"))).eval()  # as tunelab zeroshot

    out: dict = {
        "case": f"zero-shot {task.title}, passage focus K chosen on training questions, checked on dev",
        "task": args.task,
        "trial": args.select is not None or args.dev_limit is not None,
        "model": args.model,
        "decoding": task.zeroshot_options()["decoding"],
        "batch_size": args.batch_size,
        "dtype": str(model.dtype).removeprefix("torch."),
        "selection_sample": f"{len(select)} questions of {train_file}: every {every}th from index {offset}",
        "dev_sample": f"{len(dev)} questions of {dev_file}"
        + (f": every {dev_every}th" if dev_every > 1 else " (every one)"),
        "selection": {},
        "machine": machine("cpu"),
        "git_commit": git_commit(),
        "command": "python benchmarks/squad_zeroshot_focus.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
        "complete": False,
    }

    def save() -> None:
        print(json.dumps({k: v for k, v in out.items() if k != "machine"}, indent=1), file=sys.stderr)
        if args.out:
            write_json(Path(args.out), out)  # in one step: a run cut short leaves a whole file

    if args.whole_dev is not None:
        out["case"] = f"zero-shot {task.title}, the whole dev file, focus {args.whole_dev}"
        del out["selection_sample"], out["selection"]
        f1, em, seconds = scores(task, model, tok, dev, args.whole_dev, args.batch_size)
        out["dev"] = {str(args.whole_dev): summary(f1, em, seconds)}
        out["complete"] = True
        save()
        return 0
    for k in ks:
        f1, em, seconds = scores(task, model, tok, select, k, args.batch_size)
        out["selection"][str(k)] = summary(f1, em, seconds)
        save()
    best = max(ks, key=lambda k: (out["selection"][str(k)]["f1"], -k))  # ties: the smaller K
    out["chosen"] = best
    dev_f1, dev_em = {}, {}
    out["dev"] = {}
    for k in dict.fromkeys([0, best]):
        dev_f1[k], dev_em[k], seconds = scores(task, model, tok, dev, k, args.batch_size)
        out["dev"][str(k)] = summary(dev_f1[k], dev_em[k], seconds)
        save()
    if best:
        out["dev_chosen_minus_whole_f1"] = paired_bootstrap(dev_f1[0], dev_f1[best])
        out["dev_chosen_minus_whole_em"] = paired_bootstrap(dev_em[0], dev_em[best])
    out["complete"] = True
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
