"""Padding-free packing for tunelab's two task heads: several examples in one row, each attending only to
itself.

A padded batch computes on `batch × longest` tokens; a packed batch puts the examples one after another in
rows of a token budget and computes on (nearly) only real tokens. For that to train the same model, three
things must hold, and `packed_loss` makes them hold:

* **no token attends across examples**: a document-masked (block-diagonal) causal attention;
* **each example sees the positions it has unpacked**: `position_ids` restart at 0 for each example, so RoPE
  rotates every token exactly as in its own padded row;
* **each head reads each example**: the classification head pools *each* example's last token (not one vector
  per row), and the span head takes *each* example's softmax over its own positions only (not across the row).
  transformers' `DataCollatorWithFlattening` does neither for these heads (transformers issue #41652).

The mask mechanism is transformers' own packed-sequence detection: given `position_ids` that restart at 0
inside a row, `attention_mask=None` and no cache, `masking_utils.create_causal_mask` (read and tested on
transformers 5.24) builds the document causal mask itself: dense and block-diagonal for sdpa and eager, a
`BlockMask` that skips the empty blocks for flex_attention. One batch format serves every backend, and on a
GPU flex gets a real variable-length attention, not a dense mask. Flash attention does not take that path:
transformers infers packing from position_ids there only for a batch of one row, so for `flash_attention_*`
the batch's cu_seqlens are passed as its varlen kwargs (`cu_seq_lens_q/k`, `max_length_q/k`), which it
accepts for any row count (read in modeling_flash_attention_utils.py, not run: no flash-attn on the CPU).

Conditions that are easy to break silently, all enforced by `packed_loss`: no 2-D attention_mask is passed;
`use_cache=False` is passed explicitly (Llama configs say `use_cache=True`; the model then builds a
DynamicCache even in training, and with a cache transformers skips the packed detection and attends across
the whole row: tested); and position_ids reach the task model, which a wrapper may not let through (peft's QA
wrapper drops them: see `_forward`). `mask="explicit"` instead passes a 4-D block-diagonal causal mask built
here (sdpa or eager only): a check on the detection, and a fallback should a transformers release change it.

Cost notes. With sdpa and eager the document mask is dense: attention still computes `rows × width²` scores
(the masked ones are wasted), so keep the row budget near the longest example (SST-2: 128, SQuAD: 384) there;
only flex_attention (block skipping) and flash varlen make wider rows free. flex_attention has no backward on
the CPU (torch 2.13), so CPU training uses sdpa.

Packing algorithm: first-fit decreasing (sort by length, longest first; put each example into the first row
with room, else open a row). It needs at most 11/9 of the fewest rows possible (+ 6/9), is deterministic,
costs O(examples × rows) Python steps: well under a millisecond for a micro-batch of 64. A greedy next-fit
over the sorted order is as simple but leaves a gap in every row it closes, i.e. more rows and more filler.

Intended use: pack the examples of one micro-batch (the ones the padded path would have padded together), so
an optimizer step sees the same examples and the same mean loss; only the tokens computed change. Where that
pays (`benchmarks/packing_speed.py`, counting on the real data): against random batches, a lot (SST-2 prompts
66% -> 87% real tokens, bare sentences 26% -> 91-99%, SQuAD windows 57% -> 87-99%); against tunelab's
length-grouped batches, which are already 94-99% real tokens, nothing: packing same-length examples into
fixed rows leaves gaps (91-97%).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
import torch.nn.functional as F

KINDS = ("classification", "span")


@dataclass
class PackedBatch:
    """Packed rows and, per example (in the order of the features given to `pack`), where it lies in them.

    input_ids, position_ids, segment_ids: (rows, width). position_ids restart at 0 for each example and for
      the filler at the end of a row (its own segment, which no example attends to).
    segment_ids: the example's index for its tokens; `examples + row` for the filler of that row.
    cu_seqlens: (segments + 1,) int32, the segment boundaries in the flattened `rows * width` token stream,
      filler segments included (flash-attn varlen style); max_seqlen: the longest segment.
    row, start, length: (examples,) long: the example's row, its first token's index in the row, its length.
    pool_index: (examples,) index in the row of the token the classification head reads: the example's last
      token not equal to pad_id (the padded path's rule: LlamaForSequenceClassification reads the rightmost
      non-pad token; it is the last token unless the example ends with the pad id), its first token if none.
    labels: (examples,) classification labels, when the features have them.
    start_positions, end_positions: (examples,) span labels shifted by the example's start in its row.
    real_tokens: sum of example lengths (input_ids.numel() - real_tokens tokens are filler); longest: the
      longest example (plain ints, so the loss needs no host sync).
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    segment_ids: torch.Tensor
    cu_seqlens: torch.Tensor
    max_seqlen: int
    row: torch.Tensor
    start: torch.Tensor
    length: torch.Tensor
    pool_index: torch.Tensor
    real_tokens: int
    longest: int
    labels: torch.Tensor | None = None
    start_positions: torch.Tensor | None = None
    end_positions: torch.Tensor | None = None

    @property
    def num_examples(self) -> int:
        return int(self.row.numel())

    def to(self, device, non_blocking: bool = False) -> PackedBatch:
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        for k, v in moved.items():
            if isinstance(v, torch.Tensor):
                moved[k] = v.to(device, non_blocking=non_blocking)
        return replace(self, **moved)


