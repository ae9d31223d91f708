"""`tunelab predict MODEL_DIR`: run a fine-tuned (or exported) folder on new inputs.

SST-2 folders classify sentences (positional texts, or `--file` of plain lines or an SST-2 TSV/CSV/JSONL) and
print the label with its probability. SQuAD folders answer `--question Q --context C`, or `--file` of SQuAD JSON
or JSONL records {"context", "question"[, "id"]}, and print the answer with its score. The task comes from the
folder's tunelab.json.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np

from tunelab.errors import DataError, UsageError

SST2_SUFFIXES = (".tsv", ".csv", ".jsonl")


# ---------------------------------------------------------------------------------------------------------------
# Inputs


def read_lines(path: str) -> list[str]:
    """Non-blank lines of a text file (`-` for stdin), trailing newline removed."""
    from tunelab.data.sst2 import read_utf8

    text = sys.stdin.read() if path == "-" else read_utf8(path)
    lines = [line.rstrip("\r") for line in text.split("\n")]
    lines = [line for line in lines if line.strip()]
    if not lines:
        raise DataError(path, "no sentences in the file")
    return lines


def sst2_inputs(texts: list[str], file: str | None) -> list[dict]:
    """[{"text", "gold"?}] from positional texts and/or a file (SST-2 TSV/CSV/JSONL, else one sentence a line)."""
    from tunelab.data.sst2 import read_sst2

    rows = [{"text": t} for t in texts]
    if file:
        if file != "-" and Path(file).suffix.lower() in SST2_SUFFIXES:
            for ex in read_sst2(file):
                rows.append({"text": ex.text, **({"gold": ex.label} if ex.label is not None else {})})
        else:
            rows += [{"text": t} for t in read_lines(file)]
    if not rows:
        raise UsageError("nothing to classify: give sentences as arguments or --file")
    for r in rows:
        if not r["text"].strip():
            raise UsageError("an empty sentence was given")
    return rows


def read_qa_jsonl(path: str) -> list[dict]:
    """JSONL of {"context", "question"[, "id"]}; DataError names the line."""
    from tunelab.data.sst2 import iter_jsonl_objects, read_utf8

    text = sys.stdin.read() if path == "-" else read_utf8(path)
    rows = []
    for n, obj in iter_jsonl_objects(path, text):
        for key in ("context", "question"):
            if not isinstance(obj.get(key), str) or not obj[key].strip():
                what = "missing" if key not in obj else "empty or not a string"
                raise DataError(path, f"{key!r} is {what}", line=n)
        rows.append({"id": str(obj.get("id", f"line{n}")), "context": obj["context"], "question": obj["question"]})
    if not rows:
        raise DataError(path, "no questions in the file")
    return rows


def squad_inputs(questions: list[str] | None, context: str | None, file: str | None) -> list[dict]:
    """[{"id", "question", "context"}] from --question/--context and/or a SQuAD JSON / JSONL file."""
    from tunelab.data.squad import read_squad

    rows = []
    if questions or context is not None:
        if not questions or context is None:
            raise UsageError("--question and --context go together")
        if not context.strip():
            raise UsageError("--context is empty")
        for i, q in enumerate(questions, 1):
            if not q.strip():
                raise UsageError("--question is empty")
            rows.append({"id": f"q{i}", "question": q, "context": context})
    if file:
        if file != "-" and Path(file).suffix.lower() == ".json":
            rows += [{"id": ex.id, "question": ex.question, "context": ex.context} for ex in read_squad(file)]
        elif file == "-" or Path(file).suffix.lower() == ".jsonl":
            rows += read_qa_jsonl(file)
        else:
            raise DataError(file, f"unknown file type {Path(file).suffix or '(none)'!r}: expected SQuAD .json or "
                                  ".jsonl of {context, question}")
    if not rows:
        raise UsageError("nothing to answer: give --question and --context, or --file")
    return rows


# ---------------------------------------------------------------------------------------------------------------
# Prediction


def predict_sst2(model_dir: str, rows: list[dict], batch_size: int = 64) -> list[dict]:
    """Label and probability per sentence, scored as tunelab's evaluation does (same input format, same
    classifier). Each row gets "label", "probability" (of that label) and "scores" (both classes)."""
    from tunelab.recipes import sst2
    from tunelab.recipes.common import device, load_finetuned
    from tunelab.tasks.classification import LABELS, Prompt, format_input

    model, tokenizer, meta = load_finetuned(model_dir, "sst2")
    model.to(device())
    prompt = Prompt(**meta["input_prompt"]) if meta.get("input_prompt") else None
    texts = [format_input(prompt, tokenizer, r["text"]) for r in rows]
    probs = np.exp(sst2.classify(model, tokenizer, texts, meta.get("max_length", 128), batch_size, progress=False))
    out = []
    for r, p in zip(rows, probs):
        k = int(p.argmax())
        out.append({**r, "label": LABELS[k], "probability": float(p[k]),
                    "scores": {LABELS[c]: float(p[c]) for c in range(len(LABELS))}})
    return out


def predict_squad(model_dir: str, rows: list[dict], batch_size: int = 64) -> list[dict]:
    """The best answer span per question. "score" is the span's start + end logit; "probability" is its share
    of a softmax over the n-best spans (and, for v2 models, the no-answer option); "" means no answer."""
    from tunelab.data.squad import SquadExample
    from tunelab.recipes import squad
    from tunelab.recipes.common import device, load_finetuned

    model, tokenizer, meta = load_finetuned(model_dir, "squad")
    model.to(device())
    version_2 = squad._is_v2(meta.get("version", "1.1"))
    max_length = meta.get("max_length", 384)
    stride = meta.get("stride", squad.doc_stride(max_length))
    examples = [SquadExample(id=f"_{i}", title="", context=r["context"], question=r["question"], answers=[])
                for i, r in enumerate(rows)]
    try:
        preds, nbest, na = squad.predict_spans(model, tokenizer, examples, max_length, stride, batch_size,
                                               version_2=version_2, progress=False)
    except ValueError as exc:  # e.g. a question too long for the model's window
        msg = re.sub(r"example '_(\d+)'", lambda m: f"input {rows[int(m.group(1))]['id']!r}", str(exc))
        raise UsageError(msg) from None
    out = []
    for r, ex in zip(rows, examples):
        cands = nbest.get(ex.id) or []
        scores = np.array([c["score"] for c in cands], dtype=np.float64)
        row = {**r, "answer": preds.get(ex.id, "")}
        if version_2 and np.isfinite(na.get(ex.id, np.inf)) and len(scores):
            null_score = float(na[ex.id] + scores[0])  # na = null score - best span score
            scores = np.append(scores, null_score)
            row["na_score"] = float(na[ex.id])
        if len(cands):
            probs = np.exp(scores - scores.max())
            probs /= probs.sum()
            if row["answer"]:
                best = next(i for i, c in enumerate(cands) if c["text"] == row["answer"])
                row.update(score=float(cands[best]["score"]), probability=float(probs[best]),
                           start=cands[best]["start"], end=cands[best]["end"])
            else:
                row.update(score=float(scores[-1]) if version_2 else None,
                           probability=float(probs[-1]) if version_2 else None)
        else:
            row.update(score=None, probability=None)
        out.append(row)
    return out


# ---------------------------------------------------------------------------------------------------------------
# CLI


def add_parsers(sub) -> None:
    p = sub.add_parser("predict", help="run a fine-tuned model on new sentences or questions",
                       description="Classify sentences (SST-2 models) or answer questions about a passage (SQuAD "
                       "models) with a folder written by `tunelab finetune` or `tunelab export`. Output: one "
                       "tab-separated line per input: label, probability, sentence (SST-2) or answer, probability, "
                       "score, question (SQuAD); --json prints one JSON object instead.")
    p.add_argument("model_dir", help="a folder written by `tunelab finetune` or `tunelab export`")
    p.add_argument("texts", nargs="*", metavar="TEXT", help="SST-2: sentences to classify")
    p.add_argument("--file", help="SST-2: one sentence a line, or a .tsv/.csv/.jsonl SST-2 file; SQuAD: a SQuAD "
                   ".json or a .jsonl of {context, question}; - reads stdin")
    p.add_argument("--question", action="append", help="SQuAD: a question (repeat for several on one context)")
    p.add_argument("--context", help="SQuAD: the passage the answer is taken from")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--json", action="store_true", help="print one JSON object")


def cmd_predict(args) -> int:
    from tunelab.recipes.common import read_meta

    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    meta = read_meta(args.model_dir)
    task = meta.get("task")
    if task == "sst2":
        if args.question or args.context is not None:
            raise UsageError(f"{args.model_dir} is a sentiment classifier (sst2): give sentences, not "
                             "--question/--context")
        rows = predict_sst2(args.model_dir, sst2_inputs(args.texts, args.file), args.batch_size)
        if args.json:
            print(json.dumps({"task": task, "model": str(args.model_dir), "predictions": rows}, indent=2,
                             ensure_ascii=False))
        else:
            for r in rows:
                print(f"{r['label']}\t{r['probability']:.4f}\t{r['text']}")
    elif task == "squad":
        if args.texts:
            raise UsageError(f"{args.model_dir} answers questions (squad): use --question and --context, or "
                             "--file")
        rows = predict_squad(args.model_dir, squad_inputs(args.question, args.context, args.file), args.batch_size)
        if args.json:
            print(json.dumps({"task": task, "model": str(args.model_dir), "predictions": rows}, indent=2,
                             ensure_ascii=False))
        else:
            for r in rows:
                answer = r["answer"] if r["answer"] else "(no answer)"
                p = "" if r.get("probability") is None else f"{r['probability']:.4f}"
                s = "" if r.get("score") is None else f"{r['score']:.2f}"
                print(f"{answer}\t{p}\t{s}\t{r['question']}")
    else:
        raise UsageError(f"{args.model_dir}: tunelab.json names task {task!r}; predict knows sst2 and squad")
    return 0


COMMANDS = {"predict": cmd_predict}
