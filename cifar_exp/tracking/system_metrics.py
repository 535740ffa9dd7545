"""CPU, memory, disk and network (and GPU where pynvml finds one) samples for a run, taken
by MLflow's own monitors on the run's schedule."""

from __future__ import annotations

import logging
import threading
import time

from cifar_exp.errors import reason

log = logging.getLogger("cifar_exp")

# the first sample comes this soon, so even a short run has one from its start
FIRST_SAMPLE_S = 1.0


class SystemMetrics:
    """MLflow's own system monitors on the run's schedule. psutil reads CPU use as the share
    since its previous reading, so MLflow's first reading, taken the moment it starts, says
    0 %: here that one only primes it. Samples follow FIRST_SAMPLE_S after the start, then
    every `every_s`, and a last one when the run ends, so a 5-second run has two true ones."""

    def __init__(self, run_id: str, every_s: float, resumed: bool, uri: str):
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        self.mlflow = SystemMetricsMonitor(run_id, sampling_interval=every_s, resume_logging=resumed, tracking_uri=uri)
        self.every_s = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="SystemMetrics")
        self._last = time.monotonic()

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        # priming, in this thread (psutil keeps the previous reading per thread): its CPU
        # figure covers no time
        self.mlflow.collect_metrics()
        for monitor in self.mlflow.monitors:
            monitor.clear_metrics()
        self._last = time.monotonic()
        wait = min(FIRST_SAMPLE_S, self.every_s)
        while not self._stop.wait(wait):
            self._sample()
            wait = self.every_s
        if time.monotonic() - self._last >= FIRST_SAMPLE_S / 2:  # a shorter span reads noise
            self._sample()

    def _sample(self) -> None:
        self._last = time.monotonic()
        try:
            self.mlflow.collect_metrics()
            self.mlflow.publish_metrics(self.mlflow.aggregate_metrics())
            self.mlflow.mlflow_logger.flush()
        except Exception as e:  # the store is away: these samples are not worth an outbox
            log.debug("system metrics not logged: %s", reason(e))

    def finish(self) -> None:
        """The last sample, taken in the sampling thread as it stops."""
        self._stop.set()
        self._thread.join(timeout=FIRST_SAMPLE_S)  # a sample stuck on a hanging store is not waited for
