"""Wall time of the `smoke` study (`make demo`) on this machine's CPU; writes results/cpu-smoke-study.json.

.venv/bin/python benchmarks/cpu_smoke.py [--out runs/smoke-bench]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/smoke-bench")
    args = ap.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    shutil.rmtree(args.out + ".partial", ignore_errors=True)
    t0 = time.perf_counter()
    rc = subprocess.call([sys.executable, "-m", "tunelab", "study", "--preset", "smoke", "--out", args.out])
    wall = time.perf_counter() - t0
    import torch

    stages = json.loads((Path(args.out) / "stages.json").read_text()) if rc == 0 else None
    result = {
        "case": "smoke study (make demo)",
        "machine": {
            "host": platform.node(),
            "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "gpu": None,
        },
        "rc": rc,
        "wall_seconds": wall,
        "limit_seconds": 900,
        "stages": stages,
        "date": time.strftime("%Y-%m-%d"),
    }
    out = Path(__file__).parent / "results" / "cpu-smoke-study.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("rc", "wall_seconds")}))
    return rc


if __name__ == "__main__":
    sys.exit(main())
