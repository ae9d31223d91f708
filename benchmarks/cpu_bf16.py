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

    .venv/bin/python benchmarks/cpu_bf16.py [--cases a,b] [--seeds 42,7] [--out FILE]  # results/cpu-bf16.json
    .venv/bin/python benchmarks/cpu_bf16.py --pool A.json,B.json --out FILE  # every seed's comparison pooled
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
    # the whole passage (focus 0), as the committed results were measured
    "squad-zeroshot": ["zeroshot", "--task", "squad", "--limit", "200", "--focus", "0"],
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


def tunelab(argv: list[str], mode: str, name: str) -> tuple[float, dict, Path]:
    """Run `tunelab ARGV` in `mode`'s precision; (wall seconds, metrics.json, the folder holding it)."""
    env = {**os.environ, "TUNELAB_CPU_BF16": MODES[mode], "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "tunelab", *argv], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"{name} failed with status {proc.returncode}")
    folder = Path(argv[-1]) / ("eval" if argv[0] == "finetune" else "")
    return wall, json.loads((folder / "metrics.json").read_text()), folder


def row(argv: list[str], wall: float, metrics: dict, folder: Path) -> dict:
    out = {"command": "tunelab " + " ".join(argv[:-2]), "wall_seconds": wall, "folder": folder}
    out.update({k: metrics[k] for k in (*TIMINGS, "train_dtype", "dtype") if k in metrics})
    out["scores"] = {k: metrics[k] for k in ("accuracy", "f1", "exact_match") if k in metrics}
    return out


def given(argv: list[str], flags: tuple[str, ...]) -> list[str]:
    """The flags of argv among `flags`, each with its value (the last one given, as argparse takes)."""
    found = {a: argv[i + 1] for i, a in enumerate(argv[:-1]) if a in flags}
    return [x for flag, value in found.items() for x in (flag, value)]


def run_case(case: str, args, work: Path) -> dict:
    """Every run of a case, by label: the command in each precision (fine-tuning: per seed), and for
    fine-tuning each trained model evaluated again in the other precision (`tunelab evaluate`)."""
    base = [CASES[case][0], args.model, *CASES[case][1:], *(TINY[case] if args.tiny else [])]
    finetune = base[0] == "finetune"
    runs = {}
    for seed in args.seeds if finetune else [None]:
        for mode in MODES:
            label = mode if seed in (None, args.seeds[0]) else f"{mode} seed {seed}"
            argv = [*base, *(["--seed", str(seed)] if seed is not None else [])]
            argv += ["--out", str(work / f"{case}-{label}".replace(" ", "-"))]
            runs[label] = row(argv, *tunelab(argv, mode, f"{case} ({label})"))
    if finetune:  # the first seed's models, each evaluated in the other precision
        evaluated = given(base, ("--task", "--limit"))  # the dev examples fine-tuning evaluated
        for trained, other in (("float32", "bfloat16"), ("bfloat16", "float32")):
            label = f"{trained}-trained, {other} evaluation"
            model = str(runs[trained]["folder"].parent)
            argv = ["evaluate", model, *evaluated, "--out", str(work / f"{case}-{trained}-{other}")]
            runs[label] = row(argv, *tunelab(argv, other, f"{case} ({label})"))
    return runs


def per_example(folder: Path) -> tuple[list, list]:
    """(what each example was answered, the per-example score McNemar or the bootstrap compares)."""
    if (folder / "per_example.jsonl").exists():  # extractive QA
        rows = [json.loads(line) for line in (folder / "per_example.jsonl").read_text().splitlines()]
        answers = json.loads((folder / "predictions.json").read_text())
        return [answers[r["id"]] for r in rows], [r["f1"] for r in rows]
    rows = [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]
    return [r["prediction"] for r in rows], [r["prediction"] == r["gold"] for r in rows]


def compare(a: dict, b: dict) -> dict:
    """b against a on the same examples: predictions changed, and McNemar (classification) or a paired
    bootstrap of F1 (QA)."""
    answers_a, score_a = per_example(a["folder"])
    answers_b, score_b = per_example(b["folder"])
    changed = sum(x != y for x, y in zip(answers_a, answers_b, strict=True))
    out = {"n": len(answers_a), "predictions_changed": changed}
    if isinstance(score_a[0], bool):
        out["accuracy_points"] = 100 * (sum(score_b) - sum(score_a)) / len(score_a)
        out["mcnemar"] = mcnemar(score_a, score_b)
    else:
        out["f1_difference"] = paired_bootstrap([100 * x for x in score_a], [100 * x for x in score_b])
    return out


COMPARISONS = {  # name: (a, b), b against a; only those whose runs exist
    "bfloat16 vs float32": ("float32", "bfloat16"),
    "evaluation only: float32-trained model, bfloat16 vs float32 evaluation": (
        "float32",
        "float32-trained, bfloat16 evaluation",
    ),
    "training only: bfloat16- vs float32-trained model, both evaluated in float32": (
        "float32",
        "bfloat16-trained, float32 evaluation",
    ),
}


def comparisons(runs: dict, seeds: list[int]) -> dict:
    pairs = {k: v for k, v in COMPARISONS.items() if v[1] in runs}
    for seed in seeds[1:]:
        if f"float32 seed {seed}" in runs:
            pairs[f"seed {seed}: bfloat16 vs float32"] = (f"float32 seed {seed}", f"bfloat16 seed {seed}")
            pairs[f"float32 seed {seed} vs seed {seeds[0]} (the spread of seeds)"] = (
                "float32",
                f"float32 seed {seed}",
            )
    return {name: compare(runs[a], runs[b]) for name, (a, b) in pairs.items()}


def pooled(files: list[str]) -> dict:
    """Every seed's "bfloat16 vs float32" comparison of the fine-tuning cases in result `files`, pooled: the
    mean difference, and McNemar's test on all the changed predictions together."""
    from scipy.stats import binomtest

    docs = [json.loads(Path(f).read_text()) for f in files]
    machines = [d["machine"] for d in docs]
    out = {"files": files, "machine": machines[0], "same_machine": all(m == machines[0] for m in machines)}
    out.update(command="python benchmarks/cpu_bf16.py " + " ".join(sys.argv[1:]), cases={})
    for doc in docs:
        for case, result in doc["cases"].items():
            for name, c in result["comparisons"].items():
                if "mcnemar" in c and name.endswith("bfloat16 vs float32"):
                    out["cases"].setdefault(case, []).append(c)
    for case, comps in out["cases"].items():
        lost = sum(c["mcnemar"]["only_a_correct"] for c in comps)
        gained = sum(c["mcnemar"]["only_b_correct"] for c in comps)
        points = [c["accuracy_points"] for c in comps]
        out["cases"][case] = {
            "runs": len(comps),
            "accuracy_points_each": points,
            "accuracy_points_mean": sum(points) / len(points),
            "float32_only_correct": lost,
            "bfloat16_only_correct": gained,
            "mcnemar_p": float(binomtest(gained, lost + gained, 0.5).pvalue) if lost + gained else 1.0,
        }
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of: {', '.join(CASES)}")
    ap.add_argument("--seeds", default="42", help="fine-tuning seeds, comma-separated (default 42)")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--tiny", action="store_true", help="a few examples each (checks the script)")
    ap.add_argument("--out", help="result file (default results/cpu-bf16.json; with --tiny: required)")
    ap.add_argument("--pool", help="comma-separated result files: pool their seeds' comparisons, run nothing")
    args = ap.parse_args()
    if args.pool:
        result = pooled(args.pool.split(","))
        print(json.dumps(result["cases"], indent=2))
        if args.out:
            Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        return 0
    names = [c.strip() for c in args.cases.split(",") if c.strip()]
    if not names or any(c not in CASES for c in names):
        ap.error(f"--cases: choose from {', '.join(CASES)}")
    try:
        args.seeds = [int(x) for x in args.seeds.split(",")]
    except ValueError:
        ap.error("--seeds: comma-separated integers")
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
            runs = run_case(case, args, Path(tmp))
            fp32, bf16 = runs["float32"], runs["bfloat16"]
            speedup = {k: fp32[k] / bf16[k] for k in ("wall_seconds", *TIMINGS) if k in fp32 and bf16.get(k)}
            compared = comparisons(runs, args.seeds)
            for r in runs.values():
                del r["folder"]
            result["cases"][case] = {"speedup": speedup, "comparisons": compared, "runs": runs}
            print(case, "speedup", json.dumps(speedup), flush=True)
            for name, c in compared.items():
                print("  ", name, json.dumps({k: v for k, v in c.items() if k != "n"}), flush=True)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(result, indent=2) + "\n")  # after each case: a cut-short run keeps it
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
