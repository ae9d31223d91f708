"""How much of a fine-tuning batch is padding: the most that padding-free packing could save.

For the real training data (SST-2 train sentences in tunelab's default input prompt, SQuAD v1.1 train windows
of 384/128) and the SmolLM2 tokenizer, counts real tokens and the tokens each batching computes on:

* `pad_to_max`: every example padded to max_length (run_glue.py / run_qa.py's default);
* `length_grouped`: tunelab's batches (shuffled, sorted inside mega-batches of 50 batches, dynamic padding);
* `random_dynamic`: random batches with dynamic padding (Trainer without group_by_length).

`packing_saves` is (padded - real) / padded for tunelab's batches: the share of token compute (projections and
MLP; attention differs) that packing could remove. No GPU needed; seconds on a CPU.

    python benchmarks/padding.py --out benchmarks/results/padding-cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path


def batching_costs(lengths: list[int], batch_size: int, max_length: int, seed: int = 0) -> dict:
    from tunelab.training import length_grouped_order, random_order

    def padded(batches):
        return sum(len(b) * max(lengths[i] for i in b) for b in batches)

    real = sum(lengths)
    grouped = padded(length_grouped_order(lengths, batch_size, seed))
    rand = padded(random_order(len(lengths), batch_size, seed))
    return {
        "examples": len(lengths),
        "batch_size": batch_size,
        "max_length": max_length,
        "mean_length": real / len(lengths),
        "real_tokens": real,
        "pad_to_max_tokens": len(lengths) * max_length,
        "length_grouped_tokens": grouped,
        "random_dynamic_tokens": rand,
        "real_share": {
            "pad_to_max": real / (len(lengths) * max_length),
            "length_grouped": real / grouped,
            "random_dynamic": real / rand,
        },
        "packing_saves": (grouped - real) / grouped,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=os.environ.get("TUNELAB_DATA_DIR"))
    ap.add_argument("--model", default="smollm2-135m", help="whose tokenizer (default smollm2-135m)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    if not args.data_dir:
        ap.error("give --data-dir or set TUNELAB_DATA_DIR")

    from tunelab.models import load_tokenizer
    from tunelab.tasks import get_task
    from tunelab.tasks.classification import encode, format_input
    from tunelab.tasks.extractive_qa.spans import doc_stride
    from tunelab.tasks.extractive_qa.windows import prepare_train_features

    t0 = time.perf_counter()
    tok = load_tokenizer(args.model)
    cases = {}
    task = get_task("sst2")
    sst2 = [ex for ex in task.read(task.data_path("train", args.data_dir)) if ex.label is not None]
    prompt = task.prompt(task.finetune_extras()["input_prompt"])  # `tunelab finetune --task sst2`'s default
    for name, texts, special in (
        ("sst2-prompt", [format_input(prompt, tok, ex.text) for ex in sst2], prompt.add_special_tokens),
        ("sst2-bare", [ex.text for ex in sst2], True),
    ):
        lengths = [len(x) for x in encode(tok, texts, 128, special)]
        for batch in (32, 64):
            cases[f"{name}-b{batch}"] = batching_costs(lengths, batch, 128)
    squad = get_task("squad").read(get_task("squad").data_path("train", args.data_dir))
    feats = prepare_train_features(squad, tok, 384, doc_stride(384))
    lengths = [len(x) for x in feats["input_ids"]]
    for batch in (12, 16):
        cases[f"squad11-b{batch}"] = batching_costs(lengths, batch, 384)
    result = {
        "machine": {
            "host": platform.node(),
            "cpu_count": os.cpu_count(),
            "gpu": None,
            "python": platform.python_version(),
        },
        "command": "python benchmarks/padding.py " + " ".join(sys.argv[1:]),
        "tokenizer": args.model,
        "seconds": time.perf_counter() - t0,
        "cases": cases,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    for name, c in cases.items():
        share = c["real_share"]
        print(
            f"{name:16s} mean length {c['mean_length']:6.1f}  "
            f"real share: pad-to-max {share['pad_to_max']:.3f}  random {share['random_dynamic']:.3f}  "
            f"length-grouped {share['length_grouped']:.3f}"
            f"  packing could save {100 * c['packing_saves']:.1f}%"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
