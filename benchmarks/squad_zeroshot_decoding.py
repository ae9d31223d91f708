"""Zero-shot SQuAD: free generation, extractive decoding and grounded answers, on a fixed sample of a file.

Every question of the sample is answered by SmolLM2-135M-Instruct (default) from tunelab's default zero-shot
prompt (the chat template, the answer started as `The answer is "`), greedily, three ways, each through
`tunelab.tasks.extractive_qa.generation.generate_answers` as `tunelab zeroshot` calls it, in the same batches
(the sample sorted by prompt length, cut into `--batch-size` questions): *free* stops at a newline or the
closing quote; *extractive* adds `tunelab.decoding.ExtractiveSpans`, which allows only tokens that keep the
answer a piece of the passage, plus a stop; *grounded* (tunelab's default) generates freely, replaces each
answer by its closest passage span (`ground_answer`) and answers the questions whose answer shares no word
with the passage again, extractive. Each batch is answered the three ways one after the other, so that a
change in the machine's load falls on all alike; each mode's wall seconds are its own calls.

`--version 2.0` scores a v2.0 file (default: squad/v2.0-dev.json): the no-answer word is allowed as a whole
answer, and an answer is "" when the model says it or its first-token no-answer probability is above 0.5.

Reports the official SQuAD exact match and F1 (tunelab.tasks.extractive_qa.metrics; v2.0 also HasAns/NoAns),
F1's 95% bootstrap interval, the paired bootstrap of each F1 difference, the share of non-empty answers found
in their passage, how many grounded answers came from the extractive pass, and the wall seconds.

    # v1.1 dev, every 20th question (529), 12 min on 2 cores -> results/squad-zeroshot-decoding-cpu.json
    python benchmarks/squad_zeroshot_decoding.py
    # the selection sample: every 500th question of SQuAD v1.1 train (rebuilt) from the 8th, 175
    python benchmarks/squad_zeroshot_decoding.py --data $TUNELAB_DATA_DIR/squad/v1.1-train.json --every 500 \\
        --offset 7 --limit 175 --out benchmarks/results/squad-zeroshot-decoding-train-cpu.json
    # a trial: prints, writes nothing without --out
    python benchmarks/squad_zeroshot_decoding.py --limit 16
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
from machine_info import git_commit, machine

from tunelab.data.squad import read_squad
from tunelab.metrics import bootstrap_ci, paired_bootstrap
from tunelab.models import load_causal_lm, load_tokenizer
from tunelab.precision import eval_dtype
from tunelab.tasks.extractive_qa.generation import generate_answers, ground_answer, load_prompt
from tunelab.tasks.extractive_qa.metrics import per_example_scores, squad_v1, squad_v2

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "squad-zeroshot-decoding-cpu.json"
MODES = ("free", "extractive", "grounded")
NA_THRESHOLD = 0.5  # as tunelab's zero-shot v2.0 answers are thresholded


def default_data(version: str) -> str:
    data_dir = os.environ.get("TUNELAB_DATA_DIR") or str(ROOT.parent / "shared" / "data")
    return str(Path(data_dir) / "squad" / ("v1.1-dev.json" if version == "1.1" else "v2.0-dev.json"))


def scores(answers, na, examples, version_2: bool) -> tuple[dict, dict[str, float]]:
    """The official aggregate and each question's F1 (0..100), as tunelab zeroshot scores them."""
    preds = {ex.id: a for ex, a in zip(examples, answers, strict=True)}
    refs = {ex.id: [a["text"] for a in ex.answers] for ex in examples}
    if version_2:
        total = squad_v2(preds, refs, na, NA_THRESHOLD)
        per = per_example_scores(preds, refs, version_2=True, na_probs=na, na_threshold=NA_THRESHOLD)
        keep = ("exact", "f1", "HasAns_exact", "HasAns_f1", "NoAns_exact", "NoAns_f1")
        total = {"exact_match": total["exact"], **{k: total[k] for k in keep if k in total}}
    else:
        total, per = squad_v1(preds, refs), per_example_scores(preds, refs)
        total = {k: total[k] for k in ("exact_match", "f1")}
    return total, {qid: 100.0 * s["f1"] for qid, s in per.items()}


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--version", choices=("1.1", "2.0"), default="1.1", help="SQuAD version of --data")
    ap.add_argument(
        "--data",
        default=None,
        help="SQuAD file (default: $TUNELAB_DATA_DIR or ../shared/data: squad/v1.1-dev.json, v2.0-dev.json)",
    )
    ap.add_argument("--every", type=int, default=20, help="take every N-th question (default 20: 529)")
    ap.add_argument("--offset", type=int, default=0, help="starting from this question (default 0)")
    ap.add_argument(
        "--limit", type=int, default=None, help="only the first K questions of the sample (a trial)"
    )
    ap.add_argument("--prompt", default=None, help="zero-shot prompt template (default: tunelab's default)")
    ap.add_argument("--modes", default=",".join(MODES), help="decodings to run (default: all three)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument(
        "--out",
        default=None,
        help=f"result JSON (default: {DEFAULT_OUT.relative_to(ROOT)} for the every-20th sample of the "
        "official v1.1 dev set; nothing is written for another sample without it)",
    )
    args = ap.parse_args()
    if args.every < 1 or args.offset < 0 or (args.limit is not None and args.limit < 1):
        ap.error("--every and --limit must be positive, --offset not negative")
    asked = args.modes.split(",")
    if set(asked) - set(MODES):
        ap.error(f"--modes: a comma-separated list of {', '.join(MODES)}, got {args.modes!r}")
    args.modes = tuple(m for m in MODES if m in asked)  # always in MODES' order
    return args