def first_fit_decreasing(lengths: list[int], max_tokens: int) -> list[list[int]]:
    """Rows of example indices, each row's lengths summing to at most max_tokens (first-fit decreasing; ties
    broken by index, so the plan is deterministic)."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    for i, n in enumerate(lengths):
        if n < 1:
            raise ValueError(f"example {i} has no tokens")
        if n > max_tokens:
            raise ValueError(f"example {i} has {n} tokens, more than the row budget of {max_tokens}")
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda j: (-lengths[j], j)):
        for r, free in enumerate(room):
            if lengths[i] <= free:
                rows[r].append(i)
                room[r] -= lengths[i]
                break
        else:
            rows.append([i])
            room.append(max_tokens - lengths[i])
    return rows


def plan_rows(lengths: list[int], max_tokens: int | None = None, rows: int | None = None) -> list[list[int]]:
    """Which examples go into which row.

    max_tokens only: first-fit decreasing into as many rows as needed.
    rows only: the narrowest row budget for which first-fit decreasing needs at most `rows` rows (binary
      search from max(longest, ceil(total / rows))); e.g. a micro-batch of 64 examples in 8 rows.
    both: first-fit decreasing with max_tokens; a ValueError if it needs more than `rows` rows.
    """
    if not lengths:
        raise ValueError("no examples to pack")
    if max_tokens is None and rows is None:
        raise ValueError("give max_tokens, rows, or both")
    if rows is not None and rows < 1:
        raise ValueError(f"rows must be >= 1, got {rows}")
    if max_tokens is not None:
        plan = first_fit_decreasing(lengths, max_tokens)
        if rows is not None and len(plan) > rows:
            raise ValueError(
                f"{len(lengths)} examples ({sum(lengths)} tokens) need {len(plan)} rows of "
                f"{max_tokens} tokens, more than rows={rows}"
            )
        return plan
    # Binary search on the width. First-fit decreasing is not quite monotone in the width (bin-packing
    # anomalies), so the width found is feasible and near-minimal, not always the minimum.
    lo, hi = max(max(lengths), -(-sum(lengths) // rows)), sum(lengths)  # one row of everything always fits
    best: list[list[int]] = []
    while lo <= hi:
        mid = (lo + hi) // 2
        plan = first_fit_decreasing(lengths, mid)
        if len(plan) <= rows:
            best, hi = plan, mid - 1
        else:
            lo = mid + 1
    return best


def _check_features(features: list[dict]) -> set[str]:
    """The keys every feature shares; a ValueError for no features, features with different keys, padding
    in an attention_mask, or only one of start_positions and end_positions."""
    if not features:
        raise ValueError("no examples to pack")
    keys = set(features[0])
    for i, f in enumerate(features):
        if set(f) != keys:
            raise ValueError(f"feature {i} has keys {sorted(f)}, feature 0 has {sorted(keys)}")
        if "attention_mask" in f and not all(int(m) == 1 for m in f["attention_mask"]):
            raise ValueError(f"feature {i} has padding in its attention_mask: pack unpadded features")
    if ("start_positions" in keys) != ("end_positions" in keys):
        raise ValueError("features have only one of start_positions and end_positions")
    return keys


def _span_labels(
    features: list[dict], start: torch.Tensor, length: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The features' start and end positions shifted by each example's start in its row; a ValueError for a
    label outside its example's tokens."""
    sp = torch.tensor([int(f["start_positions"]) for f in features], dtype=torch.long)
    ep = torch.tensor([int(f["end_positions"]) for f in features], dtype=torch.long)
    outside = (sp < 0) | (sp >= length) | (ep < 0) | (ep >= length)
    if bool(outside.any()):
        bad = int(outside.nonzero()[0])
        raise ValueError(f"feature {bad}: span label outside its {int(length[bad])} tokens")
    return sp + start, ep + start


