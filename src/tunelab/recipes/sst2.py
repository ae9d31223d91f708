"""SST-2 recipes: zero-shot, fine-tune, evaluate. Each writes metrics.json and predictions.jsonl."""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from tunelab.data.folder import sst2_path
from tunelab.data.sst2 import SST2Example, read_sst2
from tunelab.errors import UsageError
from tunelab.inference import run_batches
from tunelab.metrics import classification_metrics
from tunelab.models import load_causal_lm, load_tokenizer
from tunelab.outputs import atomic_output, write_json, write_jsonl
from tunelab.plots import loss_curve
from tunelab.recipes.common import (
    device,
    eval_dtype,
    load_finetuned,
    main_process,
    prepare_model,
    save_finetuned,
)
from tunelab.tasks.classification import (
    LABELS,
    Calibration,
    Prompt,
    format_input,
    head_init_from_verbalizers,
    zero_shot,
)
from tunelab.training import TrainConfig, pad_batch, save_config, set_seed, sharded_map, train, whole_model


def load_split(data_file: str | None, data_dir: str | None, split: str) -> tuple[list[SST2Example], str]:
    path = Path(data_file) if data_file else sst2_path(data_dir, split)
    return read_sst2(path), str(path)


def _check_labels(examples, data: str) -> None:
    """Evaluation data is labelled on every row (metrics) or on none (predictions only), never partly."""
    labelled = sum(ex.label is not None for ex in examples)
    if 0 < labelled < len(examples):
        raise UsageError(f"{data}: {labelled} of {len(examples)} rows have a label: label every row or none")


def write_results(out: Path, *, model: str, mode: str, data: str, examples, log_probs: np.ndarray,
                  extra: dict | None = None) -> dict:
    """metrics.json (when the data has labels) and predictions.jsonl (text, gold, prediction, class scores)."""
    probs = np.exp(log_probs)
    pred = log_probs.argmax(1)
    rows = [
        {"line": ex.line, "text": ex.text, "gold": ex.label, "prediction": int(p),
         "scores": {LABELS[c]: float(probs[i, c]) for c in range(len(LABELS))}}
        for i, (ex, p) in enumerate(zip(examples, pred))
    ]
    write_jsonl(out / "predictions.jsonl", rows)
    metrics = {"task": "sst2", "model": model, "mode": mode, "data": data, "n": len(examples)}
    labelled = [ex.label is not None for ex in examples]
    if all(labelled):
        metrics.update(classification_metrics([ex.label for ex in examples], pred))
    elif any(labelled):
        raise UsageError(f"{data}: some rows have labels and some do not")
    else:
        metrics["note"] = "no gold labels in this file: predictions only"
    metrics.update(extra or {})
    write_json(out / "metrics.json", metrics)
    return metrics


def run_zeroshot(model_spec: str, examples, data: str, out: str | Path, *, prompt: Prompt,
                 calibration: Calibration, batch_size: int = 32, overwrite: bool = False) -> dict:
    _check_labels(examples, data)
    dev = device()
    with atomic_output(out, overwrite=overwrite) as work:
        tokenizer = load_tokenizer(model_spec, padding_side="right")
        model = load_causal_lm(model_spec, dtype=eval_dtype(dev)).to(dev).eval()
        t0 = time.perf_counter()
        raw, cal = zero_shot(model, tokenizer, [ex.text for ex in examples], prompt, calibration, batch_size,
                             spread=sharded_map)  # under `accelerate launch`, each process scores a share
        seconds = time.perf_counter() - t0
        if not main_process():
            return None
        extra = {
            "prompt": asdict(prompt),
            "calibration": {"method": calibration.method, "offset": calibration.offset},
            "seconds": seconds,
            "device": str(dev),
        }
        if all(ex.label is not None for ex in examples):
            extra["uncalibrated_accuracy"] = float((raw.argmax(1) == np.array([ex.label for ex in examples])).mean())
        metrics = write_results(work, model=model_spec, mode="zeroshot", data=data, examples=examples,
                                log_probs=cal, extra=extra)
    return metrics


