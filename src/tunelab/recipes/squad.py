"""SQuAD recipes: zero-shot (generation), fine-tune (span head), evaluate. Each writes metrics.json,
predictions.json (official format), nbest_predictions.json, per_example.jsonl and, for v2, na_probs.json.

Zero-shot prompt (tunelab.tasks.qa_prompts.DEFAULT_TEMPLATE): the chat template with the answer started as
`The answer is "`, so that the model writes a span and closes the quote; without that prefix, SmolLM2-135M-Instruct
answers in whole sentences, which costs exact match. Its full-dev score on an H200 is in
benchmarks/results/h200-smollm2-study/squad11-zeroshot/metrics.json.
"""

from __future__ import annotations

import re
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from tunelab.data.folder import squad_path
from tunelab.data.squad import SquadExample, read_squad
from tunelab.errors import UsageError
from tunelab.inference import run_batches
from tunelab.metrics import bootstrap_ci
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
from tunelab.squad_metrics import per_example_scores, squad_v1, squad_v2
from tunelab.tasks.qa import postprocess, prepare_eval_features, prepare_train_features, span_loss
from tunelab.tasks.qa_prompts import (
    DEFAULT_TEMPLATE,
    NO_ANSWER_WORD,
    QAPrompt,
    clean_answer,
    load_prompt,
    says_unanswerable,
)
from tunelab.training import TrainConfig, pad_batch, save_config, set_seed, sharded_map, train, whole_model

WH_WORDS = ("what", "which", "who", "whom", "whose", "when", "where", "why", "how")


def load_split(data_file: str | None, data_dir: str | None, version: str, split: str
               ) -> tuple[list[SquadExample], str]:
    path = Path(data_file) if data_file else squad_path(data_dir, version, split)
    return read_squad(path), str(path)


def _is_v2(version) -> bool:
    return str(version).lstrip("v") == "2.0"


def question_type(question: str) -> str:
    """The first wh-word of the question ("what", "how", ...), else "other"."""
    for word in re.findall(r"[a-z]+", question.lower()):  # "What's" -> what, s
        if word in WH_WORDS:
            return word
    return "other"


def write_results(out: Path, *, model: str, mode: str, data: str, examples, predictions: dict, nbest: dict,
                  na_probs: dict | None, version_2: bool, extra: dict | None = None,
                  na_threshold: float = 0.0) -> dict:
    """metrics.json (official SQuAD numbers, F1 bootstrap interval), per_example.jsonl, predictions.json
    (id -> answer text, the official format), nbest_predictions.json and, for v2, na_probs.json."""
    references = {ex.id: [a["text"] for a in ex.answers] for ex in examples}
    if version_2:
        scores = squad_v2(predictions, references, na_probs=na_probs, na_threshold=na_threshold)
    else:
        scores = squad_v1(predictions, references)
    scores.pop("n", None)
    per = per_example_scores(predictions, references, version_2=version_2, na_probs=na_probs,
                             na_threshold=na_threshold)
    rows = []
    for ex in examples:
        golds = references[ex.id]
        row = {"id": ex.id, "em": per[ex.id]["exact_match"], "f1": per[ex.id]["f1"],
               "prediction": predictions.get(ex.id, ""), "gold": golds, "question": ex.question,
               "question_type": question_type(ex.question),
               "answer_words": len(golds[0].split()) if golds else 0}
        if version_2:
            row["is_impossible"] = ex.is_impossible
            row["na_prob"] = na_probs[ex.id] if na_probs else 0.0
        rows.append(row)
    write_jsonl(out / "per_example.jsonl", rows)
    write_json(out / "predictions.json", {ex.id: predictions.get(ex.id, "") for ex in examples})
    write_json(out / "nbest_predictions.json", nbest)
    if version_2 and na_probs is not None:
        # strict JSON: a question with no possible span has an infinite no-answer score; write the largest float
        write_json(out / "na_probs.json", {ex.id: min(float(na_probs[ex.id]), sys.float_info.max)
                                           for ex in examples})
    metrics = {"task": "squad_v2" if version_2 else "squad", "model": model, "mode": mode, "data": data,
               "n": len(examples), **scores,
               "f1_ci95": bootstrap_ci([100.0 * r["f1"] for r in rows])}
    if version_2:
        metrics["na_threshold"] = na_threshold
    metrics.update(extra or {})
    write_json(out / "metrics.json", metrics)
    return metrics


