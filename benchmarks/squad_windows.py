"""Seconds to read and window SQuAD v1.1 train (rebuilt, 87,599 questions) with the SmolLM2 tokenizer.

Times, on this machine, three stages of what `tunelab finetune --task squad` does before training:
*read* (`read_squad`, every answer checked against its passage), *windows (cold)* (tunelab's training windows,
`prepare_train_features` at max_length 384 and the default stride, with an empty window cache: tokenising,
windowing, labelling and writing the cache file) and *windows (cached)* (the same call again, read from the
cache). Each stage runs `--repeats` times in a fresh cache folder; the median and every run are saved.

    # the whole training set (the lead runs it on a quiet machine) -> results/squad-windows-cpu.json
    python benchmarks/squad_windows.py
    # a trial on the first N questions (the test runs it so); writes only with --out
    python benchmarks/squad_windows.py --limit 300 --out /tmp/w.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from machine_info import cpu_name, git_commit

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "squad-windows-cpu.json"


def default_data() -> str:
    data_dir = os.environ.get("TUNELAB_DATA_DIR") or str(ROOT.parent / "shared" / "data")
    return str(Path(data_dir) / "squad" / "v1.1-train.json")


def machine() -> dict:
    import tokenizers
    import transformers

    return {
        "host": platform.node(),
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "load_average_1m_at_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
    }


def timed(fn):
    t0 = time.perf_counter()
    value = fn()
    return time.perf_counter() - t0, value


def run(data: str, model: str, limit: int | None, repeats: int, max_length: int) -> dict:
    from tunelab.data.squad import read_squad
    from tunelab.models import load_tokenizer
    from tunelab.tasks.extractive_qa import window_cache
    from tunelab.tasks.extractive_qa.spans import doc_stride
    from tunelab.tasks.extractive_qa.windows import prepare_train_features

    tok = load_tokenizer(model, padding_side="right")
    stride = doc_stride(max_length)
    times: dict[str, list[float]] = {"read": [], "windows_cold": [], "windows_cached": []}
    n_windows = n_examples = 0
    for _ in range(repeats):
        seconds, examples = timed(lambda: read_squad(data))
        times["read"].append(seconds)
        examples = examples[:limit] if limit else examples
        n_examples = len(examples)
        with tempfile.TemporaryDirectory() as cache:
            os.environ["TUNELAB_CACHE"] = cache  # an empty window cache
            os.environ["TUNELAB_WINDOW_CACHE"] = "1"
            window_cache.MIN_EXAMPLES = 0  # cache even a --limit trial
            for stage in ("windows_cold", "windows_cached"):
                t0 = time.perf_counter()
                feats = prepare_train_features(examples, tok, max_length, stride)
                seconds = time.perf_counter() - t0
                times[stage].append(seconds)
                n_windows = len(feats["input_ids"])
    return {
        "what": "read and window SQuAD v1.1 train (rebuilt) for fine-tuning",
        "data": data,
        "questions": n_examples,
        "windows": n_windows,
        "limit": limit,
        "tokenizer": model,
        "max_length": max_length,
        "stride": stride,
        "repeats": repeats,
        "seconds_median": {k: statistics.median(v) for k, v in times.items()},
        "seconds_runs": times,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--data", default=None, help="SQuAD JSON file (default: $TUNELAB_DATA_DIR/squad/v1.1-train.json)"
    )
    ap.add_argument("--model", default="smollm2-135m", help="whose tokenizer")
    ap.add_argument("--limit", type=int, default=None, help="only the first N questions (a trial)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-length", type=int, default=384)
    ap.add_argument("--out", default=None, help=f"result JSON (default without --limit: {DEFAULT_OUT})")
    args = ap.parse_args()
    out = args.out or (None if args.limit else str(DEFAULT_OUT))
    result = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "git_commit": git_commit(),
        "machine": machine(),
        **run(args.data or default_data(), args.model, args.limit, args.repeats, args.max_length),
    }
    print(
        json.dumps(result["seconds_median"], indent=1),
        f"{result['questions']} questions, {result['windows']} windows",
    )
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=1) + "\n")
        print("wrote", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
