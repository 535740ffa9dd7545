"""Stop signals are recorded, not fatal, and handed on to a handler installed before."""

import os
import signal
import threading
import time
from pathlib import Path

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


def test_a_second_signal_raises_once_and_never_once_the_run_is_ending():
    with StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)  # the ending the first one started goes on
    with StopSignals() as stop:
        stop.ending()
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signum == signal.SIGTERM


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGQUIT], ids=lambda s: s.name)
def test_a_closed_terminal_and_ctrl_backslash_are_stop_requests(sig):
    with StopSignals() as stop:
        os.kill(os.getpid(), sig)
        assert stop.signum == sig


def test_a_sigint_ignored_by_a_background_shell_job_still_stops_the_run():
    """A shell starts `cmd &` with SIGINT ignored; `kill -INT` must still stop the run."""
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with StopSignals() as stop:
            os.kill(os.getpid(), signal.SIGINT)
            assert stop.signum == signal.SIGINT
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, old)


def test_a_sighup_started_ignored_stays_ignored():
    """Under nohup SIGHUP is ignored: the run keeps going when the terminal closes."""
    old = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with StopSignals() as stop:
            os.kill(os.getpid(), signal.SIGHUP)
            assert stop.signum is None
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, old)


class _SlowTracker:
    """Records how the run ended; each step of its ending takes a few milliseconds, the
    time a store takes, so a second signal can land inside it."""

    def __init__(self):
        self.ended = None

    def _work(self):
        deadline = time.monotonic() + 0.01
        while time.monotonic() < deadline:
            pass

    def stop(self):
        self._work()

    def set_tags(self, tags):
        self._work()

    def log_artifact(self, *a):
        self._work()

    def finish(self, status, error=None):
        self._work()
        self.ended = status


@pytest.mark.parametrize("first", [signal.SIGINT, signal.SIGTERM], ids=lambda s: s.name)
def test_fifty_timed_double_signals_each_end_killed(first):
    """The first signal stops the run (its last results are written, then it raises
    Interrupted, as the epoch loop does); a second one lands 0-49 ms later, inside that
    work, the raise, or the record's ending. Every time, the record ends KILLED."""
    from cifar_exp.checkpoint import RunState
    from cifar_exp.errors import Interrupted
    from cifar_exp.job import Job
    from cifar_exp.run import tracked

    outcomes = []
    for offset_ms in range(50):
        tracker = _SlowTracker()
        with StopSignals() as stop:
            try:
                story = Job(Path("run")).story(Path("run"))
                with tracked(tracker, story, None, RunState(classes=[]), 1, stop):
                    os.kill(os.getpid(), first)
                    threading.Timer(offset_ms / 1000, os.kill, (os.getpid(), first)).start()
                    tracker._work()  # what the loop writes before it raises (per-class table, checkpoint)
                    stop.ending()
                    raise Interrupted(first, "resume")
            except (Interrupted, KeyboardInterrupt):
                pass
            time.sleep(0.06)  # the timer has fired inside this block
        outcomes.append(tracker.ended)
    assert outcomes == ["KILLED"] * 50


def test_a_stop_survives_the_trip_back_from_a_remote_job():
    """submitit sends a job's outcome back pickled: an Interrupted that could not be
    rebuilt failed the whole sweep instead of the one job."""
    import pickle

    from cifar_exp.errors import Interrupted

    here = Interrupted(15, "python -m cifar_exp resume=x")
    back = pickle.loads(pickle.dumps(here))
    assert (back.signum, back.resume_hint, str(back)) == (
        15,
        "python -m cifar_exp resume=x",
        "stopped by signal 15 (SIGTERM)",
    )
    assert back.elsewhere and not here.elsewhere  # the signal reached the job, not the launcher