def encode(tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    """Token ids; an over-long text loses its beginning, never its end (where a prompt puts the answer and the
    classifier reads the last token)."""
    return [ids[-max_length:] for ids in (tokenizer(t).input_ids for t in texts)]


@torch.no_grad()
def classify(model, tokenizer, texts: list[str], max_length: int, batch_size: int = 64,
             progress: bool = True) -> np.ndarray:
    """Class log-probabilities of a sequence-classification model, batched by length; logits leave the GPU
    batch by batch."""
    dev = next(model.parameters()).device
    ids = encode(tokenizer, texts, max_length)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out = np.zeros((len(ids), 2))

    def run(idx):
        batch = pad_batch([{"input_ids": ids[i], "attention_mask": [1] * len(ids[i])} for i in idx],
                          tokenizer.pad_token_id)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            logits = model(**{k: v.to(dev) for k, v in batch.items()}).logits
        out[idx] = torch.log_softmax(logits.float(), -1).cpu().numpy()

    run_batches(order, batch_size, run, desc="evaluating", progress=progress)
    return out


def run_finetune(model_spec: str, train_examples, dev_examples, dev_data: str, out: str | Path,
                 cfg: TrainConfig, *, input_prompt: Prompt | None, resume: bool = False,
                 overwrite: bool = False) -> dict:
    """Fine-tune a classification head (full, LoRA or head-only); evaluate on dev; save a HF folder."""
    from tunelab.models.registry import resolve

    cfg.validate()
    train_examples = [ex for ex in train_examples if ex.label is not None]
    if not train_examples:
        raise UsageError("training data has no labels")
    if any(ex.label is None for ex in dev_examples):
        raise UsageError(f"{dev_data}: evaluation data needs a label on every row")
    set_seed(cfg.seed)  # the new head (and LoRA matrices) are initialised from this seed
    tokenizer = load_tokenizer(model_spec, padding_side="right")
    head_init = head_init_from_verbalizers(tokenizer, input_prompt) if input_prompt else None
    with atomic_output(out, overwrite=overwrite, keep_partial=True, resume=resume) as work:
        trained, _ = prepare_model(model_spec, "sst2", cfg, tokenizer, head_init)
        trained.to(device())
        texts = [format_input(input_prompt, tokenizer, ex.text) for ex in train_examples]
        ids = encode(tokenizer, texts, cfg.max_length)
        feats = [{"input_ids": x, "attention_mask": [1] * len(x), "labels": ex.label}
                 for x, ex in zip(ids, train_examples)]
        dev_texts = [format_input(input_prompt, tokenizer, ex.text) for ex in dev_examples]

        def evaluate(model):
            lp = classify(model, tokenizer, dev_texts, cfg.max_length, progress=False)
            gold = np.array([ex.label for ex in dev_examples])
            return {"accuracy": float((lp.argmax(1) == gold).mean())}

        result = train(trained, feats, cfg, pad_id=tokenizer.pad_token_id, work_dir=work,
                       evaluate=evaluate if cfg.eval_every else None, resume=resume)
        trained = whole_model(result, rebuild=lambda: prepare_model(model_spec, "sst2", cfg, tokenizer, head_init)[0])
        if trained is None:
            return None  # under `accelerate launch`, the main process saves and evaluates
        meta = {"task": "sst2", "base_model": model_spec, "base_model_path": resolve(model_spec),
                "input_prompt": asdict(input_prompt) if input_prompt else None, "max_length": cfg.max_length}
        saved = save_finetuned(trained, tokenizer, work, cfg, meta)
        save_config(cfg, work / "training_config.json")
        t0 = time.perf_counter()
        lp = classify(trained, tokenizer, dev_texts, cfg.max_length)
        eval_seconds = time.perf_counter() - t0
        extra = {"method": cfg.method, "train_seconds": result.train_seconds, "train_steps": result.steps,
                 "train_examples": min(len(feats), cfg.max_train_samples or len(feats)),
                 "train_tokens": result.tokens, "eval_seconds": eval_seconds, "saved": saved["format"],
                 "micro_batch_pieces": result.chunks,
                 "evals_during_training": result.evals, "device": str(device())}
        metrics = write_results(work / "eval", model=str(out), mode="finetuned", data=dev_data,
                                examples=dev_examples, log_probs=lp, extra=extra)
        loss_curve(result.log, work / "loss.png", title=f"SST-2 {cfg.method} fine-tuning")
        shutil.rmtree(work / "checkpoints", ignore_errors=True)
    return metrics


def run_evaluate(model_dir: str, examples, data: str, out: str | Path, *, batch_size: int = 64,
                 overwrite: bool = False) -> dict:
    _check_labels(examples, data)
    dev = device()
    model, tokenizer, meta = load_finetuned(model_dir, "sst2")
    model.to(dev)
    prompt = Prompt(**meta["input_prompt"]) if meta.get("input_prompt") else None
    texts = [format_input(prompt, tokenizer, ex.text) for ex in examples]
    with atomic_output(out, overwrite=overwrite) as work:
        t0 = time.perf_counter()
        lp = np.array(sharded_map(lambda xs: classify(model, tokenizer, xs, meta.get("max_length", 128),
                                                      batch_size), texts))  # a share per process
        if not main_process():
            return None
        metrics = write_results(work, model=str(model_dir), mode="finetuned", data=data, examples=examples,
                                log_probs=lp, extra={"seconds": time.perf_counter() - t0, "device": str(dev)})
    return metrics


__all__ = ["classify", "load_split", "run_evaluate", "run_finetune", "run_zeroshot"]