# ------------------------------------------------------------------------------------------------------------
# Zero-shot: greedy generation from a prompt


def _first_token_ids(tokenizer, words: list[str]) -> list[int]:
    return sorted({tokenizer.encode(w, add_special_tokens=False)[0] for w in words})


@torch.no_grad()
def generate_answers(model, tokenizer, examples, prompt: QAPrompt, *, version_2: bool = False,
                     batch_size: int = 32, max_new_tokens: int = 32, progress: bool = True):
    """Greedy answers, batched by prompt length with left padding; stops at a newline (or the closing quote
    of a quoting answer prefix) or the token limit.

    Returns (raw generations, cleaned answers, na_probs or None). For v2, na_prob is a softmax over two scores
    of the first generated token: log p("unanswerable", summed over its spellings' first tokens) against the
    log p of the best other first token (the one greedy decoding took, unless it began "unanswerable").
    """
    dev = next(model.parameters()).device
    texts = [prompt.render(tokenizer, ex, version_2) for ex in examples]
    # a chat template writes its own special tokens; a plain prompt gets the tokenizer's (Llama's BOS)
    enc = [tokenizer(t, add_special_tokens=not prompt.chat).input_ids for t in texts]
    order = sorted(range(len(enc)), key=lambda i: len(enc[i]), reverse=True)
    null_ids = _first_token_ids(tokenizer, [NO_ANSWER_WORD, " " + NO_ANSWER_WORD, NO_ANSWER_WORD.capitalize(),
                                            " " + NO_ANSWER_WORD.capitalize()]) if version_2 else []
    raw = [""] * len(examples)
    na = np.zeros(len(examples))
    pad = tokenizer.pad_token_id

    def run(idx):
        width = max(len(enc[i]) for i in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):  # left padding: every prompt ends at the last column
            ids[row, width - len(enc[i]):] = torch.tensor(enc[i])
            mask[row, width - len(enc[i]):] = 1
        out = model.generate(input_ids=ids.to(dev), attention_mask=mask.to(dev), do_sample=False,
                             max_new_tokens=max_new_tokens, stop_strings=prompt.stop_strings(),
                             tokenizer=tokenizer, pad_token_id=pad, output_scores=version_2,
                             return_dict_in_generate=True)
        new = out.sequences[:, width:].cpu()
        for row, i in enumerate(idx):
            raw[i] = tokenizer.decode(new[row], skip_special_tokens=True)
        if version_2:
            logp = torch.log_softmax(out.scores[0].float(), dim=-1).cpu()
            lp_null = torch.logsumexp(logp[:, null_ids], dim=-1)
            logp[:, null_ids] = -torch.inf
            lp_answer = logp.max(dim=-1).values
            na[idx] = torch.sigmoid(lp_null - lp_answer).numpy()  # softmax over the two

    run_batches(order, batch_size, run, desc="zero-shot answering", progress=progress)
    answers = [clean_answer(r, ex.context, prompt.stop_strings()) for r, ex in zip(raw, examples)]
    na_probs = None
    if version_2:
        na_probs = {ex.id: float(p) for ex, p in zip(examples, na)}
        answers = ["" if (says_unanswerable(a) or na_probs[ex.id] > 0.5) else a
                   for a, ex in zip(answers, examples)]
    return raw, answers, na_probs


