"""Wall time of the `smoke` study (`make demo`) on this machine's CPU, with each stage's seconds and every
zero-shot and fine-tuned score it reported (the run's metrics.json files); writes
results/cpu-smoke-study.json, naming the machine and the commit.

.venv/bin/python benchmarks/cpu_smoke.py [--out runs/smoke-bench]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from machine_info import git_commit, machine

SCORES = (
    "accuracy",
    "macro_f1",
    "exact_match",
    "f1",
    "n",
    "dtype",
    "decoding",
    "focus",
    "question_words",
    "method",
    "train_examples",
)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/smoke-bench")
    args = ap.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    shutil.rmtree(args.out + ".partial", ignore_errors=True)
    t0 = time.perf_counter()
    rc = subprocess.call([sys.executable, "-m", "tunelab", "study", "--preset", "smoke", "--out", args.out])
    wall = time.perf_counter() - t0
    run = Path(args.out)
    stages = json.loads((run / "stages.json").read_text()) if rc == 0 else None
    scores = {}  # <task>/<stage>: what its metrics.json reported
    for f in sorted(run.glob("*/zeroshot/metrics.json")) + sorted(run.glob("*/finetune*/eval/metrics.json")):
        m = json.loads(f.read_text())
        key = str(f.relative_to(run).parent).removesuffix("/eval")
        scores[key] = {k: m[k] for k in SCORES if k in m}
    result = {
        "case": "smoke study (make demo)",
        "machine": machine("cpu"),
        "rc": rc,
        "wall_seconds": wall,
        "limit_seconds": 900,
        "stages": stages,
        "scores": scores,
        "commit": git_commit(),
        "date": time.strftime("%Y-%m-%d"),
    }
    out = Path(__file__).parent / "results" / "cpu-smoke-study.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("rc", "wall_seconds")}))
    return rc


if __name__ == "__main__":
    sys.exit(main())
