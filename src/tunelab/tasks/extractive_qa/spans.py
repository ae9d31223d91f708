"""The fine-tuned span head at inference: windows in length-sorted batches, then n-best post-processing."""

from __future__ import annotations

import torch

from tunelab import precision
from tunelab.inference import run_batches
from tunelab.tasks.extractive_qa.postprocess import postprocess
from tunelab.tasks.extractive_qa.windows import prepare_eval_features
from tunelab.training.batches import pad_batch


def doc_stride(max_length: int) -> int:
    """Context tokens shared by consecutive windows: 128 (HF run_qa's default), a third of short windows."""
    return 128 if max_length > 256 else max_length // 3


@torch.no_grad()
def predict_spans(
    model,
    tokenizer,
    examples,
    max_length: int,
    stride: int,
    batch_size: int | str = 64,
    *,
    version_2: bool = False,
    progress: bool = True,
    bf16: bool = True,
) -> tuple[dict[str, str], dict[str, list[dict]], dict[str, float]]:
    """Answers of a span-QA model: windows, forward in length-sorted batches with right padding, logits moved
    to the CPU batch by batch, then n-best post-processing; bfloat16 autocast where
    `precision.bf16_autocast` allows it and `bf16`. Returns (predictions, nbest, na_scores)."""
    dev = next(model.parameters()).device
    feats = prepare_eval_features(examples, tokenizer, max_length, stride)
    ids = feats["input_ids"]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    starts: list = [None] * len(ids)
    ends: list = [None] * len(ids)

    def run(idx):
        batch = pad_batch(
            [{"input_ids": ids[i], "attention_mask": feats["attention_mask"][i]} for i in idx],
            tokenizer.pad_token_id,
        )
        with precision.autocast(dev, bf16):
            out = model(**{k: v.to(dev) for k, v in batch.items()}, use_cache=False)  # nothing reads a cache
        start, end = out.start_logits.float().cpu().numpy(), out.end_logits.float().cpu().numpy()
        for row, i in enumerate(idx):
            starts[i], ends[i] = start[row, : len(ids[i])], end[row, : len(ids[i])]

    lengths = [len(x) for x in ids]
    run_batches(order, batch_size, run, desc="evaluating", progress=progress, lengths=lengths, device=dev)
    return postprocess(examples, feats, starts, ends, version_2=version_2, null_threshold=0.0)
