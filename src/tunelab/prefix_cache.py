"""Shared prompt prefixes: the tokens every input of a batch starts with (a chat template, system prompt and
instruction) run once, and their key/value cache serves every row, which then computes only its own tokens.
Zero-shot scoring and the fine-tuned classifier's evaluation use it without gradients; training
(`share_prefix`) with them: the prefix's gradient is then the sum of every row's, as if each row had
computed its own copy. Written by hand: transformers reuses a prefix cache only for generation, not for a
batch's forward and backward."""

from __future__ import annotations

import copy
import inspect

import torch
from torch import nn

from tunelab.training.batches import pad_batch

MIN_PREFIX = 4  # shared prefixes shorter than this are recomputed: copying their cache costs about as much


def shared_prefix(encoded: list[list[int]]) -> int:
    """The number of leading tokens every encoded prompt shares (the chat template, system prompt and
    instruction before the text), leaving each prompt at least one token of its own (the position scored)."""
    if not encoded:
        return 0
    first, n = encoded[0], min(len(e) for e in encoded) - 1
    for e in encoded[1:]:
        k = 0
        while k < n and e[k] == first[k]:
            k += 1
        n = k
    return max(n, 0)


def task_model_of(model: nn.Module) -> nn.Module:
    """The transformers model inside a PEFT model, a wrapper that keeps it in `.module` (DDP), or itself."""
    model = getattr(model, "module", model)
    if hasattr(model, "get_base_model"):  # peft: the adapted layers live in the base model itself
        model = model.get_base_model()
    return model


def decoder_of(model: nn.Module) -> nn.Module:
    """The bare decoder (no task or LM head) inside a task model, or a wrapper of one (task_model_of)."""
    model = task_model_of(model)
    return getattr(model, model.base_model_prefix)


def cache_argument(decoder: nn.Module) -> str:
    """The keyword the decoder takes its key/value cache by: transformers >= 5.2x names it `cache` (argument
    and output), earlier versions `past_key_values`."""
    return "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"


def prefix_cache(decoder: nn.Module, prefix_ids, rows: int):
    """Run `prefix_ids` (shape [1, P]) through the decoder once and return its cache repeated for `rows`
    rows (gradients, when enabled, flow back through the repeat into the one prefix computation)."""
    out = decoder(input_ids=prefix_ids, use_cache=True)
    cache = getattr(out, "cache", None) or out.past_key_values
    cache.batch_repeat_interleave(rows)
    return cache


def rows_of(cache, rows: int):
    """A copy of a one-row prefix cache for a batch of `rows` (each batch appends its own tokens to it)."""
    out = copy.deepcopy(cache)
    out.batch_repeat_interleave(rows)
    return out


def prefix_inputs(model: nn.Module, features: list[dict], pad_id: int, device: torch.device) -> dict | None:
    """Keyword arguments for `model(**...)` (a sequence-classification model, or a wrapper of one) that give
    the outputs of the whole right-padded `features` (input_ids, attention_mask, other keys as they are)
    with their shared prefix run once here; None where the rows share fewer than MIN_PREFIX tokens, or a
    row's own tokens are all `pad_id` (the head pools each row's last non-pad token: it must be its own), or
    the model attends both ways (`bidirectional`: its prefix would see the rest)."""
    from tunelab.models.attention import is_bidirectional

    decoder = decoder_of(model)
    start = shared_prefix([f["input_ids"] for f in features])
    if (
        is_bidirectional(task_model_of(model))
        or start < MIN_PREFIX
        or any(
            0 in f["attention_mask"][:start] or all(t == pad_id for t in f["input_ids"][start:])
            for f in features
        )
    ):
        return None
    rest = [
        {**f, "input_ids": f["input_ids"][start:], "attention_mask": f["attention_mask"][start:]}
        for f in features
    ]
    batch = {k: v.to(device) for k, v in pad_batch(rest, pad_id).items()}
    rows, width = batch["input_ids"].shape
    prefix = torch.tensor([features[0]["input_ids"][:start]], device=device)
    ones = torch.ones((rows, start), dtype=batch["attention_mask"].dtype, device=device)
    batch["attention_mask"] = torch.cat([ones, batch["attention_mask"]], dim=1)
    batch["position_ids"] = torch.arange(start, start + width, device=device).expand(rows, -1)
    batch[cache_argument(decoder)] = prefix_cache(decoder, prefix, rows)
    batch["use_cache"] = True
    return batch
