"""Running a model over many examples in batches whose size backs off on out-of-memory.

Evaluation and zero-shot loops sort examples by length and hand consecutive slices to a function that writes
its results by example index (so a batch can be run again). When a batch does not fit in GPU memory it is
retried in halves, and the smaller size is kept for the rest of the run: a batch size that suits one GPU does
not fail on a smaller one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm

from tunelab.errors import UsageError


def run_batches(
    order: Sequence[int],
    batch_size: int,
    run: Callable[[list[int]], None],
    *,
    desc: str,
    progress: bool = True,
) -> int:
    """Call `run(idx)` on consecutive slices of `order`; returns the batch size the run ended with."""
    size = max(1, batch_size)
    done = 0
    with tqdm(total=len(order), desc=desc, unit="example", disable=not progress) as bar:
        while done < len(order):
            idx = list(order[done : done + size])
            try:
                run(idx)
            except torch.cuda.OutOfMemoryError:
                if size == 1:
                    raise UsageError(
                        f"{desc}: out of GPU memory with one example at a time: lower the maximum length"
                    ) from None
                failed = True
            else:
                failed = False
            if failed:  # outside the handler, so the failed batch's tensors are free
                size //= 2
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                bar.write(f"{desc}: out of memory; continuing with batches of {size}")
                continue
            done += len(idx)
            bar.update(len(idx))
    return size
