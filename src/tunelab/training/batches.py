"""Batches: which examples go together (length-grouped or random, the same global order on every process),
each process's share of a global batch, and padding."""

from __future__ import annotations

import numpy as np
import torch


def length_grouped_order(lengths: list[int], batch_size: int, seed: int | tuple[int, ...]) -> list[list[int]]:
    """Batches of similar length in random order: shuffle, sort inside mega-batches of 50 batches, cut.
    Dynamic padding then pads each batch to its own longest example (SST-2's ~13-token sentences padded to 128
    would be ~90% padding). Only the last batch can be short."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(lengths))
    mega = batch_size * 50
    batches = []
    for s in range(0, len(perm), mega):
        chunk = sorted(perm[s : s + mega].tolist(), key=lambda i: -lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    order = rng.permutation(len(batches))
    return [batches[i] for i in order]


def random_order(n: int, batch_size: int, seed: int | tuple[int, ...]) -> list[list[int]]:
    perm = np.random.default_rng(seed).permutation(n).tolist()
    return [perm[i : i + batch_size] for i in range(0, n, batch_size)]


def shard_batch(global_batch: list[int], world: int, rank: int) -> tuple[list[int], float]:
    """This process's part of a global batch and the weight of its mean loss, world x share, so that the
    average DDP takes over processes equals the mean over the whole global batch. An empty part (a global
    batch shorter than the number of processes) becomes one example with weight 0."""
    from tunelab.distributed import shard_bounds

    lo, hi = shard_bounds(len(global_batch), world, rank)
    if hi == lo:
        return global_batch[:1], 0.0
    return global_batch[lo:hi], world * (hi - lo) / len(global_batch)


def pad_batch(
    features: list[dict], pad_id: int, keys_to_pad=("input_ids", "attention_mask"), width: int | None = None
) -> dict:
    """Right-pad token lists to the batch's longest (or to `width`, at least that); other keys become tensors
    as they are."""
    width = max([len(f["input_ids"]) for f in features] + [width or 0])
    out = {}
    for key in features[0]:
        vals = [f[key] for f in features]
        if key in keys_to_pad:
            fill = pad_id if key == "input_ids" else 0
            out[key] = torch.tensor([v + [fill] * (width - len(v)) for v in vals], dtype=torch.long)
        else:
            out[key] = torch.tensor(vals)
    return out
