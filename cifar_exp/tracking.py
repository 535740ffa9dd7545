"""The only module that knows MLflow. A run talks to a Tracker: params, tags, buffered
metrics, artifacts, and a final status. With tracking off, NullTracker does nothing."""

from __future__ import annotations

import os
import time
import traceback
from pathlib import Path
from typing import Optional

from omegaconf import DictConfig

DEFAULT_URI = "sqlite:///mlflow.db"
BATCH = 1000  # MLflow's limit of metrics per log_batch call
PARENT_RUN_ENV = "CIFAR_EXP_PARENT_RUN_ID"
EXPERIMENT_ENV = "CIFAR_EXP_EXPERIMENT_ID"


def tracking_uri(explicit: Optional[str]) -> str:
    """The one rule: the given URI, else $MLFLOW_TRACKING_URI, else MLflow's default store."""
    return explicit or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


class NullTracker:
    """Tracking switched off: every call is accepted and dropped."""

    run_id: Optional[str] = None

    def log_params(self, params: dict) -> None: ...
    def set_tags(self, tags: dict) -> None: ...
    def log_metrics(self, metrics: dict, step: int) -> None: ...
    def log_artifact(self, path: Path, artifact_path: Optional[str] = None) -> None: ...
    def log_model(self, model, example) -> None: ...
    def flush(self) -> None: ...
    def finish(self, status: str, error: Optional[BaseException] = None) -> None: ...


def client_for(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def ensure_experiment(client, name: str, attempts: int = 5) -> str:
    """The experiment's id, created if missing. Tolerates a concurrent creator, and retries
    while another process is still creating a fresh store's schema."""
    for attempt in range(attempts):
        try:
            exp = client.get_experiment_by_name(name)
            return exp.experiment_id if exp is not None else client.create_experiment(name)
        except Exception:
            if attempt == attempts - 1:
                raise
            time.sleep(0.5 * 2 ** attempt)
    raise AssertionError("unreachable")


class MlflowTracker:
    """One MLflow run. Metrics are buffered and written with log_batch at `flush()`, which
    the run calls at epoch ends, before every checkpoint and at the end, and which also runs
    by itself every `flush_every_s` seconds so the UI stays live during long epochs."""

    def __init__(self, cfg: DictConfig, run_id: Optional[str], run_name: str, tags: dict):
        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

        self.uri = tracking_uri(cfg.mlflow.tracking_uri)
        self.client = client_for(self.uri)
        self.flush_every_s = cfg.mlflow.flush_every_s
        self._buffer: list = []
        self._last_flush = time.monotonic()
        self.resumed = run_id is not None
        tags = {k: str(v) for k, v in tags.items()}  # the REST store takes strings only
        if run_id is None:
            exp_id = os.environ.get(EXPERIMENT_ENV) or ensure_experiment(self.client, cfg.mlflow.experiment_name)
            tags = {MLFLOW_RUN_NAME: run_name, **tags}
            if os.environ.get(PARENT_RUN_ENV):
                tags[MLFLOW_PARENT_RUN_ID] = os.environ[PARENT_RUN_ENV]
            run = self.client.create_run(exp_id, run_name=run_name, tags=tags)
            self.run_id = run.info.run_id
        else:
            self.run_id = run_id
            self.client.update_run(run_id, status="RUNNING")
            self.set_tags(tags)

    def log_params(self, params: dict) -> None:
        from mlflow.entities import Param, RunTag

        # Params are write-once in MLflow; on resume a changed safe key becomes a tag.
        existing = self.client.get_run(self.run_id).data.params if self.resumed else {}
        new = [Param(k, str(v)[:6000]) for k, v in params.items() if k not in existing]
        changed = [RunTag(f"resumed.{k}", str(v)) for k, v in params.items()
                   if k in existing and existing[k] != str(v)[:6000]]
        for i in range(0, len(new), 100):
            self.client.log_batch(self.run_id, params=new[i:i + 100])
        if changed:
            self.client.log_batch(self.run_id, tags=changed)

    def set_tags(self, tags: dict) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()])

    def log_metrics(self, metrics: dict, step: int) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        self._buffer.extend(Metric(k, float(v), ts, step) for k, v in metrics.items())
        if time.monotonic() - self._last_flush > self.flush_every_s:
            self.flush()

    def flush(self) -> None:
        while self._buffer:
            self.client.log_batch(self.run_id, metrics=self._buffer[:BATCH])
            del self._buffer[:BATCH]
        self._last_flush = time.monotonic()

    def log_artifact(self, path: Path, artifact_path: Optional[str] = None) -> None:
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        elif path.exists():
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_model(self, model, example) -> None:
        """The model in MLflow's pytorch flavor, exported with torch.export ("pt2"): loading
        it runs no pickled code. Requirements are given, not inferred, to skip the slow
        dependency-inference subprocess."""
        import mlflow
        import mlflow.pytorch
        import torch
        from mlflow.models import infer_signature

        model = model.eval()
        with torch.inference_mode():
            output = model(example)
        signature = infer_signature(example.cpu().numpy(), output.cpu().numpy())
        mlflow.set_tracking_uri(self.uri)
        mlflow.start_run(run_id=self.run_id)
        try:
            mlflow.pytorch.log_model(
                model, name="model", signature=signature, input_example=example.cpu().numpy(),
                serialization_format="pt2", pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
            )
        finally:
            mlflow.end_run(status="RUNNING")  # finish() sets the real final status

    def finish(self, status: str, error: Optional[BaseException] = None) -> None:
        if error is not None:
            text = "".join(traceback.format_exception(error))
            self.set_tags({"error": f"{type(error).__name__}: {error}"})
            self.client.log_text(self.run_id, text, "error.txt")
        self.flush()
        self.client.set_terminated(self.run_id, status)


