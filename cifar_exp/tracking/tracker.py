"""A run's tracker: params, tags, buffered metrics, artifacts, the model, system metrics and
a final status, every write through the outbox. With tracking off, NullTracker."""

from __future__ import annotations

import contextlib
import logging
import os
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Protocol

from cifar_exp.config import Config
from cifar_exp.errors import UserError, reason
from cifar_exp.metrics import EPOCH
from cifar_exp.tracking.keys import DESCRIPTION_TAG, MAX_PARAM_VALUE, MAX_TAG_VALUE, cut, rounded, valid_keys
from cifar_exp.tracking.outbox import OUTBOX, RETRY_S, Outbox, deliver_command
from cifar_exp.tracking.store import PARENT_RUN_ENV, open_store, tracking_uri, ui_line
from cifar_exp.tracking.system_metrics import PREFIX as HOST_PREFIX
from cifar_exp.tracking.system_metrics import SystemMetrics

log = logging.getLogger("cifar_exp")


@dataclass
class ModelCard:
    """What the logged model says about itself: its name, its description (markdown), its
    metadata (plain values a client reads from the model's MLmodel file, the dataset its
    test metrics were measured on among them), and the step it is the model of: MLflow
    links the run's metrics at that step (the final epoch's record) to it."""

    name: str
    description: str
    metadata: dict
    step: int


class Tracker(Protocol):
    """What a run uses of its tracker: MlflowTracker, or NullTracker with tracking off. The
    bodies here accept every call and drop it, which is all NullTracker does."""

    run_id: Optional[str]
    resumed: bool
    was_cut_short: bool
    recorded_tags: Optional[dict]

    def log_params(self, params: dict) -> None:
        return None

    def set_tags(self, tags: dict) -> None:
        return None

    def rename(self, name: str) -> None:
        return None

    def cut_short(self, label: str, tags: dict) -> None:
        return None

    def stop(self) -> None:
        return None

    def log_metrics(self, metrics: dict, step: int) -> None:
        return None

    def log_artifact(self, path: Path, artifact_path: Optional[str] = None) -> None:
        return None

    def log_inputs(self, inputs: list[dict]) -> None:
        return None

    def log_model(self, model, example, card: ModelCard) -> None:
        return None

    def flush(self) -> None:
        return None

    def finish(self, status: str, error: Optional[BaseException] = None) -> None:
        return None


class NullTracker(Tracker):
    """Tracking switched off: every call is accepted and dropped (the protocol's own bodies)."""

    run_id: Optional[str] = None
    resumed = was_cut_short = False
    recorded_tags: Optional[dict] = {}


