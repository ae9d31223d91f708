"""tunelab.signals on its own: SIGINT and SIGTERM become Interrupted (exit 130 / 143); inside deferred() the
first is only recorded and a second stops at once; immediate() parts stop at once; ignored signals stay
ignored; the previous handlers come back."""

from __future__ import annotations

import os
import signal

import pytest

from tunelab import signals


def _send(signum: int) -> None:
    os.kill(os.getpid(), signum)


def test_signals_become_interrupted_with_the_shells_exit_status():
    before = signal.getsignal(signal.SIGTERM)
    with signals.handled():
        for signum, code, name in [(signal.SIGINT, 130, "SIGINT"), (signal.SIGTERM, 143, "SIGTERM")]:
            with pytest.raises(signals.Interrupted) as info:
                _send(signum)
            assert isinstance(info.value, KeyboardInterrupt)
            assert (info.value.exit_code, info.value.signame) == (code, name)
    assert signal.getsignal(signal.SIGTERM) is before


def test_deferred_records_the_first_signal_and_a_second_stops_at_once():
    with signals.handled():
        with pytest.raises(signals.Interrupted) as info, signals.deferred():
            _send(signal.SIGTERM)
            assert signals.pending() == signal.SIGTERM  # recorded, nothing raised: the step goes on
            with signals.deferred():  # nested blocks raise only when the outermost ends
                pass
            reached = True
        assert reached and info.value.signum == signal.SIGTERM and signals.pending() is None
        with pytest.raises(signals.Interrupted) as info, signals.deferred():
            _send(signal.SIGTERM)
            _send(signal.SIGINT)
        assert info.value.signum == signal.SIGINT
        with pytest.raises(signals.Interrupted), signals.deferred(), signals.immediate():
            _send(signal.SIGTERM)  # an evaluation: stopped at once
        with pytest.raises(signals.Interrupted), signals.deferred():
            _send(signal.SIGTERM)
            with signals.immediate():  # a pending signal stops on entry
                raise AssertionError("not reached")


def test_an_ignored_signal_stays_ignored():
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with signals.handled():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            _send(signal.SIGINT)  # nothing happens
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, old)
