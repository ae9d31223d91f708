"""Several processes (`accelerate launch`, torchrun): joining them, this process's device, which process
writes, and splitting evaluation work across them."""

from __future__ import annotations

import atexit
import datetime
import os
import time
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


_JOINED = False
_FINISH_GROUP = None  # a gloo group with no practical timeout, that `finish_together` waits on


def on_joined() -> None:
    """Once this process has joined a process group (every process calls it at the same point, right after
    joining):
    - destroy the group before the interpreter exits: left to interpreter finalization, gloo's worker threads
      can abort a finished process (SIGABRT, "terminate called without an active exception");
    - over gloo (CPU processes), make a second group whose barrier waits for days, for `finish_together`."""
    global _JOINED, _FINISH_GROUP
    dist = torch.distributed
    if _JOINED or not (dist.is_available() and dist.is_initialized()):
        return
    _JOINED = True
    atexit.register(_destroy_group)
    if dist.get_backend() == "gloo":
        _FINISH_GROUP = dist.new_group(backend="gloo", timeout=datetime.timedelta(days=7))


def _destroy_group() -> None:
    global _JOINED, _FINISH_GROUP
    if _JOINED and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    _JOINED, _FINISH_GROUP = False, None


def finish_together() -> None:
    """At the end of a command that succeeded on this process: leave the process group tunelab joined (none
    else). Over gloo (CPU processes), first wait until every process has finished: otherwise one with nothing
    left to write (not the main one) tears gloo down while the main one still uses its connections, which is
    where finished processes were seen to abort. The wait has no practical time limit (`on_joined`'s group),
    for the main process may evaluate alone for hours on a CPU, and a barrier of the main group gives up
    after its timeout (30 minutes). It polls, so that SIGTERM (the launcher stopping the run) still ends it;
    if the main process fails, its closed connections end the wait with an error. Only on success: after an
    error the others may be inside a collective that a barrier would wrongly pair with (the atexit fallback
    then only destroys)."""
    if _FINISH_GROUP is not None:
        work = torch.distributed.barrier(group=_FINISH_GROUP, async_op=True)
        while not work.is_completed():
            time.sleep(0.05)
        work.wait()  # raises if the barrier failed
    _destroy_group()


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
    on_joined()
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
