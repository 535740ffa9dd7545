"""Progress of an epoch: a tqdm bar (rate, ETA, running loss) on a terminal; elsewhere (a
log file, CI, a cluster job) one plain line per quarter epoch, so logs stay readable."""

from __future__ import annotations

import logging
import sys
import time
from typing import Optional

log = logging.getLogger("cifar_exp")

QUARTERS = 4


class EpochProgress:
    """Used as a context manager around one epoch's steps; `update` after each step."""

    def __init__(self, enabled: bool, total: int, start: int, epoch: int, epochs: int, batch_size: int):
        self.total, self.done, self.batch_size = total, start, batch_size
        self.label = f"epoch {epoch}/{epochs}"
        self.loss: Optional[float] = None
        self.bar = None
        self.quiet = not enabled
        if enabled and sys.stderr.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=total,
                initial=start,
                desc=self.label,
                unit="step",
                leave=False,
                dynamic_ncols=True,
                file=sys.stderr,
            )
        self.t0, self.start = time.perf_counter(), start
        self.next_report = self._next_quarter(start)

    def _next_quarter(self, step: int) -> int:
        quarter = -(-self.total // QUARTERS)
        return (step // quarter + 1) * quarter

    def update(self, loss: Optional[float]) -> None:
        self.done += 1
        if loss is not None:
            self.loss = loss
        if self.bar is not None:
            self.bar.update(1)
            if loss is not None:
                self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        elif not self.quiet and self.done >= self.next_report and self.done < self.total:
            self.next_report = self._next_quarter(self.done)
            rate = (self.done - self.start) * self.batch_size / max(time.perf_counter() - self.t0, 1e-9)
            # only a loss logged since the last line: a stale one would read as a plateau
            loss_txt = f" loss {self.loss:.4f}" if self.loss is not None else ""
            self.loss = None
            log.info(
                "%s: %d%% (%d/%d steps)%s | %.0f img/s",
                self.label,
                100 * self.done // self.total,
                self.done,
                self.total,
                loss_txt,
                rate,
            )

    def __enter__(self) -> EpochProgress:
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()
