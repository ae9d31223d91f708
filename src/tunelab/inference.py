"""Running a model over many examples in batches whose size backs off on out-of-memory.

Evaluation and zero-shot loops sort examples by length and hand consecutive slices to a function that writes
its results by example index (so a batch can be run again). When a batch does not fit in GPU memory it is
retried in halves, and the smaller size is kept for the rest of the run: a batch size that suits one GPU does
not fail on a smaller one.

`batch_size="auto"` fills each batch up to a budget of padded tokens instead of a count of examples, so short
inputs go in large batches and long ones in small: the batches are as large as memory allows. On a GPU the
budget starts high and out-of-memory halves it (and the halved budget is kept), as lm-evaluation-harness's
`--batch_size auto` and accelerate's `find_executable_batch_size` do; on a CPU, where running out of memory
means swapping rather than an error, it is a fixed budget.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm

from tunelab.errors import UsageError

AUTO = "auto"
# Padded tokens per batch under batch_size auto. CUDA: a start that fits inference of a 1B model (its
# activations, or a generation's KV cache) on a 24 GB card, halved on out-of-memory. CPU: float32 matrix
# products run at the same FLOP/s from a few hundred rows up, so more tokens per batch buy nothing
# (benchmarks/results/eval-batching-cpu.json).
AUTO_TOKENS = {"cuda": 65_536, "cpu": 2_048}
AUTO_MAX_EXAMPLES = 4_096  # at most this many examples in one batch, whatever their length


def check_context(lengths: Sequence[int], limit: int | None, shots: int, what: str, then: str) -> bool:
    """Whether some of `lengths` (tokens of `what`, e.g. "prompts") pass the `limit` the model reads. With
    `shots` they are refused (the solved examples would go: use fewer); without, a warning says `then`."""
    over = [n for n in lengths if limit and n > limit]
    if not over:
        return False
    said = f"{len(over)} of {len(lengths)} {what} are longer than the {limit} tokens this model reads"
    if shots:
        raise UsageError(
            f"{said} (the longest: {max(over)} tokens): use fewer shots (`shots`) or shorter inputs"
        )
    print(f"tunelab: warning: {said} (the longest: {max(over)}): {then}", file=sys.stderr)
    return True


def auto_tokens(device: torch.device | str | None) -> int:
    """The starting token budget of batch_size auto on `device`."""
    kind = torch.device(device).type if device is not None else "cpu"
    return AUTO_TOKENS["cuda" if kind == "cuda" else "cpu"]


def run_batches(
    order: Sequence[int],
    batch_size: int | str,
    run: Callable[[list[int]], None],
    *,
    desc: str,
    progress: bool = True,
    lengths: Sequence[int] | None = None,
    device: torch.device | str | None = None,
) -> int:
    """Call `run(idx)` on consecutive slices of `order`. `batch_size`: examples per batch, or "auto" (then
    `lengths[i]` is the number of tokens example i takes in a batch, padded to the batch's longest, and
    `device` sets the budget). Returns the batch size the run ended with (for auto: its token budget)."""
    auto = batch_size == AUTO
    if auto and lengths is None:
        raise ValueError("batch_size auto needs the examples' lengths")
    size = AUTO_MAX_EXAMPLES if auto else max(1, int(batch_size))
    budget = auto_tokens(device) if auto else 0
    done = 0
    with tqdm(total=len(order), desc=desc, unit="example", disable=not progress) as bar:
        while done < len(order):
            idx = (
                _within_budget(order, done, size, lengths, budget)
                if auto
                else list(order[done : done + size])
            )
            try:
                run(idx)
            except torch.cuda.OutOfMemoryError:
                if len(idx) == 1:
                    raise UsageError(
                        f"{desc}: out of GPU memory with one example at a time: lower the maximum length"
                    ) from None
                failed = True
            else:
                failed = False
            if failed:  # outside the handler, so the failed batch's tensors are free
                if auto:
                    budget = _padded(idx, lengths) // 2
                    what = f"batches of at most {budget} tokens"
                else:
                    size //= 2
                    what = f"batches of {size}"
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                bar.write(f"{desc}: out of memory; continuing with {what}")
                continue
            done += len(idx)
            bar.update(len(idx))
    return budget if auto else size


def _padded(idx: list[int], lengths: Sequence[int]) -> int:
    return len(idx) * max(lengths[i] for i in idx)


def _within_budget(
    order: Sequence[int], start: int, cap: int, lengths: Sequence[int], budget: int
) -> list[int]:
    """The longest run of `order` from `start` (one example at least, `cap` at most) whose padded size
    fits."""
    idx = [order[start]]
    width = lengths[order[start]]
    for i in order[start + 1 : start + cap]:
        width = max(width, lengths[i])
        if (len(idx) + 1) * width > budget:
            break
        idx.append(i)
    return idx