def pack(
    features: list[dict],
    max_tokens: int | None = None,
    *,
    pad_id: int,
    rows: int | None = None,
    fixed_width: bool = False,
) -> PackedBatch:
    """Pack tokenised features (dicts with input_ids and optionally attention_mask, labels, start_positions,
    end_positions: tunelab's training features) into rows; see `plan_rows` for max_tokens and rows.

    Width: the longest row's tokens, or max_tokens with `fixed_width` (static shapes, e.g. for torch.compile).
    With `rows`, the batch has exactly that many rows (rows beyond the plan are all filler). Filler tokens are
    pad_id. Every token of a feature must be real: a feature whose attention_mask has a 0 is refused (packing
    would make that token visible).
    """
    keys = _check_features(features)
    ids = [list(f["input_ids"]) for f in features]
    lengths = [len(x) for x in ids]
    plan = plan_rows(lengths, max_tokens, rows)
    if fixed_width and max_tokens is None:
        raise ValueError("fixed_width needs max_tokens")
    width = max_tokens if fixed_width else max(sum(lengths[i] for i in r) for r in plan)
    n_rows = len(plan) if rows is None else rows
    n = len(features)

    input_ids = torch.full((n_rows, width), pad_id, dtype=torch.long)
    position_ids = torch.zeros((n_rows, width), dtype=torch.long)
    segment_ids = torch.empty((n_rows, width), dtype=torch.long)
    row = torch.empty(n, dtype=torch.long)
    start = torch.empty(n, dtype=torch.long)
    pool = torch.empty(n, dtype=torch.long)
    seg_lengths: list[int] = []
    for r in range(n_rows):
        at = 0
        for i in plan[r] if r < len(plan) else []:
            k = lengths[i]
            input_ids[r, at : at + k] = torch.tensor(ids[i], dtype=torch.long)
            position_ids[r, at : at + k] = torch.arange(k)
            segment_ids[r, at : at + k] = i
            row[i], start[i] = r, at
            last = max((j for j in range(k) if ids[i][j] != pad_id), default=0)
            pool[i] = at + last
            seg_lengths.append(k)
            at += k
        if at < width:  # the filler: its own segment, positions from 0 (so no example's positions continue)
            position_ids[r, at:] = torch.arange(width - at)
            segment_ids[r, at:] = n + r
            seg_lengths.append(width - at)
    cu = torch.zeros(len(seg_lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(torch.tensor(seg_lengths), 0)
    out = PackedBatch(
        input_ids=input_ids,
        position_ids=position_ids,
        segment_ids=segment_ids,
        cu_seqlens=cu,
        max_seqlen=max(seg_lengths),
        row=row,
        start=start,
        length=torch.tensor(lengths, dtype=torch.long),
        pool_index=pool,
        real_tokens=sum(lengths),
        longest=max(lengths),
    )
    if "labels" in keys:
        out.labels = torch.tensor([f["labels"] for f in features])
    if "start_positions" in keys:
        out.start_positions, out.end_positions = _span_labels(features, start, out.length)
    return out


# ---- the loss ----------------------------------------------------------------------------------------------


def task_model(model):
    """The transformers task model inside DDP/FSDP (`.module`), torch.compile (`._orig_mod`) and peft
    (`get_base_model()`) wrappers: where the `score` / `qa_outputs` head lives."""
    while True:
        if hasattr(model, "get_base_model") and hasattr(model, "peft_config"):
            model = model.get_base_model()
        elif isinstance(getattr(model, "_orig_mod", None), torch.nn.Module):
            model = model._orig_mod
        elif isinstance(getattr(model, "module", None), torch.nn.Module):
            model = model.module
        else:
            return model


def document_mask(batch: PackedBatch, attn_implementation: str, dtype: torch.dtype) -> torch.Tensor:
    """A (rows, 1, width, width) causal mask that keeps each token inside its segment: boolean (True = attend)
    for sdpa, additive (0 / dtype's min) for eager. transformers passes a 4-D mask through as it is."""
    seg = batch.segment_ids
    width = seg.shape[1]
    causal = torch.ones(width, width, dtype=torch.bool, device=seg.device).tril()
    keep = (seg[:, :, None] == seg[:, None, :]) & causal
    keep = keep[:, None]
    if attn_implementation == "sdpa":
        return keep
    if attn_implementation == "eager":
        blocked = torch.finfo(dtype).min
        return torch.zeros(keep.shape, dtype=dtype, device=seg.device).masked_fill(~keep, blocked)
    raise ValueError(
        f"mask='explicit' supports sdpa and eager attention, not {attn_implementation!r}: "
        "use mask='positions'"
    )


def _forward(model, batch: PackedBatch, mask: str):
    """One forward pass of `model` (whatever wraps it) over the packed rows.

    position_ids and use_cache=False (and the explicit mask) are given at the top and pinned again on the task
    model's own forward by a pre-hook: a wrapper may drop them on the way, and peft does: 0.21's
    PeftModelForQuestionAnswering.forward takes `position_ids` by name and never passes it on, so the body
    would see positions 0..width-1 over the whole row (RoPE offsets and no document mask: a silent leak,
    caught by the LoRA span test)."""
    task = task_model(model)
    pinned = {
        "position_ids": batch.position_ids,
        # Explicitly off: with a cache, transformers skips the packed-sequence detection (see the top).
        "use_cache": False,
    }
    attn = str(task.config._attn_implementation)
    if mask == "explicit":
        pinned["attention_mask"] = document_mask(batch, attn, task.dtype)
    elif mask != "positions":
        raise ValueError(f"unknown mask {mask!r}: expected positions or explicit")
    elif "flash" in attn:  # flash infers packing from position_ids only for one row: give it the segments
        pinned.update(
            cu_seq_lens_q=batch.cu_seqlens,
            cu_seq_lens_k=batch.cu_seqlens,
            max_length_q=batch.max_seqlen,
            max_length_k=batch.max_seqlen,
        )

    def pin(module, args, kwargs):
        if len(args) > 1:
            raise RuntimeError(
                f"{type(module).__name__} was called with {len(args)} positional arguments; "
                "packing passes everything but input_ids by name"
            )
        return args, {**kwargs, **pinned}

    handle = task.register_forward_pre_hook(pin, with_kwargs=True)
    try:
        return model(input_ids=batch.input_ids, **pinned)
    finally:
        handle.remove()


def packed_logits(model, batch: PackedBatch, kind: str, mask: str = "positions"):
    """classification: (examples, num_labels) logits, each example's pooled token through the `score` head.
    span: (start_logits, end_logits), each (examples, longest example), an example's logits at its own
    positions 0..length-1 and -inf beyond (float32, or float64 for a float64 model)."""
    if kind == "classification":
        task = task_model(model)
        captured = []
        # The model's forward (through every wrapper: accelerate's autocast, DDP's gradient hooks, FSDP's
        # unsharding, peft) applies `score` to every token and pools one per row; the head's per-token output
        # is taken here and pooled per example instead. (Applying a linear head to every token costs
        # width x hidden x labels per token: nothing next to the body.)
        handle = task.score.register_forward_hook(lambda module, args, output: captured.append(output))
        try:
            _forward(model, batch, mask)
        finally:
            handle.remove()
        if len(captured) != 1:
            raise RuntimeError(f"the score head ran {len(captured)} times in one forward pass, expected once")
        return captured[0][batch.row, batch.pool_index]
    if kind == "span":
        out = _forward(model, batch, mask)
        width = batch.input_ids.shape[1]
        offsets = torch.arange(batch.longest, device=batch.row.device)
        valid = offsets[None, :] < batch.length[:, None]
        flat = (batch.row * width + batch.start)[:, None] + offsets[None, :]
        flat = torch.where(valid, flat, torch.zeros_like(flat))

        def per_example(logits):
            # At least float32, as span_loss computes it (bf16 logits are upcast); float64 stays float64.
            logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
            return logits.reshape(-1)[flat].masked_fill(~valid, float("-inf"))

        return per_example(out.start_logits), per_example(out.end_logits)
    raise ValueError(f"unknown kind {kind!r}: expected one of {', '.join(KINDS)}")


def packed_loss(model, batch: PackedBatch, kind: str, *, mask: str = "positions") -> torch.Tensor:
    """The padded path's loss, computed on packed rows in one forward pass of the model.

    classification: mean cross-entropy over the examples of each example's pooled logits (what
      LlamaForSequenceClassification computes on the padded batch: `model(**pad_batch(...)).loss`);
    span: (cross-entropy of the start + of the end) / 2, each a mean over examples of a softmax over the
      example's own positions only (`tunelab.tasks.extractive_qa.windows.span_loss` on the padded batch).
    Works with the bare task model (full fine-tuning, or head-only with the body frozen) and with a peft
    LoRA model; `model` is what the training loop calls (it may be wrapped by accelerate/DDP).
    mask: "positions" (transformers builds the document mask from the restarting position_ids) or "explicit"
    (a 4-D mask built here; sdpa/eager only).
    """
    if kind == "classification":
        if batch.labels is None:
            raise ValueError("classification needs labels")
        problem = task_model(model).config.problem_type
        if problem not in (None, "single_label_classification"):
            raise ValueError(f"packed classification computes single-label cross-entropy, not {problem!r}")
        logits = packed_logits(model, batch, kind, mask)
        return F.cross_entropy(logits, batch.labels.to(logits.device))
    if kind == "span":
        if batch.start_positions is None:
            raise ValueError("span needs start_positions and end_positions")
        start_logits, end_logits = packed_logits(model, batch, kind, mask)
        # The gathered logits are example-local: position 0 is the example's first token.
        return (
            F.cross_entropy(start_logits, batch.start_positions - batch.start)
            + F.cross_entropy(end_logits, batch.end_positions - batch.start)
        ) / 2
    raise ValueError(f"unknown kind {kind!r}: expected one of {', '.join(KINDS)}")
