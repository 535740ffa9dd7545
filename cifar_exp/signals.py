"""Stop requests: SIGINT, SIGTERM, SIGUSR1 and SIGUSR2 ask the run to stop after the current
step, so it can write a checkpoint first."""

from __future__ import annotations

import signal
import threading
from typing import Optional

# SIGUSR2 is what SLURM (via submitit) sends before a timeout or preemption.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


class StopSignals:
    """While active, the first stop signal is recorded in `signum`; a second one raises
    KeyboardInterrupt at once for a user who really wants out. On exit, a handler that was
    installed before (submitit's requeue handler, say) is given the signal it missed."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> StopSignals:
        # Python only lets the main thread install handlers (a run inside a worker thread
        # keeps the process's own handling).
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
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