def main() -> int:
    args = parse_args()
    sample = (args.data, args.version, args.limit, args.every, args.offset)
    default_sample = sample == (None, "1.1", None, 20, 0)
    out = Path(args.out) if args.out else (DEFAULT_OUT if default_sample else None)
    if args.threads:
        torch.set_num_threads(args.threads)
    version_2 = args.version == "2.0"
    modes = args.modes

    data = args.data or default_data(args.version)
    examples = read_squad(data)[args.offset :: args.every]
    if args.limit is not None:
        examples = examples[: args.limit]
    prompt = load_prompt(args.prompt)
    tok = load_tokenizer(args.model, padding_side="left")
    model = load_causal_lm(args.model, dtype=eval_dtype(torch.device("cpu"))).eval()  # as tunelab zeroshot

    def answer(batch, mode: str, new_tokens: int):
        return generate_answers(
            model,
            tok,
            batch,
            prompt,
            version_2=version_2,
            batch_size=len(batch),
            max_new_tokens=new_tokens,
            progress=False,
            decoding=mode,
        )

    answer(examples[:1], "free", 2)  # warm-up, not timed

    lengths = [len(tok(prompt.render(tok, ex, version_2)).input_ids) for ex in examples]
    order = sorted(range(len(examples)), key=lambda i: lengths[i], reverse=True)
    answers = {m: [""] * len(examples) for m in modes}
    na = {m: {} if version_2 else None for m in modes}
    seconds = dict.fromkeys(modes, 0.0)
    for start in range(0, len(order), args.batch_size):
        idx = order[start : start + args.batch_size]
        for mode in modes:
            t0 = time.perf_counter()
            _, got, probs = answer([examples[i] for i in idx], mode, args.max_new_tokens)
            seconds[mode] += time.perf_counter() - t0
            for i, a in zip(idx, got, strict=True):
                answers[mode][i] = a
            if version_2:
                na[mode].update(probs)
        print(
            f"{min(start + args.batch_size, len(order))}/{len(order)} questions, "
            + ", ".join(f"{m} {s:.0f} s" for m, s in seconds.items()),
            file=sys.stderr,
        )
    # grounded's free pass is free's (same batch, same computation): the questions it answered again
    regenerated = None
    if {"free", "grounded"} <= set(modes):
        regenerated = sum(
            not (version_2 and not a) and ground_answer(a, ex.context) is None
            for a, ex in zip(answers["free"], examples, strict=True)
        )

    results, f1 = {}, {}
    for mode in modes:
        total, f1[mode] = scores(answers[mode], na[mode], examples, version_2)
        given = [(a, ex) for a, ex in zip(answers[mode], examples, strict=True) if a]
        results[mode] = {
            **total,
            "f1_ci95": bootstrap_ci(list(f1[mode].values())),
            "in_passage": sum(a in ex.context for a, ex in given) / max(1, len(given)),
            "empty": len(examples) - len(given),
            "seconds": seconds[mode],
            "seconds_per_question": seconds[mode] / len(examples),
        }
    per = {m: [f1[m][ex.id] for ex in examples] for m in modes}
    result = {
        "case": f"zero-shot SQuAD v{args.version}, decodings: {', '.join(modes)}",
        "trial": args.limit is not None and args.out is None,
        "model": args.model,
        "data": data,
        "sample": f"every {args.every}th question of the file from index {args.offset}"
        + (f", the first {args.limit}" if args.limit else ""),
        "n": len(examples),
        "version": args.version,
        "prompt": args.prompt or "default",
        "batch_size": args.batch_size,
        "max_new_tokens": args.max_new_tokens,
        "dtype": str(model.dtype).removeprefix("torch."),
        **results,
        **{
            f"{b}_minus_{a}_f1": paired_bootstrap(per[a], per[b])
            for k, a in enumerate(modes)
            for b in modes[k + 1 :]
        },
        "answers_changed": {
            m: sum(x != y for x, y in zip(answers["free"], answers[m], strict=True))
            for m in modes
            if m != "free" and "free" in modes
        },
        "grounded_extractive_answers": regenerated,
        "machine": machine(str(next(model.parameters()).device)),
        "git_commit": git_commit(),
        "command": "python benchmarks/squad_zeroshot_decoding.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
        "questions": [
            {
                "id": ex.id,
                "question": ex.question,
                "gold": [a["text"] for a in ex.answers],
                **{m: answers[m][k] for m in modes},
                **{f"{m}_f1": f1[m][ex.id] / 100.0 for m in modes},
            }
            for k, ex in enumerate(examples)
        ],
    }
    summary = {k: v for k, v in result.items() if k != "questions"}
    print(json.dumps(summary, indent=2))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
