"""Stop requests: SIGINT, SIGTERM, SIGHUP (a closed terminal), SIGQUIT (Ctrl-\\), SIGUSR1
and SIGUSR2 ask the run to stop after the current step, so it can write a checkpoint first
and end its record as KILLED. Only SIGKILL can leave a record unfinished."""

from __future__ import annotations

import signal
import threading
from typing import Callable, Optional, TypeVar

from cifar_exp.errors import Interrupted

T = TypeVar("T")

# SIGUSR2 is what SLURM (via submitit) sends before a timeout or preemption.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)


class StopSignals:
    """While active, the first stop signal is recorded in `signum`; a second one raises
    KeyboardInterrupt at once for a user who really wants out, but only once, and never
    after `ending()`: the run's record is then being closed (KILLED, FAILED or FINISHED),
    and cutting that short would leave it RUNNING. On exit, a handler that was installed
    before (submitit's requeue handler, say) is given the signal it missed. A SIGHUP the
    process was started with ignored (nohup) stays ignored."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        # False where the code polls `signum` often (a run's report): a KeyboardInterrupt
        # raised inside a library's cleanup is printed as "Exception ignored" and lost
        self.second_raises = True
        self._at_once: Optional[str] = None  # while set, the first signal raises too
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.signum is not None and self.second_raises:
            self.second_raises = False  # the ending this starts is not cut short in turn
            raise KeyboardInterrupt
        self.signum = self.signum or signum
        if self._at_once is not None:
            raise Interrupted(signum, self._at_once)

    def ending(self) -> None:
        """The run's record is being closed: from now on a signal is only recorded."""
        self.second_raises = False

    def at_once(self, hint: str, fn: Callable[..., T], *args) -> T:
        """fn(*args), where a stop signal ends the run at once (Interrupted, with `hint` for
        what to run next): for a start that has nothing to save yet, and may wait on a
        store that does not answer."""
        if self.signum is not None:
            raise Interrupted(self.signum, hint)
        self._at_once = hint
        try:
            return fn(*args)
        finally:
            self._at_once = None

    def __enter__(self) -> StopSignals:
        # Python only lets the main thread install handlers (a run inside a worker thread
        # keeps the process's own handling).
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                if sig == signal.SIGHUP and signal.getsignal(sig) is signal.SIG_IGN:
                    continue  # under nohup: the run outlives its terminal, as asked
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        previous = self._previous.get(self.signum)
        if callable(previous) and previous is not signal.default_int_handler:
            previous(self.signum, None)


def ignore_stop_signals() -> None:
    """For a process that is exiting after a stop: its checkpoint is written and its run ended,
    so a further Ctrl-C has nothing left to stop and must not turn a clean exit into a
    KeyboardInterrupt raised from the interpreter's shutdown."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
