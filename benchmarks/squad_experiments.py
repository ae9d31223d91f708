"""The SQuAD experiments of issue 12, each one `tunelab` command, on one GPU: SmolLM2-135M fine-tuned on SQuAD
v1.1 train (rebuilt, 87,599 questions) and scored on the official v1.1 dev set - full vs LoRA, learning rate
and epochs, bidirectional attention on/off; zero-shot free vs extractive decoding vs grounded answers, and
3-shot, on the whole dev set; v2.0 with and without v1.1 train added.

Each experiment runs as its own process (`tunelab finetune` / `tunelab zeroshot`) into OUT/NAME; after each,
OUT/summary.json is rewritten with every finished experiment's command, wall seconds and metrics (EM, F1,
...), so an interrupted session keeps what finished; a rerun skips experiments whose metrics are there.
`--only` picks and orders experiments; `--budget` stops starting new ones after that many seconds.

    python benchmarks/squad_experiments.py --out OUT --only zs-free,zs-grounded,full-lr3e-5-2ep
    python benchmarks/squad_experiments.py --list
    # every experiment at tiny size on the CPU (the test runs it so, with a tiny random model):
    python benchmarks/squad_experiments.py --tiny --model TINY_MODEL_DIR --out /tmp/x

Training on the whole set needs the speed issue's loop for the longer runs; `--train-limit N` trains on a
seeded sample instead (recorded in the summary).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLI = "import sys; from tunelab.cli import main; sys.exit(main(sys.argv[1:]))"
MIN_LEFT = 30  # seconds of the budget an experiment needs to start

# name -> (command, task, options). Fine-tuning defaults are squad's own (lr 3e-5, batch 12, 2 epochs, 384).
EXPERIMENTS: dict[str, tuple[str, str, list[str]]] = {
    "zs-free": ("zeroshot", "squad", ["--decoding", "free"]),
    "zs-extractive": ("zeroshot", "squad", ["--decoding", "extractive"]),
    "zs-grounded": ("zeroshot", "squad", ["--decoding", "grounded"]),  # (with squad's default focus: 2)
    "zs-grounded-whole": ("zeroshot", "squad", ["--decoding", "grounded", "--focus", "0"]),
    "zs-3shot-free": ("zeroshot", "squad", ["--decoding", "free", "--shots", "3"]),
    "zs-3shot-grounded": ("zeroshot", "squad", ["--decoding", "grounded", "--shots", "3"]),
    "full-lr3e-5-2ep": (
        "finetune",
        "squad",
        ["--method", "full", "--learning-rate", "3e-5", "--epochs", "2"],
    ),
    "full-lr3e-5-2ep-bidir": (
        "finetune",
        "squad",
        ["--method", "full", "--learning-rate", "3e-5", "--epochs", "2", "--bidirectional"],
    ),
    "full-lr1e-4-2ep": (
        "finetune",
        "squad",
        ["--method", "full", "--learning-rate", "1e-4", "--epochs", "2"],
    ),
    "full-lr5e-5-3ep": (
        "finetune",
        "squad",
        ["--method", "full", "--learning-rate", "5e-5", "--epochs", "3"],
    ),
    "lora-lr3e-4-2ep": (
        "finetune",
        "squad",
        ["--method", "lora", "--learning-rate", "3e-4", "--epochs", "2"],
    ),
    "lora-lr3e-4-2ep-bidir": (
        "finetune",
        "squad",
        ["--method", "lora", "--learning-rate", "3e-4", "--epochs", "2", "--bidirectional"],
    ),
    "v2-alone": ("finetune", "squad_v2", ["--method", "full"]),
    "v2-plus-v11-train": ("finetune", "squad_v2", ["--method", "full", "--extra-train", "squad:train"]),
}
# --tiny: every experiment on a few examples, on the CPU
TINY = {
    "zeroshot": ["--limit", "4", "--max-new-tokens", "3", "--batch-size", "4"],
    "finetune": ["--limit", "4", "--train-limit", "12", "--max-length", "256", "--batch-size", "4"]
    + ["--epochs", "1", "--no-bf16"],
}


def metrics_file(out: Path, kind: str) -> Path:
    return out / "eval" / "metrics.json" if kind == "finetune" else out / "metrics.json"


def command(name: str, model: str, out: Path, tiny: bool, train_limit: int | None) -> list[str]:
    kind, task, options = EXPERIMENTS[name]
    cmd = [kind, model, "--task", task, "--out", str(out), *options]
    if tiny:  # given last, so these win (argparse keeps a repeated flag's last value)
        cmd += TINY[kind]
    elif train_limit and kind == "finetune":
        cmd += ["--train-limit", str(train_limit)]
    return cmd


def machine() -> dict:
    info = {"host": platform.node(), "python": platform.python_version()}
    try:
        import torch
        import transformers

        info.update(
            torch=torch.__version__,
            transformers=transformers.__version__,
            gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        )
    except ImportError:
        pass
    return info


def run(args) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = args.only.split(",") if args.only else list(EXPERIMENTS)
    unknown = [n for n in names if n not in EXPERIMENTS]
    if unknown:
        print(f"unknown experiments {unknown}; known: {', '.join(EXPERIMENTS)}", file=sys.stderr)
        return 2
    summary_file = out / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {"experiments": {}}
    summary.update(machine=machine(), tiny=args.tiny, model=args.model, train_limit=args.train_limit)
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])),
    )
    t_start, failed = time.monotonic(), 0
    for name in names:
        kind = EXPERIMENTS[name][0]
        folder = out / name
        done = metrics_file(folder, kind)
        if done.is_file():
            print(f"{name}: done before, skipped")
            continue
        left = args.budget - (time.monotonic() - t_start) if args.budget else None
        if left is not None and left < MIN_LEFT:
            summary["experiments"][name] = {"status": "skipped: budget"}
            continue
        cmd = command(name, args.model, folder, args.tiny, args.train_limit)
        print("tunelab " + " ".join(cmd), flush=True)
        entry: dict = {"command": "tunelab " + " ".join(cmd), "status": "running"}
        summary["experiments"][name] = entry  # saved before it starts: a call cut short still says so
        summary_file.write_text(json.dumps(summary, indent=1) + "\n")
        t0 = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-c", CLI, *cmd], env=env)
        try:  # the budget bounds each experiment too: stopped with SIGTERM (tunelab cleans up), then killed
            code = proc.wait(timeout=left)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            code = None
        entry["seconds"] = time.monotonic() - t0
        if code is None:
            failed += 1
            entry.update(status=f"timeout: stopped at the budget after {entry['seconds']:.0f} s")
        elif code == 0 and done.is_file():
            m = json.loads(done.read_text())
            keys = (
                "exact_match",
                "f1",
                "best_f1",
                "HasAns_f1",
                "NoAns_f1",
                "n",
                "train_examples",
                "train_seconds",
            )
            entry.update(status="ok", metrics={k: m[k] for k in keys if k in m})
            for k in ("decoding", "shots", "method", "bidirectional", "train_data"):
                if k in m:
                    entry[k] = m[k]
        else:
            failed += 1
            entry.update(status=f"failed (exit {code})")
        summary["experiments"][name] = entry
        summary_file.write_text(json.dumps(summary, indent=1) + "\n")  # saved as it goes
    summary_file.write_text(json.dumps(summary, indent=1) + "\n")
    return 1 if failed else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="results folder (one subfolder per experiment, summary.json)")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--only", help="comma-separated experiment names, run in that order")
    ap.add_argument(
        "--budget",
        type=float,
        default=None,
        help="seconds for the whole run: an experiment starts only with 30 s left and is stopped at the end",
    )
    ap.add_argument(
        "--train-limit", type=int, default=None, help="fine-tune on a seeded sample of N questions"
    )
    ap.add_argument("--tiny", action="store_true", help="every experiment on a few examples (CPU check)")
    ap.add_argument("--list", action="store_true", help="print the experiments and their commands")
    args = ap.parse_args()
    if args.list:
        for name in EXPERIMENTS:
            cmd = command(name, args.model, Path("OUT") / name, False, args.train_limit)
            print(f"{name}: tunelab {' '.join(cmd)}")
        return 0
    if not args.out:
        ap.error("--out is required")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