def run_zeroshot(model_spec: str, examples, data: str, out: str | Path, *, prompt: str | None = None,
                 batch_size: int = 32, overwrite: bool = False, max_new_tokens: int = 32,
                 version: str | None = None) -> dict:
    """Generative zero-shot SQuAD. `version` None: v2 when any question is unanswerable."""
    dev = device()
    qa_prompt = load_prompt(prompt)
    version_2 = _is_v2(version) if version else any(ex.is_impossible for ex in examples)
    with atomic_output(out, overwrite=overwrite) as work:
        tokenizer = load_tokenizer(model_spec, padding_side="left")
        model = load_causal_lm(model_spec, dtype=eval_dtype(dev)).to(dev).eval()
        t0 = time.perf_counter()

        def answer(exs):  # per example: (generation, answer, no-answer probability)
            raw, answers, na = generate_answers(model, tokenizer, exs, qa_prompt, version_2=version_2,
                                                batch_size=batch_size, max_new_tokens=max_new_tokens)
            return [(r, a, na[ex.id] if na else None) for r, a, ex in zip(raw, answers, exs)]

        rows = sharded_map(answer, examples)  # under `accelerate launch`, each process answers a share
        seconds = time.perf_counter() - t0
        if not main_process():
            return None
        raw = [r for r, _, _ in rows]
        answers = [a for _, a, _ in rows]
        na_probs = {ex.id: p for ex, (_, _, p) in zip(examples, rows)} if version_2 else None
        predictions = {ex.id: a for ex, a in zip(examples, answers)}
        nbest = {ex.id: [{"text": a, "generated": r}] for ex, a, r in zip(examples, answers, raw)}
        extra = {"prompt": prompt or DEFAULT_TEMPLATE, "prompt_template": asdict(qa_prompt),
                 "max_new_tokens": max_new_tokens, "seconds": seconds, "device": str(dev)}
        metrics = write_results(work, model=model_spec, mode="zeroshot", data=data, examples=examples,
                                predictions=predictions, nbest=nbest, na_probs=na_probs, version_2=version_2,
                                extra=extra, na_threshold=0.5)
    return metrics


# ------------------------------------------------------------------------------------------------------------
# Fine-tuned span head


def doc_stride(max_length: int) -> int:
    """Context tokens shared by consecutive windows: 128 (HF run_qa's default), a third of short windows."""
    return 128 if max_length > 256 else max_length // 3


@torch.no_grad()
def predict_spans(model, tokenizer, examples, max_length: int, stride: int, batch_size: int = 64, *,
                  version_2: bool = False, progress: bool = True):
    """Answers of a span-QA model: windows, forward in length-sorted batches with right padding, logits moved
    to the CPU batch by batch, then n-best post-processing. Returns (predictions, nbest, na_scores)."""
    dev = next(model.parameters()).device
    feats = prepare_eval_features(examples, tokenizer, max_length, stride)
    ids = feats["input_ids"]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    starts: list = [None] * len(ids)
    ends: list = [None] * len(ids)

    def run(idx):
        batch = pad_batch([{"input_ids": ids[i], "attention_mask": feats["attention_mask"][i]} for i in idx],
                          tokenizer.pad_token_id)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            out = model(**{k: v.to(dev) for k, v in batch.items()})
        start, end = out.start_logits.float().cpu().numpy(), out.end_logits.float().cpu().numpy()
        for row, i in enumerate(idx):
            starts[i], ends[i] = start[row, : len(ids[i])], end[row, : len(ids[i])]

    run_batches(order, batch_size, run, desc="evaluating", progress=progress)
    return postprocess(examples, feats, starts, ends, version_2=version_2, null_threshold=0.0)


