"""SIGINT (Ctrl-C) and SIGTERM (`timeout`, Slurm, Kubernetes, `docker stop`, a preempted GPU) end a run the
same way: as an `Interrupted` exception, so that every `finally` and every output folder's clean-up runs.

While training (`deferred()`), the first signal only sets a flag: the optimizer step in progress finishes, the
loop saves a checkpoint at that step (with --save-every) and then stops. A second signal stops at once
(abandoning the step; the checkpoint before is kept). Long parts inside training that can be abandoned without
harm, such as an evaluation, run in `immediate()`. Outside training a signal stops at once.

The command-line entry point installs the handlers (`handled()`); library callers that do not keep Python's
default: SIGINT raises KeyboardInterrupt anywhere (Interrupted is one), SIGTERM ends the process.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """A run stopped by a signal. Exit status 128 + the signal's number (130 for SIGINT, 143 for SIGTERM), as
    a shell reports a process the signal killed, so `timeout`, Slurm and CI see what happened."""

    def __init__(self, signum: int):
        self.signum = int(signum)
        self.signame = signal.Signals(self.signum).name
        super().__init__(self.signame)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


_state = {"defer": 0, "pending": None}


def _handler(signum, frame) -> None:
    if _state["defer"] > 0 and _state["pending"] is None:
        _state["pending"] = signum  # finish the step; the loop stops at the next check
        return
    _state["pending"] = None
    raise Interrupted(signum)


@contextmanager
def handled() -> Iterator[None]:
    """Install the SIGINT and SIGTERM handlers for the block (the main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    # A signal the process was started to ignore (SIGINT for a background job of a script) stays ignored.
    old = {s: signal.getsignal(s) for s in SIGNALS if signal.getsignal(s) is not signal.SIG_IGN}
    for s in old:
        signal.signal(s, _handler)
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        _state.update(defer=0, pending=None)


@contextmanager
def deferred() -> Iterator[None]:
    """Inside, the first signal is only recorded (`pending()`), a second one stops at once. A signal still
    pending when the outermost block ends is raised then."""
    _state["defer"] += 1
    try:
        yield
    finally:
        _state["defer"] -= 1
    if _state["defer"] == 0 and _state["pending"] is not None:
        raise stop(_state["pending"])


@contextmanager
def immediate() -> Iterator[None]:
    """Inside a deferred block, a part a signal may cut short: a signal stops at once, and one already
    pending stops on entry."""
    saved = _state["defer"]
    _state["defer"] = 0
    try:
        if _state["pending"] is not None:
            raise stop(_state["pending"])
        yield
    finally:
        _state["defer"] = saved


def pending() -> int | None:
    """The number of the signal received inside a deferred block and not yet acted on."""
    return _state["pending"]


def stop(signum: int) -> Interrupted:
    """The exception that ends the run for `signum` (the pending signal is taken)."""
    _state["pending"] = None
    return Interrupted(signum)
