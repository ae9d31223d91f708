"""Fine-tuning on SST-2 with and without `detokenize` (training and evaluation inputs shown as ordinary text).

Zero-shot SST-2 reads its sentences detokenized by default (benchmarks/zeroshot_detokenize.py), and the
fine-tuned classifier starts from the zero-shot one (its head from the prompt's label words): this measures
whether fine-tuning should read them so too. Each run is the command a user types,

    tunelab finetune smollm2-135m --task sst2 --method head --learning-rate 1e-3 --batch-size 32
        --train-limit N --epochs 1 --seed S --detokenize | --no-detokenize

(head-only, the study's head-only learning rate: on a CPU the body's forward pass is what a step costs),
evaluated on the whole SST-2 dev set (872 sentences). `--method full` fine-tunes the whole model as the full
preset does (lr 3e-5, batch 64; `--train-limit 0`: the whole training split), a GPU's work. Per seed, both
settings train on the same sample; the difference (on - off) gets the paired bootstrap and McNemar's test
(a: off, b: on), and so do all seeds' dev predictions pooled.

    .venv/bin/python benchmarks/finetune_detokenize.py [--seeds 42,2,7] [--train-limit 2000] [--out FILE]
    # on a GPU: full fine-tuning on the whole split, as the study's full preset
    python benchmarks/finetune_detokenize.py --method full --train-limit 0 --seeds 42

Writes benchmarks/results/finetune-detokenize[-full]-<device>.json (a trial with --dev-limit writes only with
--out), rewritten after every run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from machine_info import git_commit, machine

from tunelab.metrics import bootstrap_ci, mcnemar, paired_bootstrap
from tunelab.outputs import write_json

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
SETTINGS = {"off": "--no-detokenize", "on": "--detokenize"}
# head: the full preset's head-only learning rate at SST-2's default batch (the runs of
# finetune-detokenize-cpu.json, written before the JSON recorded the batch size, used the task's 32);
# full: the full preset's SST-2 fine-tuning
METHODS = {
    "head": {"learning_rate": 1e-3, "batch_size": 32},
    "full": {"learning_rate": 3e-5, "batch_size": 64},
}


def finetune(work: Path, seed: int, setting: str, args) -> tuple[list[float], float, dict]:
    """Per-dev-sentence correctness (0/100) of one run, its wall seconds and its tunelab.json's input
    settings."""
    out = work / f"{setting}-{seed}"
    cmd = [sys.executable, "-m", "tunelab", "finetune", args.model, "--task", "sst2", "--method", args.method]
    cmd += ["--learning-rate", str(args.learning_rate), "--batch-size", str(args.batch_size)]
    cmd += ["--train-limit", str(args.train_limit)] if args.train_limit else []
    cmd += ["--epochs", "1", "--seed", str(seed), SETTINGS[setting], "--out", str(out)]
    cmd += ["--limit", str(args.dev_limit)] if args.dev_limit else []
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(cmd)}\n{done.stderr[-3000:]}")
    rows = [json.loads(line) for line in (out / "eval" / "predictions.jsonl").read_text().splitlines()]
    meta = json.loads((out / "tunelab.json").read_text())
    return [100.0 * (r["prediction"] == r["gold"]) for r in rows], seconds, meta


def compare(per: dict[str, list[float]]) -> dict:
    return {
        "accuracy": {s: float(np.mean(v)) for s, v in per.items()},
        "accuracy_ci95": {s: bootstrap_ci(v) for s, v in per.items()},
        "on_minus_off": paired_bootstrap(per["off"], per["on"]),
        "mcnemar": mcnemar(np.array(per["off"]) > 0, np.array(per["on"]) > 0),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--seeds", default="42,2", help="comma-separated training seeds")
    ap.add_argument("--method", choices=tuple(METHODS), default="head")
    ap.add_argument("--train-limit", type=int, default=2000, help="training sentences per run (0: all)")
    ap.add_argument("--learning-rate", type=float, default=None, help="default: the method's (METHODS)")
    ap.add_argument("--batch-size", type=int, default=None, help="default: the method's (METHODS)")
    ap.add_argument("--dev-limit", type=int, default=None, help="only the first N dev sentences (a trial)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    args.learning_rate = args.learning_rate or METHODS[args.method]["learning_rate"]
    args.batch_size = args.batch_size or METHODS[args.method]["batch_size"]
    env = machine("cuda" if torch.cuda.is_available() else "cpu")
    dest = Path(args.out) if args.out else None
    if dest is None and not args.dev_limit:
        kind = "" if args.method == "head" else f"-{args.method}"
        dest = RESULTS / f"finetune-detokenize{kind}-{env['device'].split(':')[0]}.json"
    out: dict = {
        "case": f"SST-2 fine-tuning ({args.method}), inputs as read (off) or detokenized (on), scored on dev",
        "command": "python benchmarks/finetune_detokenize.py " + " ".join(sys.argv[1:]),
        "commit": git_commit(),
        "machine": env,
        "model": args.model,
        "method": args.method,
        "learning_rate": args.learning_rate,
        "batch_size": args.batch_size,
        "train_limit": args.train_limit or "the whole training split",
        "epochs": 1,
        "dev": "SST-2 dev (GLUE validation)" + (f", first {args.dev_limit}" if args.dev_limit else ""),
        "seeds": {},
    }

    def save() -> None:
        if dest is not None:
            write_json(dest, out)

    pooled: dict[str, list[float]] = {"off": [], "on": []}
    with tempfile.TemporaryDirectory(prefix="tunelab-ft-detok-") as tmp:
        for seed in seeds:
            per, runs = {}, {}
            for setting in SETTINGS:
                per[setting], seconds, meta = finetune(Path(tmp), seed, setting, args)
                runs[setting] = {"seconds": round(seconds, 1), "detokenize": meta.get("detokenize")}
                print(f"seed {seed} {setting}: {np.mean(per[setting]):.2f}% ({seconds:.0f} s)", flush=True)
                pooled[setting] += per[setting]
            out["seeds"][str(seed)] = {**compare(per), "runs": runs}
            save()
    out["pooled"] = compare(pooled)
    save()
    diff = out["pooled"]["on_minus_off"]
    print(f"pooled on - off: {diff}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
