"""The training loop's speed options (TrainConfig's `compile`, `packing`, `micro_batch_size`, `pin_memory`;
issue 11): how a micro-batch becomes tensors on the device, and compiling the decoder layers. None of them
changes what a step computes: the same examples, the same mean loss, the same update (up to float rounding).
"""

from __future__ import annotations

import math
from dataclasses import fields, replace

import torch

from tunelab.packing import PackedBatch, pack, plan_rows
from tunelab.training.batches import pad_batch

BUCKET_BASE = 16  # the narrowest width bucket
ROW_STEP = 4  # packed row counts under compile are rounded up to a multiple of this


def bucket(n: int, top: int, base: int = BUCKET_BASE) -> int:
    """The width a batch whose longest example has n tokens is padded to under `compile`: the smallest of
    base, 2 x base, 4 x base, ... and `top` (max_length) that holds n (n itself beyond top).

    Why buckets: torch.compile specialises its kernels to the shapes it sees (`dynamic=False`: static
    shapes, the fastest kernels and the only shapes CUDA graphs can replay). Dynamic padding gives every
    batch its own width, which would recompile at nearly every step; padding up to a few fixed widths
    bounds the compiled shapes to ~log2(max_length / 16) + 1 per row count, all seen within the first
    steps, at the cost of at most 2x the padding of the batch's own longest example (in practice far less:
    length-grouped batches are near one length). Padded tokens are masked, so the loss is unchanged."""
    if n >= top:
        return n
    width = base
    while width < n:
        width *= 2
    return min(width, top)


def head_kind(features: list[dict]) -> str:
    """The packed loss a task's features call for: span (start/end positions) or classification (labels)."""
    keys = set(features[0])
    if {"start_positions", "end_positions"} <= keys:
        return "span"
    if "labels" in keys:
        return "classification"
    raise ValueError(f"packing needs labels or start/end positions in the features, not {sorted(keys)}")


def padded(features: list[dict], pad_id: int, max_length: int, static: bool) -> dict:
    """Right-padded tensors: to the batch's longest example, or (static) up to its bucket."""
    width = bucket(max(len(f["input_ids"]) for f in features), max_length) if static else None
    return pad_batch(features, pad_id, width=width)


def packed(features: list[dict], pad_id: int, max_length: int, static: bool) -> PackedBatch:
    """The features packed into rows of max_length tokens (first-fit decreasing). Without `static` a row is as
    wide as its fullest row; with it, every row is max_length wide and the row count is rounded up to a
    multiple of ROW_STEP (filler rows), so that compile sees few shapes."""
    budget = max(max_length, max(len(f["input_ids"]) for f in features))
    if not static:
        return pack(features, budget, pad_id=pad_id)
    rows = len(plan_rows([len(f["input_ids"]) for f in features], budget))
    return pack(features, budget, pad_id=pad_id, rows=math.ceil(rows / ROW_STEP) * ROW_STEP, fixed_width=True)


def to_device(batch: dict | PackedBatch, device: torch.device, pin: bool) -> dict | PackedBatch:
    """The batch's tensors on `device`; with `pin` (CUDA only) through page-locked memory, so that the copy
    is asynchronous and overlaps the previous step's kernels."""
    pin = pin and device.type == "cuda"

    def move(t):
        if not isinstance(t, torch.Tensor):
            return t
        return (t.pin_memory() if pin else t).to(device, non_blocking=True)

    if isinstance(batch, PackedBatch):
        return replace(batch, **{f.name: move(getattr(batch, f.name)) for f in fields(batch)})
    return {k: move(v) for k, v in batch.items()}


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's transformer blocks (transformers' GradientCheckpointingLayer subclasses, e.g.
    LlamaDecoderLayer), wherever wrappers (peft, DDP) put them."""
    try:
        from transformers.modeling_layers import GradientCheckpointingLayer
    except ImportError:  # older transformers: by class name
        GradientCheckpointingLayer = None  # noqa: N806
    found = []
    for m in model.modules():
        is_layer = (
            isinstance(m, GradientCheckpointingLayer)
            if GradientCheckpointingLayer
            else type(m).__name__.endswith("DecoderLayer")
        )
        if is_layer:
            found.append(m)
    return found


def compile_layers(model: torch.nn.Module, mode: str) -> list[torch.nn.Module]:
    """torch.compile each decoder layer in place (`nn.Module.compile`); returns the layers.

    Why the layers and not the whole model: every layer has the same code, so one compilation serves all of
    them (compile time of one layer, not of the model); the parts around them stay eager, so the hooks
    tunelab.packing puts on the task model and its head, peft's wrappers, DDP and accelerate's autocast work
    as they do without compile; the layers hold nearly all the FLOPs and kernel launches. `dynamic=False`:
    static shapes (see `bucket`). mode "default" fuses kernels; "reduce-overhead" also replays CUDA graphs
    (launch overhead gone; needs static shapes); "max-autotune-no-cudagraphs" tunes matmul kernels
    (long warm-up)."""
    import torch._dynamo

    layers = decoder_layers(model)
    if not layers:
        raise ValueError(f"compile: no decoder layers found in {type(model).__name__}")
    # Each (rows, width) shape is one cache entry per layer's code: bucket widths x a few row counts (the
    # epoch's short last batch, packed row counts, out-of-memory pieces) can pass the default limit of 8,
    # after which dynamo would silently fall back to eager.
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    for layer in layers:
        layer.compile(dynamic=False, mode=None if mode == "default" else mode)
    return layers


def uncompile(layers: list[torch.nn.Module]) -> None:
    """Back to eager for the trained model's evaluation and saving: evaluation batches have other shapes,
    each of which would compile anew. (`nn.Module.compile` keeps the compiled call in `_compiled_call_impl`;
    there is no public way to undo it.)"""
    for layer in layers:
        if hasattr(layer, "_compiled_call_impl"):
            layer._compiled_call_impl = None