def run_finetune(model_spec: str, train_examples, dev_examples, dev_data: str, out: str | Path,
                 cfg: TrainConfig, *, version: str, resume: bool = False, overwrite: bool = False) -> dict:
    """Fine-tune a span head (full, LoRA or head-only) on top of the causal LM body; evaluate on dev; save."""
    from tunelab.models.registry import resolve

    cfg.validate()
    version_2 = _is_v2(version)
    stride = doc_stride(cfg.max_length)
    tokenizer = load_tokenizer(model_spec, padding_side="right")
    try:  # windows first: a question too long for max_length is the user's error, found before any loading
        f = prepare_train_features(train_examples, tokenizer, cfg.max_length, stride)
        prepare_eval_features(dev_examples, tokenizer, cfg.max_length, stride)
    except ValueError as exc:
        raise UsageError(f"max_length {cfg.max_length}: {exc}") from exc
    set_seed(cfg.seed)  # the new head (and LoRA matrices) are initialised from this seed
    with atomic_output(out, overwrite=overwrite, keep_partial=True, resume=resume) as work:
        trained, _ = prepare_model(model_spec, "squad", cfg, tokenizer)
        trained.to(device())
        feats = [{"input_ids": x, "attention_mask": m, "start_positions": s, "end_positions": e}
                 for x, m, s, e in zip(f["input_ids"], f["attention_mask"], f["start_positions"],
                                       f["end_positions"])]
        references = {ex.id: [a["text"] for a in ex.answers] for ex in dev_examples}

        def evaluate(model):
            preds, _, na = predict_spans(model, tokenizer, dev_examples, cfg.max_length, stride,
                                         version_2=version_2, progress=False)
            m = squad_v2(preds, references, na, 0.0) if version_2 else squad_v1(preds, references)
            return {"exact_match": m["exact_match"], "f1": m["f1"]}

        result = train(trained, feats, cfg, pad_id=tokenizer.pad_token_id, work_dir=work,
                       evaluate=evaluate if cfg.eval_every else None, loss_fn=span_loss, resume=resume)
        trained = whole_model(result, rebuild=lambda: prepare_model(model_spec, "squad", cfg, tokenizer)[0])
        if trained is None:
            return None  # under `accelerate launch`, the main process saves and evaluates
        meta = {"task": "squad", "version": str(version).lstrip("v"), "base_model": model_spec,
                "base_model_path": resolve(model_spec), "max_length": cfg.max_length, "stride": stride,
                "question_first": True}
        saved = save_finetuned(trained, tokenizer, work, cfg, meta)
        save_config(cfg, work / "training_config.json")
        t0 = time.perf_counter()
        preds, nbest, na = predict_spans(trained, tokenizer, dev_examples, cfg.max_length, stride,
                                         version_2=version_2)
        eval_seconds = time.perf_counter() - t0
        extra = {"method": cfg.method, "train_seconds": result.train_seconds, "train_steps": result.steps,
                 "train_examples": len(train_examples),
                 "train_features": min(len(feats), cfg.max_train_samples or len(feats)),
                 "train_tokens": result.tokens, "eval_seconds": eval_seconds, "saved": saved["format"],
                 "micro_batch_pieces": result.chunks,
                 "max_length": cfg.max_length, "stride": stride,
                 "evals_during_training": result.evals, "device": str(device())}
        metrics = write_results(work / "eval", model=str(out), mode="finetuned", data=dev_data,
                                examples=dev_examples, predictions=preds, nbest=nbest,
                                na_probs=na if version_2 else None, version_2=version_2, extra=extra)
        loss_curve(result.log, work / "loss.png", title=f"SQuAD v{meta['version']} {cfg.method} fine-tuning")
        shutil.rmtree(work / "checkpoints", ignore_errors=True)
    return metrics


def run_evaluate(model_dir: str, examples, data: str, out: str | Path, *, batch_size: int = 64,
                 overwrite: bool = False) -> dict:
    """Evaluate a fine-tuned folder; scored as v2 when it was trained on v2 or the data has unanswerable
    questions."""
    dev = device()
    model, tokenizer, meta = load_finetuned(model_dir, "squad")
    model.to(dev)
    version_2 = _is_v2(meta.get("version", "1.1")) or any(ex.is_impossible for ex in examples)
    max_length = meta.get("max_length", 384)
    stride = meta.get("stride", doc_stride(max_length))
    with atomic_output(out, overwrite=overwrite) as work:
        t0 = time.perf_counter()

        def spans(exs):  # per example: (answer, n-best list, no-answer score)
            preds, nbest, na = predict_spans(model, tokenizer, exs, max_length, stride, batch_size,
                                             version_2=version_2)
            return [(preds[ex.id], nbest[ex.id], na.get(ex.id)) for ex in exs]

        rows = sharded_map(spans, examples)  # under `accelerate launch`, each process a share
        if not main_process():
            return None
        preds = {ex.id: p for ex, (p, _, _) in zip(examples, rows)}
        nbest = {ex.id: n for ex, (_, n, _) in zip(examples, rows)}
        na = {ex.id: s for ex, (_, _, s) in zip(examples, rows)}
        metrics = write_results(work, model=str(model_dir), mode="finetuned", data=data, examples=examples,
                                predictions=preds, nbest=nbest, na_probs=na if version_2 else None,
                                version_2=version_2,
                                extra={"seconds": time.perf_counter() - t0, "device": str(dev)})
    return metrics


__all__ = ["doc_stride", "generate_answers", "load_split", "predict_spans", "run_evaluate", "run_finetune",
           "run_zeroshot", "write_results"]
