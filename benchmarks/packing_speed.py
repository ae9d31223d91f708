"""What padding-free packing (tunelab.packing) would compute, against padded batches: pure counting, no model.

For the real training data (SST-2 train sentences in tunelab's default input prompt and bare; SQuAD v1.1 train
windows of 384 with stride 128) and the SmolLM2 tokenizer, each micro-batch of tunelab's order
(length-grouped, and random for comparison) is either padded to its longest example or packed by
`tunelab.packing.plan_rows` (first-fit decreasing) into rows of a token budget: the same examples per step, so
the same update.

Per case it reports:

* tokens: real, padded (dynamic), packed (rows x the longest row), and the real share of each, for three
  layouts: `rows` (first-fit decreasing into rows of max_length), `balanced` (as many rows as the batch's
  tokens need at max_length each, as narrow as they go) and `balanced4x` (the same with 4 x max_length: fewer,
  wider rows, which fill better but cost attention under a dense mask);
* static shapes (what torch.compile / CUDA graphs need): padded to length buckets (multiples of max_length/4)
  vs packed to one shape for the whole epoch (its largest row count x its widest row);
* attention scores (query x key pairs): padded `sum batch x width^2`; packed with a dense document mask
  (sdpa/eager: `sum rows x width^2`); packed with a variable-length kernel (flex/flash: `sum length^2`).

Token counts are what the projections and MLPs cost; attention is listed apart. Seconds on a CPU with
--max-examples; the whole SQuAD train tokenises in a few minutes.

    python benchmarks/packing_speed.py --data-dir ../shared/data --max-examples 5000
    python benchmarks/packing_speed.py --data-dir ../shared/data --out benchmarks/results/packing-cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path


def costs(
    lengths: list[int], batches: list[list[int]], max_length: int, row_tokens: int, balanced: bool
) -> dict:
    """balanced=False: first-fit decreasing into rows of row_tokens; True: into
    ceil(batch tokens / row_tokens) rows, as narrow as first-fit decreasing allows (plan_rows with rows
    only)."""
    from tunelab.packing import plan_rows

    real = sum(lengths)
    padded = padded_static = pad_attn = 0
    packed = packed_attn_dense = 0
    shapes = []
    bucket = max(1, max_length // 4)
    for b in batches:
        ls = [lengths[i] for i in b]
        width = max(ls)
        padded += len(ls) * width
        padded_static += len(ls) * (-(-width // bucket) * bucket)
        pad_attn += len(ls) * width * width
        plan = plan_rows(ls, rows=-(-sum(ls) // row_tokens)) if balanced else plan_rows(ls, row_tokens)
        row_width = max(sum(ls[i] for i in r) for r in plan)
        packed += len(plan) * row_width
        packed_attn_dense += len(plan) * row_width * row_width
        shapes.append((len(plan), row_width))
    rows_max, width_max = max(r for r, _ in shapes), max(w for _, w in shapes)
    packed_static = len(batches) * rows_max * width_max  # one shape for the whole epoch
    return {
        "examples": len(lengths),
        "batches": len(batches),
        "mean_length": real / len(lengths),
        "max_length": max_length,
        "row_tokens": row_tokens,
        "balanced": balanced,
        "tokens": {
            "real": real,
            "padded": padded,
            "packed": packed,
            "padded_static_buckets": padded_static,
            "packed_static": packed_static,
        },
        "real_share": {
            "padded": real / padded,
            "packed": real / packed,
            "padded_static_buckets": real / padded_static,
            "packed_static": real / packed_static,
        },
        "packed_shape": {
            "rows_max": rows_max,
            "width_max": width_max,
            "rows_mean": sum(r for r, _ in shapes) / len(shapes),
        },
        "attention_pairs": {
            "padded": pad_attn,
            "packed_dense_mask": packed_attn_dense,
            "packed_varlen": sum(lengths[i] ** 2 for b in batches for i in b),
        },
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=os.environ.get("TUNELAB_DATA_DIR"))
    ap.add_argument("--model", default="smollm2-135m", help="whose tokenizer (default smollm2-135m)")
    ap.add_argument("--max-examples", type=int, default=None, help="first N examples of each train set")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="also write the results here as JSON (nothing is saved without it)")
    args = ap.parse_args()
    if not args.data_dir:
        ap.error("give --data-dir or set TUNELAB_DATA_DIR")

    import numpy as np

    from tunelab.models import load_tokenizer
    from tunelab.tasks import get_task
    from tunelab.tasks.classification.head import encode, format_input
    from tunelab.tasks.extractive_qa.spans import doc_stride
    from tunelab.tasks.extractive_qa.windows import prepare_train_features

    def length_grouped(lengths, batch_size):  # tunelab.training.length_grouped_order's rule, kept here so
        rng = np.random.default_rng(args.seed)  # this script does not depend on where that module moves
        perm = rng.permutation(len(lengths))
        mega = batch_size * 50
        batches = []
        for s in range(0, len(perm), mega):
            chunk = sorted(perm[s : s + mega].tolist(), key=lambda i: -lengths[i])
            batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
        return [batches[i] for i in rng.permutation(len(batches))]

    def random_batches(n, batch_size):
        perm = np.random.default_rng(args.seed).permutation(n).tolist()
        return [perm[i : i + batch_size] for i in range(0, n, batch_size)]

    cases = {}

    def add(name, lengths, batch_size, max_length):
        for order, batches in (
            ("grouped", length_grouped(lengths, batch_size)),
            ("random", random_batches(len(lengths), batch_size)),
        ):
            for label, row_tokens, balanced in (
                ("rows", max_length, False),
                ("balanced", max_length, True),
                ("balanced4x", 4 * max_length, True),
            ):
                cases[f"{name}-b{batch_size}-{order}-{label}"] = costs(
                    lengths, batches, max_length, row_tokens, balanced
                )

    t0 = time.perf_counter()
    tok = load_tokenizer(args.model)
    sst2_task = get_task("sst2")
    sst2 = [ex for ex in sst2_task.load_split("train", args.data_dir)[0] if ex.label is not None]
    sst2 = sst2[: args.max_examples]
    prompt = sst2_task.input_prompt(
        sst2_task.finetune_extras()["input_prompt"]
    )  # `finetune --task sst2`'s default
    for name, texts, special in (
        ("sst2-prompt", [format_input(prompt, tok, ex.text) for ex in sst2], prompt.add_special_tokens),
        ("sst2-bare", [ex.text for ex in sst2], True),
    ):
        lengths = [len(x) for x in encode(tok, texts, 128, special)]
        add(name, lengths, 64, 128)
    squad = get_task("squad").load_split("train", args.data_dir)[0][: args.max_examples]
    feats = prepare_train_features(squad, tok, 384, doc_stride(384))
    add("squad11", [len(x) for x in feats["input_ids"]], 16, 384)
    result = {
        "machine": {
            "host": platform.node(),
            "cpu_count": os.cpu_count(),
            "gpu": None,
            "python": platform.python_version(),
        },
        "command": "python benchmarks/packing_speed.py " + " ".join(sys.argv[1:]),
        "tokenizer": args.model,
        "seconds": time.perf_counter() - t0,
        "cases": cases,
    }
    print(
        "real share of computed tokens (dynamic: padded / packed; static shapes: buckets / packed) and "
        "attention pairs against padded (packed with a dense mask / with varlen)"
    )
    for name, c in cases.items():
        r, a = c["real_share"], c["attention_pairs"]
        print(
            f"{name:34s} mean {c['mean_length']:6.1f}  dynamic {r['padded']:.3f} / {r['packed']:.3f}  "
            f"static {r['padded_static_buckets']:.3f} / {r['packed_static']:.3f}  "
            f"attention {a['packed_dense_mask'] / a['padded']:.2f}x"
            f" / {a['packed_varlen'] / a['padded']:.2f}x"
        )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