def open_tracker(cfg: DictConfig, run_id: Optional[str], run_name: str, tags: dict):
    if not cfg.mlflow.enabled:
        return NullTracker()
    return MlflowTracker(cfg, run_id, run_name, tags)


def search_runs(uri: str, experiment: str, sort_by: str, ascending: bool, limit: int) -> list[dict]:
    """Runs of an experiment as plain dicts (id, name, status, params, metrics), best first."""
    client = client_for(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    order = f"metrics.`{sort_by}` {'ASC' if ascending else 'DESC'}"
    runs = client.search_runs([exp.experiment_id], order_by=[order], max_results=limit)
    return [{"run_id": r.info.run_id, "name": r.info.run_name, "status": r.info.status,
             "start_time": r.info.start_time, "params": r.data.params, "metrics": r.data.metrics}
            for r in runs]


# --- sweeps -------------------------------------------------------------------------------------
def start_parent(uri: str, experiment: str, name: str, params: dict, tags: dict) -> tuple[str, str]:
    """Prepare the store and experiment once, before jobs start, and open the sweep's run."""
    from mlflow.entities import Param
    from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME

    client = client_for(uri)
    exp_id = ensure_experiment(client, experiment)
    run = client.create_run(exp_id, run_name=name, tags={MLFLOW_RUN_NAME: name, **{k: str(v) for k, v in tags.items()}})
    if params:
        client.log_batch(run.info.run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
    return exp_id, run.info.run_id


def child_runs(uri: str, experiment_id: str, parent_id: str) -> list[dict]:
    client = client_for(uri)
    runs = client.search_runs([experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'",
                              max_results=10000)
    return [{"run_id": r.info.run_id, "name": r.info.run_name, "status": r.info.status,
             "tags": r.data.tags, "metrics": r.data.metrics} for r in runs]


def finish_parent(uri: str, parent_id: str, status: str, metrics: dict, tags: dict, files: list[Path]) -> None:
    from mlflow.entities import Metric, RunTag

    client = client_for(uri)
    ts = int(time.time() * 1000)
    client.log_batch(parent_id, metrics=[Metric(k, float(v), ts, 0) for k, v in metrics.items()],
                     tags=[RunTag(k, str(v)) for k, v in tags.items()])
    for f in files:
        client.log_artifact(parent_id, str(f))
    client.set_terminated(parent_id, status)
