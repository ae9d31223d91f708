"""Zero-shot prompt search: candidates chosen on the training files, the choice checked on dev.

Every candidate prompt of benchmarks/zeroshot_prompts.yaml is scored on a fixed sample of the task's
*training* file; the best one (it must beat the task's default, ties keep the default) is then scored
beside the default on the dev sample, with a paired bootstrap of the difference. Choosing on dev and
reporting dev would overstate the gain; the training files are never what tunelab's zero-shot scores.

- SST-2: accuracy with the task's default calibration (batch) and inputs (detokenized since 2026-12-06: the
  results saved before hold the sentences as read; benchmarks/zeroshot_detokenize.py). The selection sample
  is training sentences of at least 10 words, shuffled with seed 0 (the training file also holds short phrase
  fragments of those sentences, which dev does not); dev is the whole GLUE dev file (872).
- SQuAD v1.1: F1 of greedy free generation (tunelab's default decoding when it was measured). Selection:
  every 500th question of SQuAD v1.1 train (rebuilt), from the 8th (175 questions); dev: every 20th question
  of the official dev set (529), the sample of benchmarks/squad_zeroshot_decoding.py.

    # both tasks at full size: ~45 min on 2 cores -> results/zeroshot-prompts-cpu.json
    python benchmarks/zeroshot_prompts.py
    # a trial: prints, writes nothing without --out
    python benchmarks/zeroshot_prompts.py --tasks sst2 --select 64 --dev-limit 64
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from machine_info import git_commit, machine

from tunelab.config_files import read_mapping
from tunelab.errors import UsageError
from tunelab.metrics import bootstrap_ci, mcnemar, paired_bootstrap
from tunelab.models import load_causal_lm, load_tokenizer
from tunelab.outputs import write_json
from tunelab.precision import eval_dtype
from tunelab.tasks import get_task
from tunelab.tasks.classification.detokenize import detokenize
from tunelab.tasks.classification.zero_shot import Calibration, zero_shot
from tunelab.tasks.extractive_qa.generation import generate_answers
from tunelab.tasks.extractive_qa.metrics import per_example_scores

ROOT = Path(__file__).resolve().parent.parent
CANDIDATES = ROOT / "benchmarks" / "zeroshot_prompts.yaml"
RESULTS = ROOT / "benchmarks" / "results"
TASKS = ("sst2", "squad")
SST2_MIN_WORDS = 10
SQUAD_SELECT = (500, 7)  # every 500th training question, from index 7
SQUAD_DEV_EVERY = 20


def default_data_dir() -> str:
    return os.environ.get("TUNELAB_DATA_DIR") or str(ROOT.parent / "shared" / "data")


def samples(name: str, data_dir: str, args) -> tuple[list, str, list, str]:
    """(selection examples, what they are, dev examples, what they are) of a task."""
    task = get_task(name)
    train, train_file = task.load_split("train", data_dir)
    dev, dev_file = task.load_split("dev", data_dir)
    if name == "sst2":
        select = [ex for ex in train if len(ex.text.split()) >= SST2_MIN_WORDS]
        random.Random(0).shuffle(select)
        select = select[: args.select]
        about = f"{len(select)} sentences of {train_file} with >= {SST2_MIN_WORDS} words, shuffled (seed 0)"
        dev_about = f"{dev_file}, every sentence"
    else:
        every, offset = SQUAD_SELECT
        select = train[offset::every][: args.select]
        about = f"{len(select)} questions of {train_file}: every {every}th from index {offset}"
        dev = dev[::SQUAD_DEV_EVERY]
        dev_about = f"{dev_file}, every {SQUAD_DEV_EVERY}th question"
    if args.dev_limit is not None:
        dev = dev[: args.dev_limit]
        dev_about += f", the first {len(dev)}"
    return select, about, dev, dev_about


def per_example(name: str, model, tok, prompt, examples, args) -> list[float]:
    """Per-example scores in 0..100 of one prompt: SST-2 correctness, SQuAD F1."""
    if name == "sst2":
        if get_task(name).zeroshot_options()["detokenize"]:  # the task's default since this search ran
            examples = [replace(ex, text=detokenize(ex.text)) for ex in examples]
        texts = [prompt.render(tok, ex.text, ex.text_pair) for ex in examples]
        _, calibrated = zero_shot(
            model, tok, texts, prompt, Calibration("batch"), args.batch_size, progress=False
        )
        gold = np.array([ex.label for ex in examples])
        return [100.0 * c for c in (calibrated.argmax(1) == gold)]
    _, answers, _ = generate_answers(
        model, tok, examples, prompt, batch_size=args.batch_size, progress=False, decoding="free"
    )
    # positions as keys: the rebuilt training file's synthetic ids need not be unique
    refs = {str(k): [a["text"] for a in ex.answers] for k, ex in enumerate(examples)}
    scores = per_example_scores({str(k): a for k, a in enumerate(answers)}, refs)
    return [100.0 * scores[str(k)]["f1"] for k in range(len(examples))]


def summary(scores: list[float], seconds: float) -> dict:
    return {
        "score": float(np.mean(scores)),
        "ci95": bootstrap_ci(scores),
        "seconds": round(seconds, 1),
    }


def search(name: str, candidates: dict, model, tok, data_dir: str, args, out: dict, save) -> None:
    """Fills `out` stage by stage (`save` after each)."""
    task = get_task(name)
    prompts = {k: task.prompt(v) for k, v in candidates.items()}
    select, about, dev, dev_about = samples(name, data_dir, args)
    metric = "accuracy (batch calibration)" if name == "sst2" else "F1 (free generation)"
    out.update(metric=metric, selection_sample=about, dev_sample=dev_about, selection={})
    for key, prompt in prompts.items():
        t0 = time.perf_counter()
        scores = per_example(name, model, tok, prompt, select, args)
        out["selection"][key] = {"prompt": candidates[key], **summary(scores, time.perf_counter() - t0)}
        print(f"{name} selection {key}: {out['selection'][key]['score']:.2f}", file=sys.stderr)
        save()
    best = max(out["selection"], key=lambda k: out["selection"][k]["score"])
    if out["selection"][best]["score"] <= out["selection"]["default"]["score"]:
        best = "default"
    out["chosen"] = best
    dev_scores = {}
    for key in dict.fromkeys(["default", best]):
        t0 = time.perf_counter()
        dev_scores[key] = per_example(name, model, tok, prompts[key], dev, args)
        out.setdefault("dev", {})[key] = summary(dev_scores[key], time.perf_counter() - t0)
        save()
    if best != "default":
        out["dev_chosen_minus_default"] = paired_bootstrap(dev_scores["default"], dev_scores[best])
        if name == "sst2":
            out["dev_mcnemar"] = mcnemar(np.array(dev_scores[best]) > 0, np.array(dev_scores["default"]) > 0)


def check_candidates(candidates: dict, names: list[str]) -> str | None:
    """What is wrong with the candidates of the tasks `names`, or None."""
    for name in names:
        task = get_task(name)
        if not isinstance(candidates.get(name), dict):
            return f"no candidates for {name}"
        if candidates[name].get("default") != task.default_prompt:
            return f"{name}.default must be the task's default prompt {task.default_prompt!r}"
        for key, spec in candidates[name].items():
            try:
                task.prompt(spec)
            except UsageError as exc:
                return f"{name}.{key}: {exc}"
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--data-dir", default=None, help="default: $TUNELAB_DATA_DIR or ../shared/data")
    ap.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated, of {', '.join(TASKS)}")
    ap.add_argument("--candidates", default=str(CANDIDATES), help="the candidate prompts (YAML)")
    ap.add_argument(
        "--select",
        type=int,
        default=None,
        help="selection sample size (default: SST-2 1,000 sentences; SQuAD all 175 questions)",
    )
    ap.add_argument("--dev-limit", type=int, default=None, help="only the first K of the dev sample (trial)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument(
        "--out",
        default=None,
        help="result JSON (default: results/zeroshot-prompts-DEVICE.json at full size; nothing is "
        "written for a trial without it)",
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
    device = "cuda" if torch.cuda.is_available() else "cpu"
    out = Path(args.out) if args.out else (None if trial else RESULTS / f"zeroshot-prompts-{device}.json")
    candidates = read_mapping(args.candidates, "candidate prompts", "task names")
    data_dir = args.data_dir or default_data_dir()
    problem = check_candidates(candidates, names)
    if problem:  # before the model loads
        ap.error(f"{args.candidates}: {problem}")

    tok = load_tokenizer(args.model, padding_side="left")
    model = load_causal_lm(args.model, dtype=eval_dtype(torch.device(device))).to(device).eval()
    result = {
        "case": "zero-shot prompt search: chosen on training samples, checked on dev",
        "trial": trial,
        "model": args.model,
        "candidates": str(Path(args.candidates).resolve().relative_to(ROOT))
        if Path(args.candidates).resolve().is_relative_to(ROOT)
        else args.candidates,
        "batch_size": args.batch_size,
        "dtype": str(model.dtype).removeprefix("torch."),
        "sst2_detokenize": get_task("sst2").zeroshot_options()["detokenize"],
        "tasks": {},
        "complete": False,
        "machine": machine(device),
        "git_commit": git_commit(),
        "command": "python benchmarks/zeroshot_prompts.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
    }

    def save() -> None:
        if out is not None:  # rewritten after every stage, so an interrupted run keeps what it measured
            write_json(out, result)

    for name in names:
        sizes = argparse.Namespace(**vars(args))
        if sizes.select is None:
            sizes.select = 1000 if name == "sst2" else 1 << 30
        result["tasks"][name] = {}
        search(name, candidates[name], model, tok, data_dir, sizes, result["tasks"][name], save)
    result["complete"] = True
    save()
    print(json.dumps(result, indent=2))
    if out is not None:
        print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
