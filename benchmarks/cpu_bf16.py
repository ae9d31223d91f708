"""float32 against bfloat16 on this CPU (tunelab.precision): speed and quality of the same tunelab commands.

Each case is one `tunelab` command run twice, first with TUNELAB_CPU_BF16=off (float32) and then with
TUNELAB_CPU_BF16=on (bfloat16: weights for zero-shot, autocast for fine-tuning and its evaluation), nothing
else changed. Reported per case: each run's wall seconds (the process, model loading included) and its own
timings from metrics.json (scoring, training, evaluation), their ratios (float32 / bfloat16: above 1, bfloat16
is faster), both runs' scores, and the paired comparison of the two on the same examples: predictions that
changed, McNemar's test (classification accuracy) or a paired bootstrap of F1 (QA). With --tiny (a test):
the model given by --model on a few examples.

Cases (SmolLM2-135M-Instruct, the shared data):
  sst2-zeroshot   zeroshot --task sst2                                SST-2 dev, 872 sentences
  squad-zeroshot  zeroshot --task squad --limit 200                   the first 200 official dev questions
  sst2-finetune   finetune --task sst2 --train-limit 1024             1 epoch (32 steps), SST-2 dev
  squad-finetune  finetune --task squad --train-limit 256 --limit 200 1 epoch, the first 200 dev questions

    .venv/bin/python benchmarks/cpu_bf16.py [--cases a,b] [--out FILE]    # -> results/cpu-bf16.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine_info import ROOT, git_commit, machine

from tunelab.metrics import mcnemar, paired_bootstrap

MODES = {"float32": "off", "bfloat16": "on"}
CASES = {
    "sst2-zeroshot": ["zeroshot", "--task", "sst2"],
    "squad-zeroshot": ["zeroshot", "--task", "squad", "--limit", "200"],
    "sst2-finetune": ["finetune", "--task", "sst2", "--train-limit", "1024", "--epochs", "1"],
    "squad-finetune": [
        "finetune",
        "--task",
        "squad",
        "--train-limit",
        "256",
        "--limit",
        "200",
        "--epochs",
        "1",
    ],
}
TINY = {  # a test's sizes
    "sst2-zeroshot": ["--limit", "16"],
    "squad-zeroshot": ["--limit", "4", "--max-new-tokens", "4"],
    "sst2-finetune": ["--train-limit", "16", "--limit", "16", "--batch-size", "8"],
    "squad-finetune": ["--train-limit", "8", "--limit", "4", "--batch-size", "4", "--max-length", "128"],
}
TIMINGS = ("seconds", "train_seconds", "eval_seconds")  # what metrics.json holds, by command


def run_once(case: str, mode: str, args, work: Path) -> dict:
    out = work / f"{case}-{mode}"
    argv = [
        *CASES[case][:1],
        args.model,
        *CASES[case][1:],
        *(TINY[case] if args.tiny else []),
        "--out",
        str(out),
    ]
    env = {**os.environ, "TUNELAB_CPU_BF16": MODES[mode], "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "tunelab", *argv], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"{case} ({mode}) failed with status {proc.returncode}")
    folder = out / "eval" if argv[0] == "finetune" else out
    metrics = json.loads((folder / "metrics.json").read_text())
    row = {"command": "tunelab " + " ".join(argv[:-2]), "wall_seconds": wall, "folder": folder}
    row.update({k: metrics[k] for k in TIMINGS if k in metrics})
    row.update({k: metrics[k] for k in ("train_dtype", "dtype") if k in metrics})
    row["scores"] = {k: metrics[k] for k in ("accuracy", "f1", "exact_match") if k in metrics}
    return row


def per_example(folder: Path) -> tuple[list, list]:
    """(what each example was answered, the per-example score McNemar or the bootstrap compares)."""
    if (folder / "per_example.jsonl").exists():  # extractive QA
        rows = [json.loads(line) for line in (folder / "per_example.jsonl").read_text().splitlines()]
        answers = json.loads((folder / "predictions.json").read_text())
        return [answers[r["id"]] for r in rows], [r["f1"] for r in rows]
    rows = [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]
    return [r["prediction"] for r in rows], [r["prediction"] == r["gold"] for r in rows]


def compare(fp32: dict, bf16: dict) -> dict:
    answers32, score32 = per_example(fp32.pop("folder"))
    answers16, score16 = per_example(bf16.pop("folder"))
    changed = sum(a != b for a, b in zip(answers32, answers16, strict=True))
    out = {"n": len(answers32), "predictions_changed": changed}
    if isinstance(score32[0], bool):
        out["mcnemar"] = mcnemar(score32, score16)
    else:
        out["f1_bf16_minus_fp32"] = paired_bootstrap([100 * s for s in score32], [100 * s for s in score16])
    out["speedup"] = {k: fp32[k] / bf16[k] for k in ("wall_seconds", *TIMINGS) if k in fp32 and bf16.get(k)}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of: {', '.join(CASES)}")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--tiny", action="store_true", help="a few examples each (checks the script)")
    ap.add_argument("--out", help="result file (default results/cpu-bf16.json; with --tiny: required)")
    args = ap.parse_args()
    names = [c.strip() for c in args.cases.split(",") if c.strip()]
    if not names or any(c not in CASES for c in names):
        ap.error(f"--cases: choose from {', '.join(CASES)}")
    if args.tiny and not args.out:
        ap.error("--tiny needs --out (the committed result is the full run's)")
    out = Path(args.out or ROOT / "benchmarks" / "results" / "cpu-bf16.json")
    import torch

    from tunelab.precision import bf16_native

    result = {
        "case": "tunelab commands in float32 (TUNELAB_CPU_BF16=off) and bfloat16 (on) on this CPU",
        "trial": args.tiny,
        "model": args.model,
        "bf16_native_here": bf16_native(torch.device("cpu")),
        "machine": machine("cpu"),
        "git_commit": git_commit(),
        "command": "python benchmarks/cpu_bf16.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
        "cases": {},
    }
    with tempfile.TemporaryDirectory(prefix="cpu-bf16-") as tmp:
        for case in names:
            runs = {mode: run_once(case, mode, args, Path(tmp)) for mode in MODES}
            comparison = compare(runs["float32"], runs["bfloat16"])
            result["cases"][case] = {**runs, **comparison}
            print(
                case,
                json.dumps({k: runs[m]["scores"] for k, m in (("fp32", "float32"), ("bf16", "bfloat16"))}),
                "speedup",
                json.dumps(comparison["speedup"]),
                flush=True,
            )
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(result, indent=2) + "\n")  # after each case: a cut-short run keeps it
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
