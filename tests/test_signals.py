"""signals.py: one way to stop on Ctrl-C and SIGTERM, handlers put back as they were found."""

import os
import signal

import pytest

from job import signals


def test_first_signal_calls_back_second_stops_and_handlers_are_restored(default_sigint):
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)}
    asked = []
    with pytest.raises(KeyboardInterrupt):
        with signals.Stop(on_request=lambda: asked.append(1), restore=(signal.SIGUSR1,)) as stop:
            signal.signal(signal.SIGUSR1, lambda *a: None)  # as Ray Tune does
            os.kill(os.getpid(), signal.SIGTERM)
            assert stop.requested and asked == [1]
            os.kill(os.getpid(), signal.SIGINT)  # the second one: stop at once
    assert {s: signal.getsignal(s) for s in before} == before


def test_without_a_callback_the_first_signal_stops(default_sigint):
    with pytest.raises(KeyboardInterrupt):
        with signals.Stop():
            os.kill(os.getpid(), signal.SIGTERM)


def test_an_ignored_signal_stays_ignored():
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with signals.Stop():
            os.kill(os.getpid(), signal.SIGINT)  # nohup / `&`: the process was started to ignore Ctrl-C
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, old)


def test_critical_section_delivers_the_signal_after_the_block(default_sigint):
    done = []
    with pytest.raises(KeyboardInterrupt):
        with signals.critical():
            os.kill(os.getpid(), signal.SIGINT)
            done.append("the write finished")
    assert done == ["the write finished"]
