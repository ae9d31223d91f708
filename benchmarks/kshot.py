"""k-shot against zero-shot prompting (`tunelab zeroshot --shots K`), and what the shared-prefix cache saves.

Quality: each (task, K, shot seed) is one `tunelab zeroshot` command, as a user runs it (its own process,
default prompt, decoding, precision and batching; a SQuAD run records its decoding): SST-2 on the whole dev
set (872 sentences), SQuAD v1.1 on every 20th question of the official dev set (529; written once into the
work folder and given as `--data-file`). The K solved examples come from the task's training split (SQuAD
v1.1 train (rebuilt)), drawn with the shot seed.
Reported per run: the score with its 95% interval and the command's seconds; per K > 0 against zero-shot on
the same examples: McNemar (SST-2 accuracy) or the paired bootstrap of F1 (SQuAD).

Speed: the first `--prefix-questions` questions of the SQuAD sample answered 3-shot by
`generate_answers` twice in this process, the solved examples recomputed in every prompt (`reuse_prefix`
off) and run once with their key/value cache copied to each batch (on, the default): seconds, ratio, F1 of
each and the answers that changed (float rounding of a differently shaped computation; bfloat16 on CPUs
with native bfloat16, as tunelab zeroshot runs).

    python benchmarks/kshot.py                           # -> results/kshot-cpu.json (about 30 min on 2 cores)
    python benchmarks/kshot.py --sst2-shots "" --prefix-questions 0 --out FILE   # SQuAD runs only
    python benchmarks/kshot.py --tiny --model DIR --out /tmp/k.json   # every path on a few examples
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

from machine_info import git_commit, machine

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "kshot-cpu.json"


def data_dir() -> Path:
    return Path(os.environ.get("TUNELAB_DATA_DIR") or ROOT.parent / "shared" / "data")


def squad_sample(every: int, limit: int | None, path: Path) -> Path:
    """Every `every`-th question of the official v1.1 dev file (in file order), as a SQuAD file at `path`."""
    data = json.loads((data_dir() / "squad" / "v1.1-dev.json").read_text())
    k, taken, articles = 0, 0, []
    for art in data["data"]:
        paragraphs = []
        for par in art["paragraphs"]:
            qas = []
            for q in par["qas"]:
                if k % every == 0 and (limit is None or taken < limit):
                    qas.append(q)
                    taken += 1
                k += 1
            if qas:
                paragraphs.append({"context": par["context"], "qas": qas})
        if paragraphs:
            articles.append({"title": art["title"], "paragraphs": paragraphs})
    path.write_text(json.dumps({"version": data.get("version", "1.1"), "data": articles}))
    return path


def zeroshot(model: str, task: str, shots: int, seed: int, out: Path, extra: list[str]) -> tuple[float, dict]:
    argv = [model, "--task", task, "--shots", str(shots), "--shot-seed", str(seed), "--out", str(out), *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "tunelab", "zeroshot", *argv], capture_output=True, text=True
    )
    wall = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(f"tunelab zeroshot {' '.join(argv)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    print(f"{task} {shots}-shot seed {seed}: {wall:.0f} s", file=sys.stderr)
    return wall, json.loads((out / "metrics.json").read_text())


def correct_sst2(folder: Path) -> dict[int, bool]:
    """Per dev line: was the prediction right (predictions.jsonl of a classification run)."""
    rows = [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]
    return {r["line"]: r["prediction"] == r["gold"] for r in rows}


def f1_squad(folder: Path, sample: Path) -> dict[str, float]:
    from tunelab.data.squad import read_squad
    from tunelab.tasks.extractive_qa.metrics import per_example_scores

    preds = json.loads((folder / "predictions.json").read_text())
    refs = {ex.id: [a["text"] for a in ex.answers] for ex in read_squad(str(sample))}
    return {k: 100.0 * v["f1"] for k, v in per_example_scores(preds, refs).items()}


def against_zero_shot(task: str, base: Path, other: Path, sample: Path) -> dict:
    from tunelab.metrics import mcnemar, paired_bootstrap

    if task == "sst2":
        a, b = correct_sst2(base), correct_sst2(other)
        keys = sorted(a)
        test = mcnemar([a[k] for k in keys], [b[k] for k in keys])
        return {
            "zero_shot_only_correct": test["only_a_correct"],
            "k_shot_only_correct": test["only_b_correct"],
            "mcnemar_p": test["p_value"],
        }
    a, b = f1_squad(base, sample), f1_squad(other, sample)
    keys = sorted(a)
    diff = paired_bootstrap([a[k] for k in keys], [b[k] for k in keys])
    return {"k_shot_minus_zero_shot_f1": diff}


def score(task: str, metrics: dict) -> dict:
    if task == "sst2":
        return {"accuracy": metrics["accuracy"], "accuracy_ci95": metrics.get("accuracy_ci95")}
    return {k: metrics.get(k) for k in ("exact_match", "f1", "f1_ci95")}


def prefix_speed(model_name: str, sample: Path, n: int, shots: int) -> dict:
    """3-shot answers of the first `n` sample questions with and without the shared-prefix cache."""
    import torch

    from tunelab.data.squad import read_squad
    from tunelab.models import load_causal_lm, load_tokenizer
    from tunelab.precision import eval_dtype
    from tunelab.tasks import get_task
    from tunelab.tasks.extractive_qa import generation
    from tunelab.tasks.extractive_qa.metrics import squad_v1

    task = get_task("squad")
    examples = read_squad(str(sample))[:n]
    pool = read_squad(str(data_dir() / "squad" / "v1.1-train.json"))
    demos = task.draw_shots(pool, shots, 0, examples)
    tok = load_tokenizer(model_name, padding_side="left")
    model = load_causal_lm(model_name, dtype=eval_dtype(torch.device("cpu"))).eval()
    prompt = task.prompt(None)
    generation.generate_answers(model, tok, examples[:2], prompt, max_new_tokens=2, progress=False)  # warm-up
    refs = {ex.id: [a["text"] for a in ex.answers] for ex in examples}
    out = {}
    for label, reuse in (("whole_prompts", False), ("prefix_cache", True)):
        t0 = time.perf_counter()
        _, answers, _ = generation.generate_answers(
            model, tok, examples, prompt, shots=demos, reuse_prefix=reuse, progress=False
        )
        seconds = time.perf_counter() - t0
        scores = squad_v1({ex.id: a for ex, a in zip(examples, answers, strict=True)}, refs)
        out[label] = {
            "seconds": seconds,
            "f1": scores["f1"],
            "exact_match": scores["exact_match"],
            "answers": answers,
        }
        print(f"prefix check, {label}: {seconds:.0f} s", file=sys.stderr)
    changed = sum(
        a != b for a, b in zip(out["whole_prompts"]["answers"], out["prefix_cache"]["answers"], strict=True)
    )
    for v in out.values():
        del v["answers"]
    return {
        "questions": len(examples),
        "shots": shots,
        "dtype": str(model.dtype).removeprefix("torch."),
        **out,
        "ratio": out["whole_prompts"]["seconds"] / out["prefix_cache"]["seconds"],
        "answers_changed": changed,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--sst2-shots", default="0,4,8", help="K values for SST-2 (0: zero-shot; empty: none)")
    ap.add_argument("--squad-shots", default="0,1,3", help="K values for SQuAD (empty: none)")
    ap.add_argument("--seeds", default="0,1", help="shot seeds, each K > 0 is run with each")
    ap.add_argument("--every", type=int, default=20, help="SQuAD sample: every N-th official dev question")
    ap.add_argument(
        "--prefix-questions",
        type=int,
        default=128,
        help="questions of the prefix-cache timing (0: no timing)",
    )
    ap.add_argument("--tiny", action="store_true", help="a few examples of each, to check the script")
    ap.add_argument(
        "--out", default=None, help=f"result JSON (default {DEFAULT_OUT.relative_to(ROOT)}; --tiny: none)"
    )
    args = ap.parse_args()
    out = Path(args.out) if args.out else (None if args.tiny else DEFAULT_OUT)
    seeds = [int(s) for s in args.seeds.split(",")]
    limit = 6 if args.tiny else None
    result = {
        "case": "k-shot against zero-shot prompting (tunelab zeroshot --shots K); the shared-prefix cache",
        "trial": args.tiny,
        "model": args.model,
        "sst2": {"data": "SST-2 dev" + (" (first 6)" if args.tiny else " (872 sentences)"), "runs": []},
        "squad": {"data": f"SQuAD v1.1 official dev, every {args.every}th question", "runs": []},
        "shots_from": "the task's training split (SQuAD: v1.1 train (rebuilt)), drawn with the shot seed",
    }

    def save() -> None:  # after every run, so that a run cut short keeps what it finished
        if out is not None:
            result.update(machine=machine("cpu"), git_commit=git_commit(), date=time.strftime("%Y-%m-%d"))
            result["command"] = "python benchmarks/kshot.py " + " ".join(sys.argv[1:])
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(result, indent=2) + "\n")

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        sample = squad_sample(args.every, limit, work / "squad-sample.json")
        result["squad"]["questions"] = sum(
            len(p["qas"]) for a in json.loads(sample.read_text())["data"] for p in a["paragraphs"]
        )
        for task, ks in (("sst2", args.sst2_shots), ("squad", args.squad_shots)):
            extra = ["--limit", str(limit)] if task == "sst2" and limit else []
            if task == "squad":  # the whole passage (focus 0), as the committed results were measured
                extra = ["--data-file", str(sample), "--focus", "0"]
            base = None
            for k in (int(x) for x in ks.split(",") if x):  # an empty list skips the task
                for seed in seeds if k else [0]:
                    folder = work / f"{task}-{k}-{seed}"
                    wall, metrics = zeroshot(args.model, task, k, seed, folder, extra)
                    row = {
                        "shots": k,
                        "shot_seed": seed if k else None,
                        "wall_seconds": wall,
                        "seconds": metrics.get("seconds"),
                        **({"decoding": metrics["decoding"]} if "decoding" in metrics else {}),
                        **score(task, metrics),
                    }
                    if k == 0:
                        base = folder
                    elif base is not None:
                        row["against_zero_shot"] = against_zero_shot(task, base, folder, sample)
                    result[task]["runs"].append(row)
                    save()
        if args.prefix_questions:
            result["prefix_cache"] = prefix_speed(
                args.model, sample, 4 if args.tiny else args.prefix_questions, 3
            )
            save()
    print(json.dumps(result, indent=2))
    if out is not None:
        print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
