"""CPU, memory, disk and network (and GPU where pynvml finds one) samples for a run, taken
by MLflow's own monitors on the run's schedule and logged as host/* metrics."""

from __future__ import annotations

import logging
import threading
import time

from cifar_exp.errors import reason

log = logging.getLogger("cifar_exp")

# the first sample comes this soon, so even a short run has one from its start
FIRST_SAMPLE_S = 1.0
# MLflow's UI lists every system/* metric before the run's own (test/acc) in the run's
# metrics table and on its logged model: under host/ they follow them
PREFIX = "host/"


class SystemMetrics:
    """MLflow's own system monitors on the run's schedule. psutil reads CPU use as the share
    since its previous reading, so the first reading, taken the moment sampling starts,
    says 0 %: here that one only primes it. Samples follow FIRST_SAMPLE_S after the start,
    then every `every_s`, and a last one when the run ends, so a 5-second run has two true
    ones.

    The UI lists a run's metrics in the order the store first saw them, so samples are held
    (each with its own time) until `release()`, which the tracker calls once the run's
    first epoch is logged; a resumed run's keys are already in place."""

    def __init__(self, run_id: str, every_s: float, first_step: int, uri: str, released: bool):
        from mlflow import MlflowClient
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        self.monitors = SystemMetricsMonitor(run_id, sampling_interval=every_s, tracking_uri=uri).monitors
        self.client, self.run_id = MlflowClient(uri), run_id
        self.every_s, self.step = every_s, first_step
        self._held: list = []  # samples not yet logged, oldest first
        self._released = threading.Event()
        if released:
            self._released.set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="SystemMetrics")
        self._last = time.monotonic()

    def start(self) -> None:
        self._thread.start()

    def release(self) -> None:
        self._released.set()

    def _loop(self) -> None:
        # priming, in this thread (psutil keeps the previous reading per thread): its CPU
        # figure covers no time
        self._read()
        self._last = time.monotonic()
        wait = min(FIRST_SAMPLE_S, self.every_s)
        while not self._stop.wait(wait):
            self._sample()
            wait = self.every_s
        if time.monotonic() - self._last >= FIRST_SAMPLE_S / 2:  # a shorter span reads noise
            self._sample()
        self._released.set()  # the run is over: nothing is left to come first
        self._publish()

    def _read(self) -> dict[str, float]:
        """One reading of every monitor, averaged over what it collected since the last."""
        values: dict[str, float] = {}
        for monitor in self.monitors:
            try:
                monitor.collect_metrics()
                values.update(monitor.aggregate_metrics())
            finally:
                monitor.clear_metrics()
        return values

    def _sample(self) -> None:
        from mlflow.entities import Metric

        self._last = time.monotonic()
        try:
            values = self._read()
        except Exception as e:
            log.debug("system metrics not read: %s", reason(e))
            return
        ts = int(time.time() * 1000)
        self._held += [Metric(PREFIX + k, float(v), ts, self.step) for k, v in values.items()]
        self.step += 1
        self._publish()

    def _publish(self) -> None:
        if not self._held or not self._released.is_set():
            return
        try:
            self.client.log_batch(self.run_id, metrics=self._held, synchronous=True)
            self._held = []
        except Exception as e:  # the store is away: these samples are not worth an outbox
            self._held = []
            log.debug("system metrics not logged: %s", reason(e))

    def finish(self) -> None:
        """The last sample, taken in the sampling thread as it stops."""
        self._stop.set()
        self._thread.join(timeout=FIRST_SAMPLE_S)  # a sample stuck on a hanging store is not waited for
