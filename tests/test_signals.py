"""Stop signals are recorded, not fatal, and handed on to a handler installed before."""

import os
import signal

import pytest

from cifar_exp.signals import StopSignals


def test_a_stop_signal_is_recorded_and_a_second_one_interrupts():
    with StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signum == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_the_previous_python_handler_gets_the_signal_on_exit():
    seen = []
    old = signal.signal(signal.SIGUSR2, lambda s, f: seen.append(s))
    try:
        with StopSignals() as stop:
            os.kill(os.getpid(), signal.SIGUSR2)
            assert seen == [] and stop.signum == signal.SIGUSR2
        assert seen == [signal.SIGUSR2]
    finally:
        signal.signal(signal.SIGUSR2, old)


def test_an_exiting_process_ignores_further_stop_signals():
    from cifar_exp.signals import STOP_SIGNALS, ignore_stop_signals

    saved = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    try:
        ignore_stop_signals()
        os.kill(os.getpid(), signal.SIGINT)  # would raise KeyboardInterrupt by default
        os.kill(os.getpid(), signal.SIGTERM)  # would end the test process
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
