"""Zero-shot classification with and without `detokenize` (inputs shown as ordinary text), chosen on training
sentences, checked on dev.

For each task (SST-2, and TREC-6 from configs/tasks/trec.yaml: both Penn-Treebank tokenised, SST-2 also
lowercased), both settings run through the task's own zero-shot path (`ClassificationTask.zero_shot`, the
task's default prompt and calibration) on a selection sample of its training split (SST-2: 1,000 sentences
of >= 10 words, shuffled with seed 0, as benchmarks/zeroshot_prompts.py; TREC: 1,000 questions, shuffled with
seed 0); the better one on it (`off` unless `on` is strictly better) is `chosen`. Both are then scored on the
whole dev split (TREC: its official test set), with the paired bootstrap of the difference (on - off) and
McNemar's test (a: off, b: on: `only_b_correct` are the examples detokenizing gained).

    .venv/bin/python benchmarks/zeroshot_detokenize.py [--tasks sst2,trec] [--select 1000] [--out FILE]

Writes benchmarks/results/zeroshot-detokenize-<device>.json at full size (a trial with --select/--dev-limit
writes only with --out), rewritten after every stage.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from machine_info import git_commit, machine

from tunelab.metrics import bootstrap_ci, mcnemar, paired_bootstrap
from tunelab.models import load_causal_lm, load_tokenizer
from tunelab.options import ZeroShotOptions
from tunelab.outputs import write_json
from tunelab.precision import eval_dtype
from tunelab.tasks.base import load_task

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
TASKS = {"sst2": "sst2", "trec": str(ROOT / "configs" / "tasks" / "trec.yaml")}
SST2_MIN_WORDS = 10  # SST-2's training split also holds phrases; dev holds whole sentences


def selection(name: str, train: list, size: int) -> tuple[list, str]:
    pool = [ex for ex in train if len(ex.text.split()) >= SST2_MIN_WORDS] if name == "sst2" else list(train)
    random.Random(0).shuffle(pool)
    about = f">= {SST2_MIN_WORDS} words, " if name == "sst2" else ""
    return pool[:size], f"{min(size, len(pool))} of the training split ({about}shuffled, seed 0)"


def correct(task, model, tok, examples: list, detokenize: bool, batch_size: int) -> list[float]:
    """Per-example correctness (0/100) of the task's default zero-shot with `detokenize`."""
    options = ZeroShotOptions(
        **{**task.zeroshot_options(), "detokenize": detokenize, "batch_size": batch_size}
    )
    scores, _ = task.zero_shot(model, tok, examples, options)
    gold = np.array([ex.label for ex in examples])
    return [100.0 * c for c in (scores.log_probs.argmax(1) == gold)]


def summary(scores: list[float], seconds: float) -> dict:
    return {"accuracy": float(np.mean(scores)), "ci95": bootstrap_ci(scores), "seconds": round(seconds, 1)}


def measure(name: str, model, tok, data_dir: str | None, args, out: dict, save) -> None:
    task = load_task(TASKS[name])
    train, train_file = task.load_split("train", data_dir)
    dev, dev_file = task.load_split("dev", data_dir)
    select, about = selection(name, train, args.select)
    if args.dev_limit:
        dev = dev[: args.dev_limit]
    out.update(
        prompt=task.zeroshot_options()["prompt"],
        calibration=task.zeroshot_options()["calibration"],
        task_default=task.zeroshot_options()["detokenize"],
        selection_sample=f"{about}: {train_file}",
        dev_sample=f"{dev_file}, {'the first ' if args.dev_limit else 'every one of '}{len(dev)}",
        example=[
            {"as_read": ex.text, "detokenized": t.text}
            for ex, t in zip(select[:3], _plain(select[:3]), strict=True)
        ],
        selection={},
        dev={},
    )
    for stage, examples in (("selection", select), ("dev", dev)):
        per = {}
        for key in ("off", "on"):
            t0 = time.perf_counter()
            per[key] = correct(task, model, tok, examples, key == "on", args.batch_size)
            out[stage][key] = summary(per[key], time.perf_counter() - t0)
            print(f"{name} {stage} {key}: {out[stage][key]['accuracy']:.2f}", file=sys.stderr, flush=True)
            save()
        out[f"{stage}_on_minus_off"] = paired_bootstrap(per["off"], per["on"])
        # a: off, b: on, so that its difference is on - off too (as a fraction); only_b_correct: gained
        out[f"{stage}_mcnemar"] = mcnemar(np.array(per["off"]) > 0, np.array(per["on"]) > 0)
        if stage == "selection":
            out["chosen"] = (
                "on" if out["selection"]["on"]["accuracy"] > out["selection"]["off"]["accuracy"] else "off"
            )
        save()


def _plain(examples: list) -> list:
    from tunelab.tasks.classification.detokenize import detokenize

    return [replace(ex, text=detokenize(ex.text)) for ex in examples]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--data-dir", default=None, help="default: $TUNELAB_DATA_DIR or ../shared/data")
    ap.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated, of {', '.join(TASKS)}")
    ap.add_argument("--select", type=int, default=None, help="selection sample size (default 1000)")
    ap.add_argument("--dev-limit", type=int, default=None, help="only the first K dev examples (trial)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument(
        "--out", default=None, help="result JSON (default: results/zeroshot-detokenize-DEVICE.json)"
    )
    args = ap.parse_args()
    names = args.tasks.split(",")
    if any(n not in TASKS for n in names):
        ap.error(f"--tasks: each of {', '.join(TASKS)}")
    if (args.select is not None and args.select < 1) or (args.dev_limit is not None and args.dev_limit < 1):
        ap.error("--select and --dev-limit must be positive")
    if args.threads:
        torch.set_num_threads(args.threads)
    trial = args.select is not None or args.dev_limit is not None
    args.select = args.select or 1000
    device = "cuda" if torch.cuda.is_available() else "cpu"
    out = Path(args.out) if args.out else (None if trial else RESULTS / f"zeroshot-detokenize-{device}.json")

    tok = load_tokenizer(args.model)
    model = load_causal_lm(args.model, dtype=eval_dtype(torch.device(device))).to(device).eval()
    result = {
        "case": "zero-shot classification, inputs as read vs detokenized: chosen on training samples, "
        "checked on dev",
        "trial": trial,
        "model": args.model,
        "batch_size": args.batch_size,
        "dtype": str(model.dtype).removeprefix("torch."),
        "tasks": {},
        "complete": False,
        "machine": machine(device),
        "git_commit": git_commit(),
        "command": "python benchmarks/zeroshot_detokenize.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
    }

    def save() -> None:
        if out is not None:
            write_json(out, result)

    for name in names:
        result["tasks"][name] = {}
        measure(name, model, tok, args.data_dir, args, result["tasks"][name], save)
    result["complete"] = True
    save()
    print(json.dumps(result, indent=2))
    if out is not None:
        print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
