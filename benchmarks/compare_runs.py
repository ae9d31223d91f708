"""Compare two study run folders: every metrics.json (metric values and n) and the per-example predictions.

    .venv/bin/python benchmarks/compare_runs.py RUN_A RUN_B [--out FILE] [--note TEXT ...]

writes benchmarks/results/redesign-equivalence-cpu.json by default.

Timings (seconds, tokens per second) and paths that name the run folder itself differ between any two runs;
they are listed apart and not counted as differences. Keys only one side has are listed as added or removed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

TIMING = ("seconds", "train_seconds", "eval_seconds", "tokens_per_s")
ROWS = (
    "predictions.jsonl",
    "per_example.jsonl",
    "predictions.json",
    "nbest_predictions.json",
    "na_probs.json",
)


def _flat(obj, prefix: str = "") -> dict:
    """Nested dicts as {dotted.key: value}; lists stay values."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): obj}


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def _normalise(value, run: Path):
    """A value with the run folder's own path removed (the fine-tuned model is named by its folder)."""
    if isinstance(value, str):
        return value.replace(str(run.resolve()), "RUN").replace(str(run), "RUN")
    return value


def _diff(a, b):
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return b - a
    return None


def compare_metrics(a: Path, b: Path, run_a: Path, run_b: Path) -> dict:
    fa = {k: _normalise(v, run_a) for k, v in _flat(json.loads(a.read_text())).items()}
    fb = {k: _normalise(v, run_b) for k, v in _flat(json.loads(b.read_text())).items()}
    rows, timings, differ = [], [], []
    for key in sorted(set(fa) & set(fb)):
        entry = {"key": key, "a": fa[key], "b": fb[key], "difference": _diff(fa[key], fb[key])}
        if key.split(".")[-1] in TIMING or key.startswith("evals_during_training") and "seconds" in key:
            timings.append(entry)
            continue
        entry["same"] = _same(fa[key], fb[key])
        rows.append(entry)
        if not entry["same"]:
            differ.append(key)
    return {
        "metrics": rows,
        "timings_not_compared": timings,
        "differ": differ,
        "only_in_a": sorted(set(fa) - set(fb)),
        "only_in_b": sorted(set(fb) - set(fa)),
    }


def compare_rows(a: Path, b: Path) -> dict:
    """Per-example files: equal object for object (JSON lines) or as a whole (JSON)."""
    if a.suffix == ".jsonl":
        ra = [json.loads(x) for x in a.read_text().splitlines() if x.strip()]
        rb = [json.loads(x) for x in b.read_text().splitlines() if x.strip()]
        keys = sorted(set().union(*ra, *rb)) if ra or rb else []
        differ = {
            k: sum(1 for x, y in zip(ra, rb, strict=False) if not _same(x.get(k), y.get(k))) for k in keys
        }
        return {
            "examples": [len(ra), len(rb)],
            "rows_equal": ra == rb,
            "differing_rows_by_key": {k: n for k, n in differ.items() if n},
        }
    return {"equal": json.loads(a.read_text()) == json.loads(b.read_text())}


def compare(run_a: Path, run_b: Path) -> dict:
    out: dict = {"stages": {}}
    for ma in sorted(run_a.rglob("metrics.json")):
        rel = ma.relative_to(run_a)
        mb = run_b / rel
        if not mb.is_file():
            out["stages"][str(rel.parent)] = {"missing_in_b": True}
            continue
        stage = compare_metrics(ma, mb, run_a, run_b)
        stage["per_example"] = {
            name: compare_rows(ma.parent / name, mb.parent / name)
            for name in ROWS
            if (ma.parent / name).is_file() and (mb.parent / name).is_file()
        }
        out["stages"][str(rel.parent)] = stage
    for la in sorted(run_a.rglob("train_log.jsonl")):  # the losses step by step (throughput left out)
        lb = run_b / la.relative_to(run_a)
        if lb.is_file():
            rows = [
                [
                    {k: v for k, v in json.loads(x).items() if k not in TIMING}
                    for x in f.read_text().splitlines()
                    if x.strip()
                ]
                for f in (la, lb)
            ]
            out["train_logs"] = {
                **out.get("train_logs", {}),
                str(la.relative_to(run_a)): {
                    "steps": [len(rows[0]), len(rows[1])],
                    "equal": rows[0] == rows[1],
                    "final_loss": [
                        rows[0][-1]["loss"] if rows[0] else None,
                        rows[1][-1]["loss"] if rows[1] else None,
                    ],
                },
            }
    for mb in sorted(run_b.rglob("metrics.json")):
        if not (run_a / mb.relative_to(run_b)).is_file():
            out["stages"][str(mb.relative_to(run_b).parent)] = {"missing_in_a": True}
    out["identical"] = all(
        not s.get("missing_in_a")
        and not s.get("missing_in_b")
        and not s["differ"]
        and all(r.get("rows_equal", r.get("equal")) for r in s["per_example"].values())
        for s in out["stages"].values()
    ) and all(t["equal"] for t in out.get("train_logs", {}).values())
    return out


def machine() -> dict:
    import torch

    return {
        "host": platform.node(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_a")
    ap.add_argument("run_b")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "redesign-equivalence-cpu.json"))
    ap.add_argument("--note", action="append", default=[], help="a sentence for the result file (repeatable)")
    args = ap.parse_args()
    run_a, run_b = Path(args.run_a), Path(args.run_b)
    result = {
        "command": "python benchmarks/compare_runs.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "run_a": str(run_a),
        "run_b": str(run_b),
        "notes": args.note,
        **compare(run_a, run_b),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    for stage, s in result["stages"].items():
        if "differ" not in s:
            print(f"{stage}: {'missing in B' if s.get('missing_in_b') else 'missing in A'}")
            continue
        rows = {k: v.get("rows_equal", v.get("equal")) for k, v in s["per_example"].items()}
        print(
            f"{stage}: {len(s['metrics'])} metrics compared, {len(s['differ'])} differ {s['differ'][:5]}; "
            f"per-example files equal: {rows}; only in B: {s['only_in_b']}"
        )
    for log, t in result.get("train_logs", {}).items():
        print(f"{log}: {t['steps']} logged steps, equal: {t['equal']}, final loss {t['final_loss']}")
    print(f"identical: {result['identical']} -> {args.out}")
    return 0 if result["identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
