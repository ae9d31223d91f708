"""`tunelab predict MODEL_DIR`: run a fine-tuned (or exported) folder on new inputs.

The task comes from the folder's tunelab.json and says what inputs it takes: a classifier takes texts
(positional, with --pair for sentence-pair tasks, or --file of plain lines or the task's TSV/CSV/JSONL) and
prints the label with its probability; a QA model takes --question Q --context C, or --file of SQuAD JSON or
JSONL records {"context", "question"[, "id"]}, and prints the answer with its score.
"""

from __future__ import annotations

import json

from tunelab.options import EVALUATE_OPTIONS


def predict(
    model_dir: str,
    *,
    texts: list[str] | None = None,
    pairs: list[str] | None = None,
    questions: list[str] | None = None,
    context: str | None = None,
    file: str | None = None,
    batch_size: int | str = 64,
) -> tuple[object, list[dict]]:
    """(the folder's task, one row per input with its prediction), scored as tunelab's evaluation does."""
    from tunelab.distributed import device
    from tunelab.runs import META_FILE, load_finetuned, read_meta
    from tunelab.tasks import task_from_meta

    batch_size = EVALUATE_OPTIONS["batch_size"].check(batch_size, None, "--batch-size")
    meta = read_meta(model_dir)
    task = task_from_meta(meta, f"{model_dir}/{META_FILE}")
    rows = task.prediction_inputs(texts or [], pairs=pairs, file=file, questions=questions, context=context)
    model, tokenizer, meta, task = load_finetuned(model_dir)
    model.to(device())
    return task, task.predict_inputs(model, tokenizer, meta, rows, batch_size)


def print_predictions(task, model_dir: str, rows: list[dict], as_json: bool) -> None:
    if as_json:
        print(
            json.dumps(
                {"task": task.name, "model": str(model_dir), "predictions": rows},
                indent=2,
                ensure_ascii=False,
            )
        )
    else:
        for row in rows:
            print(task.format_prediction(row))
