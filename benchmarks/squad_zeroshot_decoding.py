"""Zero-shot SQuAD v1.1: free generation, extractive decoding and grounded answers, on a fixed sample of the
official dev set.

Both answer every question of the sample with SmolLM2-135M-Instruct (default) from tunelab's default zero-shot
prompt (the chat template, the answer started as `The answer is "`), greedily, in the same batches (sorted by
prompt length, left padding, as tunelab's zero-shot recipe batches): *free* stops at a newline or the closing
quote; *extractive* adds `tunelab.decoding.ExtractiveSpans`, which allows only tokens that keep the answer a
piece of the passage, plus a stop; *grounded* takes free's answers, replaces each by its closest passage span
(`tunelab.tasks.extractive_qa.generation.ground_answer`) and answers the questions whose answer shares no word
with the passage again, extractive (those rows of the batch in one batch). Each batch is answered free and
extractive one after the other, so that a change in the machine's load falls on both alike; each mode's wall
seconds include all its own work (tokenising, building its constraint tables, generating, cleaning the
answers); grounded's are free's plus the grounding and its own extractive batch.

Reports the official SQuAD v1.1 exact match and F1 (tunelab.tasks.extractive_qa.metrics), F1's 95% bootstrap
interval, the paired bootstrap of each F1 difference, the share of answers found in their passage, and the
wall seconds.

    # every 20th question (529): about 10+ min on 2 cores -> results/squad-zeroshot-decoding-cpu.json
    python benchmarks/squad_zeroshot_decoding.py
    # a trial: prints, writes nothing without --out
    python benchmarks/squad_zeroshot_decoding.py --limit 16
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
from machine_info import git_commit, machine
from transformers import LogitsProcessorList

from tunelab.data.squad import read_squad
from tunelab.decoding import encode_with_passage, extractive_processor
from tunelab.metrics import bootstrap_ci, paired_bootstrap
from tunelab.models import load_causal_lm, load_tokenizer
from tunelab.precision import eval_dtype
from tunelab.tasks.extractive_qa.generation import clean_answer, ground_answer, load_prompt
from tunelab.tasks.extractive_qa.metrics import per_example_scores, squad_v1

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "squad-zeroshot-decoding-cpu.json"
MODES = ("free", "extractive", "grounded")


def default_data() -> str:
    data_dir = os.environ.get("TUNELAB_DATA_DIR") or str(ROOT.parent / "shared" / "data")
    return str(Path(data_dir) / "squad" / "v1.1-dev.json")


@torch.no_grad()
def answer_batch(model, tok, examples, prompt, *, extractive: bool, max_new_tokens: int) -> list[str]:
    """Greedy answers of one batch (left padding: every prompt ends at the last column), cleaned as tunelab's
    zero-shot recipe cleans them."""
    texts = [prompt.render(tok, ex, False) for ex in examples]
    # a chat template writes its own special tokens; a plain prompt gets the tokenizer's (Llama's BOS)
    enc = [
        encode_with_passage(tok, t, ex.context, add_special_tokens=not prompt.chat)
        for t, ex in zip(texts, examples, strict=True)
    ]
    width = max(len(p) for p, _ in enc)
    ids = torch.full((len(enc), width), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(enc), width), dtype=torch.long)
    for row, (p, _) in enumerate(enc):
        ids[row, width - len(p) :] = torch.tensor(p)
        mask[row, width - len(p) :] = 1
    processors = LogitsProcessorList()
    if extractive:
        processors.append(
            extractive_processor(
                tok,
                [q for _, q in enc],
                prompt_length=width,
                stop_strings=prompt.stop_strings(),
                eos_token_id=model.generation_config.eos_token_id,
            )
        )
    dev = next(model.parameters()).device
    out = model.generate(
        input_ids=ids.to(dev),
        attention_mask=mask.to(dev),
        do_sample=False,
        max_new_tokens=max_new_tokens,
        stop_strings=prompt.stop_strings(),
        tokenizer=tok,
        pad_token_id=tok.pad_token_id,
        logits_processor=processors,
    )
    raw = [tok.decode(row, skip_special_tokens=True) for row in out[:, width:].cpu()]
    return [clean_answer(r, ex.context, prompt.stop_strings()) for r, ex in zip(raw, examples, strict=True)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument(
        "--data",
        default=None,
        help="SQuAD v1.1 dev file (default: $TUNELAB_DATA_DIR or ../shared/data, squad/v1.1-dev.json)",
    )
    ap.add_argument("--every", type=int, default=20, help="take every N-th question (default 20: 529)")
    ap.add_argument("--offset", type=int, default=0, help="starting from this question (default 0)")
    ap.add_argument(
        "--limit", type=int, default=None, help="only the first K questions of the sample (a trial)"
    )
    ap.add_argument("--prompt", default=None, help="zero-shot prompt template (default: tunelab's default)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument(
        "--out",
        default=None,
        help=f"result JSON (default: {DEFAULT_OUT.relative_to(ROOT)} for "
        "the full every-20th sample; nothing is written for --limit or another --every without it)",
    )
    args = ap.parse_args()
    if args.every < 1 or args.offset < 0 or (args.limit is not None and args.limit < 1):
        ap.error("--every and --limit must be positive, --offset not negative")
    full_sample = args.data is None and args.limit is None and args.every == 20 and args.offset == 0
    out = Path(args.out) if args.out else (DEFAULT_OUT if full_sample else None)
    if args.threads:
        torch.set_num_threads(args.threads)

    data = args.data or default_data()
    examples = read_squad(data)[args.offset :: args.every]
    if args.limit is not None:
        examples = examples[: args.limit]
    prompt = load_prompt(args.prompt)
    tok = load_tokenizer(args.model, padding_side="left")
    model = load_causal_lm(args.model, dtype=eval_dtype(torch.device("cpu"))).eval()  # as tunelab zeroshot
    answer_batch(model, tok, examples[:1], prompt, extractive=False, max_new_tokens=2)  # warm-up, not timed

    lengths = [
        len(
            encode_with_passage(
                tok, prompt.render(tok, ex, False), ex.context, add_special_tokens=not prompt.chat
            )[0]
        )
        for ex in examples
    ]
    order = sorted(range(len(examples)), key=lambda i: lengths[i], reverse=True)
    answers = {m: [""] * len(examples) for m in MODES}
    seconds = dict.fromkeys(MODES, 0.0)
    grounded_free = 0.0  # free's seconds already counted in grounded's
    regenerated = 0  # grounded answers that came from extractive decoding
    for start in range(0, len(order), args.batch_size):
        idx = order[start : start + args.batch_size]
        for mode in ("free", "extractive"):
            t0 = time.perf_counter()
            got = answer_batch(
                model,
                tok,
                [examples[i] for i in idx],
                prompt,
                extractive=mode == "extractive",
                max_new_tokens=args.max_new_tokens,
            )
            seconds[mode] += time.perf_counter() - t0
            for i, a in zip(idx, got, strict=True):
                answers[mode][i] = a
        t0 = time.perf_counter()
        for i in idx:
            answers["grounded"][i] = ground_answer(answers["free"][i], examples[i].context)
        again = [i for i in idx if answers["grounded"][i] is None]
        if again:
            got = answer_batch(
                model,
                tok,
                [examples[i] for i in again],
                prompt,
                extractive=True,
                max_new_tokens=args.max_new_tokens,
            )
            for i, a in zip(again, got, strict=True):
                answers["grounded"][i] = a
        seconds["grounded"] += seconds["free"] - grounded_free + time.perf_counter() - t0
        grounded_free = seconds["free"]
        regenerated += len(again)
        print(
            f"{min(start + args.batch_size, len(order))}/{len(order)} questions, "
            + ", ".join(f"{m} {s:.0f} s" for m, s in seconds.items()),
            file=sys.stderr,
        )

    references = {ex.id: [a["text"] for a in ex.answers] for ex in examples}
    results, per = {}, {}
    for mode in MODES:
        preds = {ex.id: a for ex, a in zip(examples, answers[mode], strict=True)}
        scores = squad_v1(preds, references)
        per[mode] = per_example_scores(preds, references)
        f1s = [100.0 * per[mode][ex.id]["f1"] for ex in examples]
        results[mode] = {
            "exact_match": scores["exact_match"],
            "f1": scores["f1"],
            "f1_ci95": bootstrap_ci(f1s),
            "in_passage": sum(
                bool(a) and a in ex.context for a, ex in zip(answers[mode], examples, strict=True)
            )
            / len(examples),
            "empty": sum(not a for a in answers[mode]),
            "seconds": seconds[mode],
            "seconds_per_question": seconds[mode] / len(examples),
        }
    f1 = {m: [100.0 * per[m][ex.id]["f1"] for ex in examples] for m in MODES}
    result = {
        "case": "zero-shot SQuAD v1.1, free vs extractive decoding vs grounded answers",
        "trial": args.limit is not None,
        "model": args.model,
        "data": data,
        "sample": f"every {args.every}th question of the file from index {args.offset}"
        + (f", the first {args.limit}" if args.limit else ""),
        "n": len(examples),
        "prompt": args.prompt or "default",
        "batch_size": args.batch_size,
        "max_new_tokens": args.max_new_tokens,
        "dtype": str(model.dtype).removeprefix("torch."),
        **results,
        "extractive_minus_free_f1": paired_bootstrap(f1["free"], f1["extractive"]),
        "grounded_minus_free_f1": paired_bootstrap(f1["free"], f1["grounded"]),
        "grounded_minus_extractive_f1": paired_bootstrap(f1["extractive"], f1["grounded"]),
        "answers_changed": {
            m: sum(a != b for a, b in zip(answers["free"], answers[m], strict=True)) for m in MODES[1:]
        },
        "grounded_extractive_answers": regenerated,
        "machine": machine(str(next(model.parameters()).device)),
        "git_commit": git_commit(),
        "command": "python benchmarks/squad_zeroshot_decoding.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
        "questions": [
            {
                "id": ex.id,
                "question": ex.question,
                "gold": references[ex.id],
                **{m: answers[m][k] for m in MODES},
                **{f"{m}_f1": per[m][ex.id]["f1"] for m in MODES},
            }
            for k, ex in enumerate(examples)
        ],
    }
    summary = {k: v for k, v in result.items() if k != "questions"}
    print(json.dumps(summary, indent=2))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
