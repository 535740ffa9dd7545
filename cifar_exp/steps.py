"""How long a run is, counted in one place: batches per epoch, and optimizer steps per epoch
and per run. The checks before a run (validation.py), the loader (data.py) and the
schedules (run.py) count with these, so the plan that was checked is the plan that runs."""

from __future__ import annotations

import math


def batches_per_epoch(images: int, batch_size: int, drop_last: bool, limit: int = 0) -> int:
    """Batches of `batch_size` over `images` (a partial last one unless dropped), at most
    `limit` of them (0: no limit)."""
    full = images // batch_size if drop_last else math.ceil(images / batch_size)
    return min(full, limit) if limit else full


def optimizer_steps(batches: int, accumulate: int, epochs: int, max_steps: int = 0) -> tuple[int, int]:
    """(optimizer steps per epoch, optimizer steps in the run): one per `accumulate` batches
    (an epoch's last group may be short), the run's capped at `max_steps` (0: no cap)."""
    per_epoch = math.ceil(batches / accumulate)
    total = epochs * per_epoch
    return per_epoch, min(total, max_steps) if max_steps else total
