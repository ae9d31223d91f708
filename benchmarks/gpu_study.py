"""The study's real numbers on one GPU: SmolLM2-135M-Instruct zero-shot and fine-tuned on SST-2 and SQuAD.

Runs `tunelab` stage by stage (most important first) within a time budget, and after every stage packs what
it wrote (metrics, predictions, training logs and plots; no weights) into OUT/results.tgz, so a run cut short
still returns everything it finished. Usage (the device call: see benchmarks/README.md):

    python benchmarks/gpu_study.py --out $OUT --budget 480 [--smoke]

`--smoke` runs every stage on a few examples (CPU-sized) to check the script itself.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tarfile
import time
from pathlib import Path

SST2_COMMON = ["--task", "sst2"]

# (name, estimated wall seconds on an H100/H200, arguments after `tunelab`). The estimates of the first four
# are the walls of the H200 run in results/h200-smollm2-study/summary.json, rounded up; the others are guesses
# from those (LoRA about as long as full, head-only mostly forward passes, v2.0 with somewhat more data than
# v1.1: its train file is 3.4 MB against 2.9 MB).
SQUAD11_FULL = [
    "finetune",
    "smollm2-135m",
    "--task",
    "squad",
    "--version",
    "1.1",
    "--method",
    "full",
    "--batch-size",
    "16",
    "--log-every",
    "20",
]
STAGES = [
    ("sst2-zeroshot", 40, ["zeroshot", "smollm2-135m", *SST2_COMMON, "--batch-size", "64"]),
    (
        "sst2-full",
        160,
        [
            "finetune",
            "smollm2-135m",
            *SST2_COMMON,
            "--method",
            "full",
            "--batch-size",
            "64",
            "--learning-rate",
            "3e-5",
            "--epochs",
            "1",
            "--log-every",
            "20",
        ],
    ),
    (
        "squad11-zeroshot",
        105,
        ["zeroshot", "smollm2-135m", "--task", "squad", "--version", "1.1", "--batch-size", "64"],
    ),
    ("squad11-full", 145, [*SQUAD11_FULL, "--learning-rate", "5e-5", "--epochs", "2"]),
    (
        "sst2-lora",
        160,
        [
            "finetune",
            "smollm2-135m",
            *SST2_COMMON,
            "--method",
            "lora",
            "--batch-size",
            "64",
            "--learning-rate",
            "5e-4",
            "--epochs",
            "1",
            "--log-every",
            "20",
        ],
    ),
    (
        "sst2-head",
        90,
        [
            "finetune",
            "smollm2-135m",
            *SST2_COMMON,
            "--method",
            "head",
            "--batch-size",
            "64",
            "--learning-rate",
            "1e-3",
            "--epochs",
            "1",
            "--log-every",
            "20",
        ],
    ),
    (
        "squad11-lora",
        145,
        [
            "finetune",
            "smollm2-135m",
            "--task",
            "squad",
            "--version",
            "1.1",
            "--method",
            "lora",
            "--batch-size",
            "16",
            "--learning-rate",
            "5e-4",
            "--epochs",
            "2",
            "--log-every",
            "20",
        ],
    ),
    (
        "squad20-zeroshot",
        150,
        ["zeroshot", "smollm2-135m", "--task", "squad", "--version", "2.0", "--batch-size", "64"],
    ),
    (
        "squad20-full",
        200,
        [
            "finetune",
            "smollm2-135m",
            "--task",
            "squad",
            "--version",
            "2.0",
            "--method",
            "full",
            "--batch-size",
            "16",
            "--learning-rate",
            "5e-5",
            "--epochs",
            "2",
            "--log-every",
            "20",
        ],
    ),
    # Recipe experiments for the SQuAD F1 target (run only when named in --only): a higher learning rate with
    # a third epoch, and longer windows (fewer passages split, more context per window).
    ("squad11-full-lr1e-4-3ep", 210, [*SQUAD11_FULL, "--learning-rate", "1e-4", "--epochs", "3"]),
    (
        "squad11-full-512",
        190,
        [*SQUAD11_FULL, "--learning-rate", "5e-5", "--epochs", "2", "--max-length", "512"],
    ),
]
EXPERIMENTS = {"squad11-full-lr1e-4-3ep", "squad11-full-512"}
SMOKE = {
    "zeroshot": ["--limit", "8"],
    "finetune": ["--limit", "8", "--max-train-samples", "8", "--max-steps", "2"],
}
KEEP = (".json", ".jsonl", ".png", ".log", ".txt", ".md")


def machine() -> dict:
    info = {"host": platform.node(), "python": platform.python_version(), "cpu_count": os.cpu_count()}
    try:
        import torch
        import transformers

        info.update(torch=torch.__version__, transformers=transformers.__version__)
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
        else:
            info["gpu"] = None
    except ImportError:
        pass
    return info


def pack(run_dir: Path, out: Path) -> None:
    """Everything small the stages wrote, without model weights, into one archive (the device returns at most
    8 files)."""
    tmp = out / "results.tgz.tmp"
    with tarfile.open(tmp, "w:gz") as tar:
        for f in sorted(run_dir.rglob("*")):
            if f.is_file() and f.suffix in KEEP and ".partial" not in str(f) and "checkpoints" not in f.parts:
                if f.name.startswith(("tokenizer", "special_tokens")) or f.name in (
                    "config.json",
                    "generation_config.json",
                ):
                    continue
                tar.add(f, arcname=str(f.relative_to(run_dir.parent)))
    os.replace(tmp, out / "results.tgz")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument(
        "--budget", type=float, default=480, help="seconds; a stage whose estimate does not fit is skipped"
    )
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument(
        "--only",
        help="comma-separated stage names, run in that order (the only way to run the recipe experiments)",
    )
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    run_dir = out.parent / "gpu-study" if args.smoke else Path("/tmp/gpu-study")
    run_dir.mkdir(parents=True, exist_ok=True)
    summary = {"machine": machine(), "started": time.strftime("%Y-%m-%d %H:%M:%S"), "stages": []}
    t_start = time.perf_counter()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if args.only:  # the named stages, in the order named
        by_name = {stage[0]: stage for stage in STAGES}
        unknown = [n for n in args.only.split(",") if n not in by_name]
        if unknown:
            ap.error(f"unknown stages {unknown}; known: {', '.join(by_name)}")
        stages = [by_name[n] for n in args.only.split(",")]
    else:
        stages = [stage for stage in STAGES if stage[0] not in EXPERIMENTS]
    for name, estimate, argv in stages:
        elapsed = time.perf_counter() - t_start
        if not args.smoke and elapsed + estimate > args.budget:
            summary["stages"].append({"stage": name, "status": "skipped (time budget)"})
            continue
        cmd = [sys.executable, "-m", "tunelab", *argv, "--out", str(run_dir / name), "--overwrite"]
        if args.smoke:
            cmd += SMOKE[argv[0]]
        t0 = time.perf_counter()
        with open(run_dir / f"{name}.log", "w") as log:
            rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        seconds = time.perf_counter() - t0
        metrics_file = run_dir / name / ("eval" if argv[0] == "finetune" else "") / "metrics.json"
        entry = {"stage": name, "command": "tunelab " + " ".join(cmd[3:]), "rc": rc, "wall_seconds": seconds}
        if metrics_file.is_file():
            m = json.loads(metrics_file.read_text())
            entry["metrics"] = {
                k: m[k] for k in ("accuracy", "f1", "exact_match", "best_f1", "train_seconds", "n") if k in m
            }
        summary["stages"].append(entry)
        print(json.dumps(entry), flush=True)
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        pack(run_dir, out)
    summary["total_seconds"] = time.perf_counter() - t_start
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    pack(run_dir, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
