"""Evaluation batch sizes: fixed sizes against `batch_size: auto` (token-budget batches), same model and data.

Three evaluation paths, each run once per setting in this process, one after the other:

- zero-shot SST-2 dev (872 sentences; `--sst2-n`), tunelab's default recipe (chat prompt, shared-prefix cache,
  batch calibration), through `tunelab.runs.zeroshot` as `tunelab zeroshot` runs it;
- zero-shot SQuAD v1.1, the first `--squad-n` questions of the official dev set, greedy generation
  (tunelab's default prompt), through `tunelab.runs.zeroshot`, once per `--kv-caches` entry (dynamic, static:
  the `kv_cache` option) at every setting;
- with `--classify-n N`: the fine-tuned classifier's evaluation (`classify`) of the first N SST-2 dev
  sentences inside tunelab's default input prompt, the SmolLM2 body with an untrained head (timing and
  agreement only), at every setting once with the shared prefix run per batch (`share_prefix`) and once
  without;
- span-head evaluation (`predict_spans`) of the first `--spans-n` official dev questions' windows (384 tokens,
  stride 128), the SmolLM2 body with an untrained span head: timing only (its answers are compared between
  settings, not scored).

A setting is an integer (examples per batch) or `auto:N` (batch_size auto with a budget of N padded tokens;
`auto` alone: tunelab's budget for the device). Reported per path and setting: wall seconds of the scoring
(model loading excluded), the ratio against the path's first setting, the metrics, and how many predictions
differ from those of the task's first run (neither batching nor the cache may change them beyond float
rounding; for SQuAD the first run is the first kv cache's first setting).

    python benchmarks/eval_batching.py                     # CPU: -> results/eval-batching-cpu.json
    python benchmarks/eval_batching.py --sst2-n 64 --squad-n 8 --spans-n 8 --out /tmp/eb.json   # a trial
    python benchmarks/eval_batching.py --sst2-n 0 --squad-n 0 --spans-n 0 --classify-n 872 --settings 32 \
        --out benchmarks/results/eval-prefix-cpu.json   # the classifier with and without the shared prefix
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE.parent / "src") not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(HERE.parent / "src"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def task_dtype(dev):
    """A task model's weights as tunelab evaluates it: bfloat16 where it evaluates under bfloat16 autocast
    (GPUs; CPUs only with TUNELAB_CPU_BF16=on), else float32."""
    import torch

    from tunelab.precision import bf16_autocast

    return torch.bfloat16 if bf16_autocast(dev) else torch.float32


def parse_setting(text: str) -> tuple[str, int | str, int | None]:
    """(label, batch_size, token budget or None)."""
    text = text.strip()
    if text == "auto":
        return text, "auto", None
    if text.startswith("auto:"):
        return text, "auto", int(text.split(":", 1)[1])
    return text, int(text), None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--settings", default="16,32,auto:1024,auto:2048,auto:4096")
    ap.add_argument("--sst2-n", type=int, default=872)
    ap.add_argument("--squad-n", type=int, default=32)
    ap.add_argument("--spans-n", type=int, default=64)
    ap.add_argument("--classify-n", type=int, default=0)
    ap.add_argument(
        "--kv-caches", default="dynamic", help="zero-shot SQuAD's kv_cache values, comma-separated"
    )
    ap.add_argument("--out", help="result file (default benchmarks/results/eval-batching-<device>.json)")
    args = ap.parse_args(argv)

    import torch
    import transformers

    from tunelab import inference, runs
    from tunelab.distributed import device
    from tunelab.models import align_pad_token, load_task_model, load_tokenizer
    from tunelab.options import ZeroShotOptions
    from tunelab.tasks import get_task
    from tunelab.tasks.extractive_qa.spans import predict_spans

    settings = [parse_setting(s) for s in args.settings.split(",") if s.strip()]
    dev = device()
    data_dir = os.environ.get("TUNELAB_DATA_DIR", str(HERE.parent.parent / "shared" / "data"))
    report: dict = {
        "benchmark": "evaluation batch sizes: fixed against batch_size auto (token-budget batches)",
        "machine": {
            "host": platform.node(),
            "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "device": dev.type,
            "gpu": torch.cuda.get_device_name(0) if dev.type == "cuda" else None,
        },
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "model": args.model,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "paths": {},
    }
    out = Path(args.out or HERE / "results" / f"eval-batching-{dev.type}.json")
    work = Path(tempfile.mkdtemp(prefix="eval-batching-"))  # the runs' folders; removed at the end
    default_budgets = dict(inference.AUTO_TOKENS)

    def with_budget(budget):  # `auto:N` sets tunelab's budget to N; `auto` keeps tunelab's own
        inference.AUTO_TOKENS.update({k: budget or v for k, v in default_budgets.items()})

    jobs = []
    sst2, squad = get_task("sst2"), get_task("squad")
    if args.sst2_n:
        jobs.append(("zero-shot sst2", sst2, sst2.load_split("dev", data_dir)[0][: args.sst2_n], {}))
    squad_dev = squad.load_split("dev", data_dir)[0]
    for cache in [c.strip() for c in args.kv_caches.split(",") if c.strip()] if args.squad_n else []:
        jobs.append(
            # the whole passage (focus 0), as the committed results were measured
            (
                f"zero-shot squad ({cache} kv cache)",
                squad,
                squad_dev[: args.squad_n],
                {"kv_cache": cache, "focus": 0},
            )
        )
    firsts: dict[str, list] = {}  # per task, the predictions of its first job's first setting
    for j, (name, task, examples, more) in enumerate(jobs):
        rows = []
        for label, size, budget in settings:
            with_budget(budget)
            options = ZeroShotOptions(**{**task.zeroshot_options(), **more, "batch_size": size})
            folder = work / f"{j}-{len(rows)}"
            m = runs.zeroshot(task, args.model, examples, "dev", folder, options)
            answers = _predictions(folder)
            first = firsts.setdefault(task.name, answers)
            rows.append(
                {
                    "setting": label,
                    "seconds": m["seconds"],
                    **{k: m[k] for k in ("accuracy", "f1", "exact_match") if k in m},
                    "differ_from_first": sum(a != b for a, b in zip(answers, first, strict=True)),
                }
            )
            print(f"{name} {label}: {m['seconds']:.1f} s", flush=True)
        for r in rows:
            r["ratio_vs_first"] = rows[0]["seconds"] / r["seconds"]
        report["paths"][name] = {"n": len(examples), "rows": rows}
        _save(out, report)
    if args.classify_n:
        report["paths"]["classifier (untrained head), SST-2 input prompt"] = _classifier_rows(
            args, settings, with_budget, sst2, data_dir, dev
        )
        _save(out, report)
    if args.spans_n:
        tok = load_tokenizer(args.model)
        torch.manual_seed(0)  # the untrained head's weights
        model = load_task_model(args.model, "span", dtype=task_dtype(dev)).to(dev).eval()
        align_pad_token(model, tok)
        rows, first = [], None
        examples = squad_dev[: args.spans_n]
        for label, size, budget in settings:
            with_budget(budget)
            t0 = time.perf_counter()
            preds, _, _ = predict_spans(model, tok, examples, 384, 128, batch_size=size, progress=False)
            seconds = time.perf_counter() - t0
            first = first or preds
            rows.append(
                {
                    "setting": label,
                    "seconds": seconds,
                    "differ_from_first": sum(preds[k] != first[k] for k in first),
                }
            )
            print(f"span head {label}: {seconds:.1f} s", flush=True)
        for r in rows:
            r["ratio_vs_first"] = rows[0]["seconds"] / r["seconds"]
        report["paths"]["span head (untrained), timing"] = {"n": len(examples), "rows": rows}
        _save(out, report)
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(report["paths"], indent=2))
    print(f"wrote {out}")
    return 0


def _classifier_rows(args, settings, with_budget, sst2, data_dir, dev) -> dict:
    """The fine-tuned classifier's evaluation at every setting, without and with the shared prefix."""
    import torch

    from tunelab.models import align_pad_token, load_task_model, load_tokenizer
    from tunelab.tasks.classification import format_input
    from tunelab.tasks.classification.head import classify

    tok = load_tokenizer(args.model)
    torch.manual_seed(0)  # the untrained head's weights
    model = load_task_model(args.model, "classification", dtype=task_dtype(dev)).to(dev).eval()
    align_pad_token(model, tok)
    prompt = sst2.input_prompt(sst2.finetune_extras()["input_prompt"])
    texts = [
        format_input(prompt, tok, ex.text) for ex in sst2.load_split("dev", data_dir)[0][: args.classify_n]
    ]
    rows, first = [], None
    for label, size, budget in settings:
        with_budget(budget)
        for share in (False, True):
            t0 = time.perf_counter()
            scores = classify(model, tok, texts, 128, batch_size=size, progress=False, share_prefix=share)
            seconds = time.perf_counter() - t0
            first = scores if first is None else first
            rows.append(
                {
                    "setting": label,
                    "share_prefix": share,
                    "seconds": seconds,
                    "differ_from_first": int((scores.argmax(1) != first.argmax(1)).sum()),
                    "max_abs_logprob_diff": float(abs(scores - first).max()),
                }
            )
            print(f"classifier {label} share_prefix={share}: {seconds:.1f} s", flush=True)
    for r in rows:
        r["ratio_vs_first"] = rows[0]["seconds"] / r["seconds"]
    return {"n": len(texts), "rows": rows}


def _predictions(folder: Path) -> list:
    """A zero-shot run's predictions in a fixed order: classification's labels by line, QA's answers by id."""
    if (folder / "predictions.jsonl").is_file():
        return [
            json.loads(line)["prediction"] for line in (folder / "predictions.jsonl").read_text().splitlines()
        ]
    answers = json.loads((folder / "predictions.json").read_text())
    return [answers[k] for k in sorted(answers)]


def _save(out: Path, report: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
