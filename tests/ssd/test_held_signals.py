"""held_signals: the first signal waits for the end of the block, a second acts at once, handlers
that are not Python code and threads other than the main one are left alone."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from saguaro.ssd.held_signals import held_signals


class Stop(Exception):
    pass


@pytest.fixture
def sigterm_raises():
    def stop(signum, frame):
        raise Stop(signum)

    old = signal.signal(signal.SIGTERM, stop)
    yield stop
    signal.signal(signal.SIGTERM, old)


def test_the_first_signal_runs_its_handler_when_the_block_ends(sigterm_raises):
    steps = []
    with pytest.raises(Stop):
        with held_signals():
            os.kill(os.getpid(), signal.SIGTERM)
            steps.append("after the signal")
    assert steps == ["after the signal"]
    assert signal.getsignal(signal.SIGTERM) is sigterm_raises


def test_a_second_signal_acts_at_once_and_only_once(sigterm_raises):
    steps = []
    with pytest.raises(Stop) as info:
        with held_signals():
            os.kill(os.getpid(), signal.SIGTERM)
            steps.append(1)
            os.kill(os.getpid(), signal.SIGTERM)
            steps.append(2)
    assert steps == [1]
    assert info.value.__context__ is None  # raised by the second signal, not again at the end
    assert signal.getsignal(signal.SIGTERM) is sigterm_raises
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_block_without_signals_changes_nothing(sigterm_raises):
    with held_signals():
        pass
    assert signal.getsignal(signal.SIGTERM) is sigterm_raises
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_default_handlers_and_other_threads_are_left_alone():
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    with held_signals():
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    seen = []

    def other():
        with held_signals():
            seen.append(signal.getsignal(signal.SIGINT))

    thread = threading.Thread(target=other)
    thread.start()
    thread.join()
    assert seen == [signal.default_int_handler]
