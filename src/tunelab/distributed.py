"""Several processes (`accelerate launch`, torchrun): joining them, this process's device, which process
writes, and splitting evaluation work across them."""

from __future__ import annotations

import atexit
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from tunelab.errors import UsageError

if TYPE_CHECKING:
    from accelerate import PartialState


def launched_processes() -> int:
    """How many processes the launcher (accelerate launch, torchrun) started: $WORLD_SIZE, else 1."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1") or "1"))
    except ValueError:
        raise UsageError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not a number of processes") from None


def check_joined(joined: int, world: int) -> None:
    """Refuse to go on as `world` unconnected copies (each would train alone and write the same folder)."""
    if joined != world:
        raise UsageError(
            f"started as {world} processes (WORLD_SIZE) but accelerate joined {joined}: check the launch "
            "command and accelerate config (see configs/accelerate/); on CPUs set ACCELERATE_USE_CPU=1"
        )


_DESTROY_REGISTERED = False


def destroy_group_at_exit() -> None:
    """Once this process has joined a process group, destroy it before the interpreter exits: left to
    interpreter finalization, gloo's worker threads can abort a finished process (SIGABRT, "terminate called
    without an active exception"; pytorch/pytorch#190489)."""
    global _DESTROY_REGISTERED
    if not _DESTROY_REGISTERED and torch.distributed.is_available() and torch.distributed.is_initialized():
        atexit.register(_destroy_group)
        _DESTROY_REGISTERED = True


def _destroy_group() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def finish_together() -> None:
    """At the end of a command that succeeded on this process: wait until every process has finished, then
    leave the process group together. Otherwise a process that has nothing left to write (not the main one)
    tears gloo down while the main one is still using its connections, which is where finished processes were
    seen to abort. Only on success: after an error the others may be inside a collective that a barrier would
    wrongly pair with (the atexit fallback of `destroy_group_at_exit` then only destroys)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def distributed_state() -> PartialState | None:
    """accelerate's PartialState when this is one of several processes, else None. Creating it joins the
    process group, which the training Accelerator then reuses."""
    world = launched_processes()
    if world <= 1:
        return None
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    # Without a GPU, accelerate only joins the processes together when told to use the CPU.
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available())
    check_joined(state.num_processes, world)
    destroy_group_at_exit()
    return state


def device() -> torch.device:
    """This process's device: under `accelerate launch`/torchrun each process gets its own GPU."""
    state = distributed_state()
    if state is not None:
        return state.device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def main_process() -> bool:
    """Whether this process writes results: the only one, or the first of an `accelerate launch`."""
    state = distributed_state()
    return state is None or state.is_main_process


def eval_dtype(dev: torch.device) -> torch.dtype:
    return torch.bfloat16 if dev.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32


def shard_bounds(n: int, world: int, rank: int) -> tuple[int, int]:
    """The contiguous slice [lo, hi) of n items that process `rank` of `world` takes: sizes differ by at most
    one, every item belongs to exactly one process (np.array_split's rule)."""
    base, extra = divmod(n, world)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


def sharded_map(fn: Callable[[list], object], items: list) -> list:
    """`fn` (a list of items -> a sequence of per-item results) across the processes: each takes a contiguous
    slice (`shard_bounds`) and every process gets all results back in the original order, none duplicated or
    dropped. One process: `list(fn(items))`. Meant for models that are not sharded (single device, DDP)."""
    state = distributed_state()
    if state is None:
        return list(fn(items))
    from accelerate.utils import gather_object

    lo, hi = shard_bounds(len(items), state.num_processes, state.process_index)
    part = list(fn(items[lo:hi])) if hi > lo else []
    if len(part) != hi - lo:
        raise ValueError(f"sharded_map: fn returned {len(part)} results for {hi - lo} items")
    return gather_object(part)