class MlflowTracker:
    """One MLflow run. Metrics are buffered and queued with the other writes; `flush()`
    delivers the queue. The run calls it at epoch ends, before every checkpoint and at the
    end, and it runs by itself every `flush_every_s` seconds so the UI stays live."""

    def __init__(
        self,
        cfg: Config,
        run_id: Optional[str],
        run_name: str,
        tags: dict,
        run_dir: Optional[Path] = None,
        store: Optional[tuple] = None,
    ):
        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

        self.uri = tracking_uri(cfg.mlflow.tracking_uri)
        self.client, exp_id = store or open_store(cfg)
        self.experiment_id = exp_id
        self.flush_every_s = cfg.mlflow.flush_every_s
        self.finish_retry_s = cfg.mlflow.finish_retry_s
        self.registered_model_name = cfg.mlflow.registered_model_name
        self._buffer: list = []
        self._last_flush = time.monotonic()
        self._failures, self._retry_at = 0, 0.0
        self._epoch_logged = False
        self._monitor: Optional[SystemMetrics] = None  # the monitor starts once the store is reached
        tags = cut(valid_keys(tags, "tag"), MAX_TAG_VALUE, "tag")  # the REST store takes strings only
        self.recorded_tags = self._recorded_tags(run_id) if run_id is not None else None
        self.resumed = self.recorded_tags is not None
        self.name, self.was_cut_short, self.stopping = run_name, False, False
        if self.resumed and run_id is not None:
            self.run_id: str = run_id
            self.client.update_run(run_id, status="RUNNING")
        else:
            if run_id is not None:
                log.warning(
                    "the checkpoint's MLflow run %s is not in %s: this segment is logged as a new "
                    "run, tagged cifar_exp.resumed_from_run=%s",
                    run_id,
                    self.uri,
                    run_id,
                )
                tags["cifar_exp.resumed_from_run"] = run_id
            tags = {MLFLOW_RUN_NAME: run_name, **tags}
            if os.environ.get(PARENT_RUN_ENV):
                tags[MLFLOW_PARENT_RUN_ID] = os.environ[PARENT_RUN_ENV]
            self.run_id = self.client.create_run(exp_id, run_name=run_name, tags=tags).info.run_id
        path = Path(run_dir) / OUTBOX if run_dir is not None else None
        self.outbox = Outbox(path, self.uri, self.run_id)
        if self.resumed:
            self._take_over(path)
            self.set_tags(tags)
        # (key -> last step) already in the store: a resume never logs a step twice
        self._logged_until = self._last_steps() if self.resumed else {}
        self._said_held = False
        self._monitor = self._system_metrics(cfg.mlflow.system_metrics_every_s)

    def _system_metrics(self, every_s: float):
        """MLflow's own monitors (CPU, memory, disk, network; GPU where pynvml finds one),
        continuing a resumed run's series, sampled at the run's start and end too."""
        if every_s <= 0:
            return None
        logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)  # its start/stop chatter
        steps = [s for k, s in self._logged_until.items() if k.startswith(HOST_PREFIX)]
        monitor = SystemMetrics(self.run_id, every_s, max(steps, default=-1) + 1, self.uri, released=self.resumed)
        monitor.start()
        return monitor

    def _recorded_tags(self, run_id: str) -> Optional[dict]:
        """The tags of a run being resumed; None when the store does not have it."""
        try:
            return dict(self.client.get_run(run_id).data.tags)
        except Exception:
            return None

    def _take_over(self, path: Optional[Path]) -> None:
        """Writes an earlier segment could not deliver go first: those that are valid writes
        of this run from its run dir; the rest are set aside in one line."""
        if path is None or not path.is_file():
            return
        try:
            earlier, refusals = Outbox.read(path, self.uri)
        except UserError as e:
            earlier, refusals = Outbox(path, self.uri, self.run_id), [str(e)]
        if earlier.run_id != self.run_id:
            earlier.ops, refusals = [], [f"all of it: it is for run {earlier.run_id}"]
        if refusals:
            earlier.set_aside(refusals, path)
        self.outbox.ops = earlier.ops
        if earlier.ops:
            log.info("delivering %d writes an earlier segment kept in %s", len(earlier.ops), path)
        self.flush()

    def _last_steps(self) -> dict[str, int]:
        keys = self.client.get_run(self.run_id).data.metrics
        return {k: max(m.step for m in self.client.get_metric_history(self.run_id, k)) for k in keys}

    def _queue(self, op: dict) -> None:
        self._queue_metrics()
        self.outbox.ops.append(op)

    def _queue_metrics(self) -> None:
        if self._buffer:
            self.outbox.ops.append({"op": "metrics", "items": self._buffer})
            self._buffer = []

    def log_params(self, params: dict) -> None:
        """Params are write-once in MLflow: a resume logs only those the run does not have
        (what it may change is logged as tags, which a resume updates)."""
        existing = self.client.get_run(self.run_id).data.params if self.resumed else {}
        new = {k: v for k, v in valid_keys(params, "param").items() if k not in existing}
        values = cut(new, MAX_PARAM_VALUE, "param")
        self._queue({"op": "params", "items": values})
        self.flush()

    def rename(self, name: str) -> None:
        self.name = name
        self._queue({"op": "name", "name": name})
        self.flush()

    def stop(self) -> None:
        """The run is stopping (a signal): from now on a store that has failed is not tried
        again, so the stop is heard within seconds whatever the store does."""
        self.stopping = True

    def cut_short(self, label: str, tags: dict) -> None:
        """The run stops before its planned end by a decision, not a fault (a pruned trial):
        its name leads with `label` and it ends KILLED, so the runs table shows it."""
        self.was_cut_short = True
        self.set_tags(tags)
        self.rename(f"[{label}] {self.name}")

    def set_tags(self, tags: dict) -> None:
        self._queue({"op": "tags", "items": cut(valid_keys(tags, "tag"), MAX_TAG_VALUE, "tag")})
        self.flush()

    def log_metrics(self, metrics: dict, step: int) -> None:
        ts = int(time.time() * 1000)
        valid = valid_keys(metrics, "metric")
        points = [[k, rounded(v), ts, step] for k, v in valid.items() if step > self._logged_until.get(k, -1)]
        if len(points) < len(valid) and not self._said_held:
            self._said_held = True
            log.info(
                "the MLflow run already holds step %d of %s (logged before the checkpoint this run resumed "
                "from was written): such points are not logged twice",
                step,
                ", ".join(sorted(set(valid) - {p[0] for p in points})[:3]),
            )
        self._buffer.extend(points)
        self._epoch_logged = self._epoch_logged or EPOCH in valid
        if time.monotonic() - self._last_flush > self.flush_every_s:
            self.flush()

    def log_artifact(self, path: Path, artifact_path: Optional[str] = None) -> None:
        self._queue({"op": "artifact", "path": str(Path(path).resolve()), "dest": artifact_path})
        self.flush()

    def log_inputs(self, inputs: list[dict]) -> None:
        """The run's datasets (name, digest, source, profile, context) in MLflow's lineage."""
        self._queue({"op": "inputs", "items": inputs})
        self.flush()

    def flush(self) -> bool:
        """Deliver what is queued, unless an outage's backoff says wait; while anything is
        pending it is saved in the run dir. True when nothing is pending."""
        self._queue_metrics()
        self._last_flush = time.monotonic()
        # a run that is stopping does not wait on a store that already failed it: the outbox
        waiting = self._failures and self.stopping
        if self.outbox.ops and time.monotonic() >= self._retry_at and not waiting:
            try:
                self.outbox.deliver(self.client)
            except Exception as e:
                self._failures += 1
                wait = RETRY_S[min(self._failures, len(RETRY_S)) - 1]
                self._retry_at = time.monotonic() + wait
                if self._failures == 1:
                    log.warning(
                        "warning: the MLflow store %s does not take writes (%s); training goes on and "
                        "%d writes wait for it (next try in %d s)",
                        self.uri,
                        reason(e),
                        len(self.outbox.ops),
                        wait,
                    )
            else:
                if self._failures:
                    log.info("the MLflow store %s is back: everything is delivered", self.uri)
                self._failures, self._retry_at = 0, 0.0
                if self._epoch_logged and self._monitor is not None:
                    self._monitor.release()  # the run's own metrics are in: host/* follow them
        if self.outbox.ops:
            self.outbox.save()
        else:
            self.outbox.clear()
        return not self.outbox.ops

    def log_model(self, model, example, card: ModelCard) -> None:
        """The model in MLflow's pytorch flavor, exported with torch.export ("pt2"): loading
        it runs no pickled code. Requirements are given, not inferred, to skip the slow
        dependency-inference subprocess. It carries the card's description and metadata,
        MLflow links the run's metrics at the card's step to it (the same points again,
        with the model's id: the run's series do not grow), and it is registered when
        mlflow.registered_model_name is set. Skipped with a warning while the store is
        away: the checkpoint holds the same weights."""
        if not self.flush():
            log.warning(
                "warning: the model is not logged to MLflow (the store is unreachable); the checkpoint holds it"
            )
            return
        import mlflow
        import mlflow.pytorch
        import torch
        from mlflow.models import infer_signature

        # torch.export's archive writer takes channels_last weights for slices of a larger
        # tensor (and warns): the served model gets the standard layout
        model = model.to(memory_format=torch.contiguous_format).eval()
        with torch.inference_mode():
            output = model(example)
        signature = infer_signature(example.numpy(), output.numpy())
        mlflow.set_tracking_uri(self.uri)
        mlflow.start_run(run_id=self.run_id)
        try:
            info = mlflow.pytorch.log_model(
                model,
                name=card.name,
                signature=signature,
                metadata=card.metadata,
                step=card.step,
                input_example=example.numpy(),
                serialization_format="pt2",
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
                registered_model_name=self.registered_model_name,
            )
            self.client.set_logged_model_tags(info.model_id, {DESCRIPTION_TAG: card.description})
        except Exception as e:
            log.warning("warning: the model is not logged to MLflow (%s); the checkpoint holds it", reason(e))
        finally:
            with contextlib.suppress(Exception):
                mlflow.end_run(status="RUNNING")  # finish() sets the real final status

    def finish(self, status: str, error: Optional[BaseException] = None) -> None:
        if error is not None:
            self._queue({"op": "tags", "items": {"error": f"{type(error).__name__}: {error}"[:MAX_TAG_VALUE]}})
            self._queue({"op": "text", "text": "".join(traceback.format_exception(error)), "file": "error.txt"})
        elif status == "FINISHED" and self.resumed:
            self._queue({"op": "delete_tag", "key": "error"})  # an earlier segment's failure is over
        if self._monitor is not None:
            self._monitor.finish()
        self._queue({"op": "status", "status": status})
        # a stopped run is waited on by whoever stopped it: one try, then the outbox
        deadline = time.monotonic() + (0 if status == "KILLED" else self.finish_retry_s)
        while not self.flush() and time.monotonic() < deadline:
            time.sleep(max(0.0, min(self._retry_at, deadline) - time.monotonic()))
            self._retry_at = 0.0
        if not self.outbox.ops:
            log.info(ui_line(self.uri, self.experiment_id, self.run_id))
        else:
            log.warning(
                "warning: the MLflow store %s is still unreachable: %d writes (the final status "
                "%s among them) are kept in %s; deliver them with: %s",
                self.uri,
                len(self.outbox.ops),
                status,
                self.outbox.path,
                deliver_command(self.outbox.path.parent if self.outbox.path else Path(), self.uri),
            )


def open_tracker(
    cfg: Config, run_id: Optional[str], run_name: str, tags: dict, run_dir: Path, store: Optional[tuple] = None
):
    if not cfg.mlflow.enabled:
        if run_id is not None:
            log.info(
                "tracking is off for this segment (mlflow.enabled=false); the checkpoint keeps "
                "its MLflow run %s for a later resume",
                run_id,
            )
        return NullTracker()
    return MlflowTracker(cfg, run_id, run_name, tags, run_dir, store)
