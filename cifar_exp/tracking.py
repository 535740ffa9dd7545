"""The only module that knows MLflow. A run talks to a Tracker: params, tags, buffered
metrics, artifacts, and a final status. With tracking off, NullTracker does nothing.

Tracking trouble never stops training: the store is checked once at the start (a server
that does not answer, an unusable SQLite file: one line, before any work), and after that
every write goes through an outbox. Writes the store does not take are kept in order,
retried with backoff, saved in the run dir at every checkpoint while any are pending, and
delivered by a resume or by `python -m cifar_exp.runs --deliver <run dir>`."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import threading
import time
import traceback
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator, Optional

from omegaconf import DictConfig

from cifar_exp.errors import UserError, reason

log = logging.getLogger("cifar_exp")

DEFAULT_URI = "sqlite:///mlflow.db"
BATCH = 1000  # MLflow's limit of metrics per log_batch call
PARENT_RUN_ENV = "CIFAR_EXP_PARENT_RUN_ID"
EXPERIMENT_ENV = "CIFAR_EXP_EXPERIMENT_ID"
OUTBOX = "mlflow_outbox.json"
# MLflow's HTTP client retries a call for minutes by default; a run retries on its own
# schedule instead (RETRY_S), so one call gives up within seconds.
# Each call is bounded (a server that hangs costs one timeout, and a stop request is heard
# within seconds); MLflow's own retries are off, since the outbox retries.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
}
RETRY_S = (5, 10, 20, 40, 80, 120)  # waits between delivery attempts during an outage
FINISH_RETRY_S = 20  # how long the end of a run keeps trying before it saves the outbox
PROBE_TIMEOUT_S = 5
# MLflow 3 opens an experiment in its GenAI view unless this tag says it holds model training
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
# the first system metrics sample comes this soon, so even a short run has one from its start
FIRST_SAMPLE_S = 1.0


def tracking_uri(explicit: Optional[str]) -> str:
    """The one rule: the given URI, else $MLFLOW_TRACKING_URI, else MLflow's default store."""
    return explicit or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def rounded(key: str, value: float) -> float:
    """A metric as precise as what it measures: times to the millisecond, everything else to
    float32's 7 significant digits (0.06603612, not 0.06603612005710602)."""
    value = float(value)
    if key.endswith("_s"):
        return round(value, 3)
    return float(f"{value:.7g}")


# MLflow's rules for metric, param and tag keys: these characters, at most 250 of them, and
# nothing a file path would read differently ("a//b", "./a", "a/")
KEY_CHARS = re.compile(r"[^/\w.\- :]")
MAX_KEY = 250


def valid_key(key: str) -> str:
    """`key` as MLflow takes it: other characters become _, empty and dot-only path parts
    go, and it is cut to MAX_KEY. A valid key comes back unchanged."""
    parts = [p if p.strip(".") else p.replace(".", "_") for p in KEY_CHARS.sub("_", str(key)).split("/") if p]
    return "/".join(parts)[:MAX_KEY].rstrip("/") or "_"


def _valid_keys(items: dict, what: str) -> dict:
    """The items with valid keys; each renamed one is said once, by its original name."""
    out = {}
    for key, value in items.items():
        fixed = valid_key(key)
        if fixed != key and (what, key) not in _RENAMED:
            _RENAMED.add((what, key))
            log.warning("warning: MLflow does not take the %s key %r: it is logged as %r", what, key, fixed)
        out[fixed] = value
    return out


_RENAMED: set = set()


def refused(e: BaseException) -> bool:
    """Whether the store answered and said no (a bad key or value, a missing run): trying
    again cannot help. No answer, a 5xx or a locked database is an outage instead."""
    from mlflow.exceptions import MlflowException

    if not isinstance(e, MlflowException):
        return False
    status = e.get_http_status_code()
    return 400 <= status < 500 and status != 429


class NullTracker:
    """Tracking switched off: every call is accepted and dropped."""

    run_id: Optional[str] = None
    resumed = was_cut_short = False
    recorded_tags: dict = {}

    def log_params(self, params: dict) -> None: ...
    def set_tags(self, tags: dict) -> None: ...
    def rename(self, name: str) -> None: ...
    def cut_short(self, label: str, tags: dict) -> None: ...
    def stop(self) -> None: ...
    def log_metrics(self, metrics: dict, step: int) -> None: ...
    def log_artifact(self, path: Path, artifact_path: Optional[str] = None) -> None: ...
    def log_inputs(self, inputs: list[dict]) -> None: ...
    def log_model(self, model, example, name: str, metric_keys) -> None: ...
    def flush(self) -> None: ...
    def finish(self, status: str, error: Optional[BaseException] = None) -> None: ...


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


def client_for(uri: str):
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    for chatty in ("alembic", "mlflow.store.db.utils"):  # a fresh SQLite store's INFO lines
        logging.getLogger(chatty).setLevel(logging.WARNING)
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _probe(uri: str) -> None:
    """One short request to the tracking API itself (a server can answer /health and hang
    on its API): a tracking server that does not answer is a user error now, not minutes of
    retries later. Any HTTP answer counts, a 404 for the missing experiment included."""
    url = f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/get-by-name?experiment_name=Default"
    try:
        urllib.request.urlopen(url, timeout=PROBE_TIMEOUT_S).close()
    except urllib.error.HTTPError:
        return  # it answered
    except (OSError, ValueError) as e:
        why = getattr(e, "reason", None) or e
        raise UserError(
            f"the MLflow tracking server {uri} does not answer ({why}); start it, point "
            f"mlflow.tracking_uri (or MLFLOW_TRACKING_URI) at a running one, or set "
            f"mlflow.enabled=false"
        ) from None


def _sqlite_file(uri: str) -> Optional[Path]:
    """The database file of a sqlite:/// URI; None for any other store."""
    return Path(uri[len("sqlite:///") :].split("?")[0]) if uri.startswith("sqlite:///") else None


@contextlib.contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """Processes that open a fresh SQLite store at once take turns: MLflow creates the schema
    on first use and concurrent creators fail half-way."""
    db = _sqlite_file(uri)
    if db is None:
        yield
        return
    import fcntl
    import hashlib
    import tempfile

    # beside the other processes of this machine (all a SQLite file can serve), not in the
    # user's launch directory
    key = hashlib.sha256(str(db.resolve()).encode()).hexdigest()[:16]
    with open(Path(tempfile.gettempdir()) / f"cifar_exp-store-{key}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def open_store(cfg: DictConfig) -> tuple:
    """A run's store: a client and its experiment's id (a sweep's jobs get the sweep's)."""
    if os.environ.get(EXPERIMENT_ENV):
        return connect(tracking_uri(cfg.mlflow.tracking_uri))[0], os.environ[EXPERIMENT_ENV]
    return connect(tracking_uri(cfg.mlflow.tracking_uri), cfg.mlflow.experiment_name)


def connect(uri: str, experiment: Optional[str] = None):
    """A client of a reachable, initialised store, and the experiment's id (created if
    missing) when one is named. Any problem is one UserError naming the store."""
    if uri.startswith(("http://", "https://")):
        _probe(uri)
    try:
        with _store_lock(uri):
            client = client_for(uri)
            client.search_experiments(max_results=1)  # creates or upgrades a SQLite schema
            exp_id = ensure_experiment(client, experiment) if experiment else None
    except UserError:
        raise
    except Exception as e:  # an unwritable path, a damaged file, a refusing server
        raise UserError(
            f"cannot use the MLflow store {uri}: {reason(e)}; fix it, point mlflow.tracking_uri "
            f"(or MLFLOW_TRACKING_URI) elsewhere, or set mlflow.enabled=false"
        ) from None
    return client, exp_id


def ensure_experiment(client, name: str, attempts: int = 5) -> str:
    """The experiment's id, created if missing, and marked as model training when it has no
    kind yet (a kind someone chose is left alone). Tolerates a concurrent creator."""
    ((kind, value),) = EXPERIMENT_KIND.items()
    for attempt in range(attempts):
        try:
            exp = client.get_experiment_by_name(name)
            if exp is None:
                return client.create_experiment(name, tags=EXPERIMENT_KIND)
            if exp.lifecycle_stage == "deleted":  # MLflow takes no new runs into it
                raise UserError(
                    f"the MLflow experiment {name!r} is deleted; restore it (mlflow experiments restore "
                    f"--experiment-id {exp.experiment_id}) or name another with mlflow.experiment_name"
                )
            if kind not in exp.tags:
                client.set_experiment_tag(exp.experiment_id, kind, value)
            return exp.experiment_id
        except UserError:
            raise
        except Exception:
            if attempt == attempts - 1:
                raise
            time.sleep(0.5 * 2**attempt)
    raise AssertionError("unreachable")


# --- the outbox -----------------------------------------------------------------------------------
def _deliver(client, run_id: str, op: dict) -> None:
    """Write one queued operation to the store."""
    from mlflow.entities import Metric, Param, RunTag

    kind = op["op"]
    if kind == "metrics":
        for i in range(0, len(op["items"]), BATCH):
            client.log_batch(run_id, metrics=[Metric(*m) for m in op["items"][i : i + BATCH]])
    elif kind == "params":
        items = list(op["items"].items())
        for i in range(0, len(items), 100):
            client.log_batch(run_id, params=[Param(k, v) for k, v in items[i : i + 100]])
    elif kind == "tags":
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in op["items"].items()])
    elif kind == "delete_tag":
        if op["key"] in client.get_run(run_id).data.tags:
            client.delete_tag(run_id, op["key"])
    elif kind == "artifact":
        path = Path(op["path"])
        if path.is_dir():
            client.log_artifacts(run_id, str(path), op["dest"])
        elif path.exists():
            client.log_artifact(run_id, str(path), op["dest"])
    elif kind == "text":
        client.log_text(run_id, op["text"], op["file"])
    elif kind == "inputs":
        client.log_inputs(run_id, datasets=[_dataset_input(i) for i in op["items"]])
    elif kind == "name":
        client.update_run(run_id, name=op["name"])
    elif kind == "status":
        client.set_terminated(run_id, op["status"])


def _split(op: dict) -> list[dict]:
    """A batch as one op per item, so a refused item does not take the others with it;
    [] for an op that is one write already."""
    items = op.get("items")
    if op["op"] not in ("metrics", "params", "tags") or len(items) < 2:
        return []
    if op["op"] == "metrics":
        return [{"op": "metrics", "items": [m]} for m in items]
    return [{"op": op["op"], "items": {k: v}} for k, v in items.items()]


def _describe(op: dict) -> str:
    items = op.get("items")
    if isinstance(items, dict):
        return f"{op['op'][:-1]} {next(iter(items))!r}"
    if isinstance(items, list) and op["op"] == "metrics":
        return f"metric {items[0][0]!r} at step {items[0][3]}"
    return f"the {op['op']} write"


def _dataset_input(item: dict):
    from mlflow.entities import Dataset, DatasetInput, InputTag

    dataset = Dataset(
        item["name"],
        item["digest"],
        item["source_type"],
        json.dumps({"uri": item["source"]}),
        profile=json.dumps(item["profile"]),
    )
    return DatasetInput(dataset, tags=[InputTag("mlflow.data.context", item["context"])])


class Outbox:
    """Writes not yet in the store, in order. While any are pending they are also kept in a
    file of the run dir, so neither an outage nor a killed process loses them."""

    def __init__(self, path: Optional[Path], uri: str, run_id: str):
        self.path, self.uri, self.run_id = path, uri, run_id
        self.ops: list[dict] = []

    @classmethod
    def read(cls, path: Path) -> Outbox:
        try:
            data = json.loads(Path(path).read_text())
            box = cls(Path(path), data["uri"], data["run_id"])
            box.ops = list(data["ops"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UserError(f"cannot read the MLflow outbox {path}: {reason(e)}") from None
        return box

    def save(self) -> None:
        if self.path is None:
            return
        from cifar_exp.checkpoint import atomic_write_text

        atomic_write_text(json.dumps({"uri": self.uri, "run_id": self.run_id, "ops": self.ops}), self.path)

    def clear(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)

    def deliver(self, client) -> None:
        """Deliver in order. A write the store refuses is said and dropped (a batch is
        first retried item by item, so only the refused item goes); on an outage the
        undelivered rest stays queued and it raises. A run the store does not have (deleted
        meanwhile) takes none of them: they are dropped together, in one line."""
        while self.ops:
            try:
                _deliver(client, self.run_id, self.ops[0])
            except Exception as e:
                if not refused(e):
                    raise
                if getattr(e, "error_code", None) == "RESOURCE_DOES_NOT_EXIST" and not self._run_exists(client):
                    log.warning(
                        "warning: the MLflow store has no run %s (deleted?): its %d queued writes are dropped",
                        self.run_id,
                        len(self.ops),
                    )
                    self.ops.clear()
                    return
                parts = _split(self.ops[0])
                if parts:
                    self.ops[0:1] = parts
                    continue
                log.warning(
                    "warning: the MLflow store refused %s (%s): dropped, the rest is delivered",
                    _describe(self.ops[0]),
                    reason(e),
                )
            del self.ops[0]

    def _run_exists(self, client) -> bool:
        try:
            client.get_run(self.run_id)
            return True
        except Exception as e:
            return not refused(e)  # an outage now: it may well be there


def deliver_outbox(run_dir: Path) -> str:
    """`python -m cifar_exp.runs --deliver <run dir>`: hand over what a run could not."""
    path = Path(run_dir) / OUTBOX if Path(run_dir).is_dir() else Path(run_dir)
    if not path.is_file():
        raise UserError(f"no MLflow outbox at {path}: nothing to deliver")
    box = Outbox.read(path)
    count = len(box.ops)
    client, _ = connect(box.uri)
    try:
        box.deliver(client)
    except Exception as e:
        box.save()
        raise UserError(
            f"delivery to {box.uri} stopped ({reason(e)}); {len(box.ops)} of {count} writes remain in {path}"
        ) from None
    box.clear()
    return f"delivered {count} writes to run {box.run_id} at {box.uri}"


class MlflowTracker:
    """One MLflow run. Metrics are buffered and queued with the other writes; `flush()`
    delivers the queue. The run calls it at epoch ends, before every checkpoint and at the
    end, and it runs by itself every `flush_every_s` seconds so the UI stays live."""

    def __init__(
        self,
        cfg: DictConfig,
        run_id: Optional[str],
        run_name: str,
        tags: dict,
        run_dir: Optional[Path] = None,
        store: Optional[tuple] = None,
    ):
        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

        self.uri = tracking_uri(cfg.mlflow.tracking_uri)
        self.client, exp_id = store or open_store(cfg)
        self.flush_every_s = cfg.mlflow.flush_every_s
        self.registered_model_name = cfg.mlflow.registered_model_name
        self._buffer: list = []
        self._latest: dict[str, list] = {}  # key -> its newest point, to link to the logged model
        self._last_flush = time.monotonic()
        self._failures, self._retry_at = 0, 0.0
        tags = _valid_keys({k: str(v)[:5000] for k, v in tags.items()}, "tag")  # the REST store takes strings only
        self.recorded_tags = self._recorded_tags(run_id) if run_id is not None else None
        self.resumed = self.recorded_tags is not None
        self.name, self.was_cut_short, self.stopping = run_name, False, False
        if self.resumed:
            self.run_id = run_id
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
        self._monitor = self._system_metrics(cfg.mlflow.system_metrics_every_s)

    def _system_metrics(self, every_s: float):
        """MLflow's own monitors (CPU, memory, disk, network; GPU where pynvml finds one),
        continuing a resumed run's series, sampled at the run's start and end too."""
        if every_s <= 0:
            return None
        logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)  # its start/stop chatter
        monitor = SystemMetrics(self.run_id, every_s, self.resumed, self.uri)
        monitor.start()
        return monitor

    def _recorded_tags(self, run_id: str) -> Optional[dict]:
        """The tags of a run being resumed; None when the store does not have it."""
        try:
            return dict(self.client.get_run(run_id).data.tags)
        except Exception:
            return None

    def _take_over(self, path: Optional[Path]) -> None:
        """Writes an earlier segment could not deliver go first."""
        if path is not None and path.is_file():
            earlier = Outbox.read(path)
            if earlier.run_id == self.run_id:
                self.outbox.ops = earlier.ops
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
        values = {k: str(v)[:6000] for k, v in _valid_keys(params, "param").items() if k not in existing}
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
        self._queue({"op": "tags", "items": {k: str(v)[:5000] for k, v in _valid_keys(tags, "tag").items()}})
        self.flush()

    def log_metrics(self, metrics: dict, step: int) -> None:
        ts = int(time.time() * 1000)
        points = [
            [k, rounded(k, v), ts, step]
            for k, v in _valid_keys(metrics, "metric").items()
            if step > self._logged_until.get(k, -1)
        ]
        self._buffer.extend(points)
        self._latest.update((p[0], p) for p in points)
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
        if self.outbox.ops:
            self.outbox.save()
        else:
            self.outbox.clear()
        return not self.outbox.ops

    def log_model(self, model, example, name: str, metric_keys) -> None:
        """The model in MLflow's pytorch flavor, exported with torch.export ("pt2"): loading
        it runs no pickled code. Requirements are given, not inferred, to skip the slow
        dependency-inference subprocess. The run's final `metric_keys` are linked to it
        (the same points again, with the model's id: the run's series do not grow), and
        it is registered when mlflow.registered_model_name is set. Skipped with a warning
        while the store is away: the checkpoint holds the same weights."""
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
        signature = infer_signature(example.cpu().numpy(), output.cpu().numpy())
        mlflow.set_tracking_uri(self.uri)
        mlflow.start_run(run_id=self.run_id)
        try:
            info = mlflow.pytorch.log_model(
                model,
                name=name,
                signature=signature,
                input_example=example.cpu().numpy(),
                serialization_format="pt2",
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
                registered_model_name=self.registered_model_name,
            )
            linked = [[*self._latest[k], info.model_id] for k in metric_keys if k in self._latest]
            self._queue({"op": "metrics", "items": linked})
            self.flush()
        except Exception as e:
            log.warning("warning: the model is not logged to MLflow (%s); the checkpoint holds it", reason(e))
        finally:
            with contextlib.suppress(Exception):
                mlflow.end_run(status="RUNNING")  # finish() sets the real final status

    def finish(self, status: str, error: Optional[BaseException] = None) -> None:
        if error is not None:
            self._queue({"op": "tags", "items": {"error": f"{type(error).__name__}: {error}"[:5000]}})
            self._queue({"op": "text", "text": "".join(traceback.format_exception(error)), "file": "error.txt"})
        elif status == "FINISHED" and self.resumed:
            self._queue({"op": "delete_tag", "key": "error"})  # an earlier segment's failure is over
        if self._monitor is not None:
            self._monitor.finish()
        self._queue({"op": "status", "status": status})
        # a stopped run is waited on by whoever stopped it: one try, then the outbox
        deadline = time.monotonic() + (0 if status == "KILLED" else FINISH_RETRY_S)
        while not self.flush() and time.monotonic() < deadline:
            time.sleep(max(0.0, min(self._retry_at, deadline) - time.monotonic()))
            self._retry_at = 0.0
        if self.outbox.ops:
            log.warning(
                "warning: the MLflow store %s is still unreachable: %d writes (the final status "
                "%s among them) are kept in %s; deliver them with: python -m cifar_exp.runs "
                "--deliver %s",
                self.uri,
                len(self.outbox.ops),
                status,
                self.outbox.path,
                self.outbox.path.parent if self.outbox.path else "",
            )


def open_tracker(
    cfg: DictConfig, run_id: Optional[str], run_name: str, tags: dict, run_dir: Path, store: Optional[tuple] = None
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


def search_runs(uri: str, experiment: str, sort_by: str, ascending: bool, limit: int) -> list[dict]:
    """Runs of an experiment as plain dicts (id, name, status, params, metrics), best first.
    Reading never creates a store: a SQLite file that is not there is a UserError."""
    db = _sqlite_file(uri)
    if db is not None and not db.is_file():
        raise UserError(f"no MLflow store at {uri} (run this where you launched the runs, or give --tracking-uri)")
    client, _ = connect(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    order = f"metrics.`{sort_by}` {'ASC' if ascending else 'DESC'}"
    runs = client.search_runs([exp.experiment_id], order_by=[order], max_results=limit)
    return [
        {
            "run_id": r.info.run_id,
            "name": r.info.run_name,
            "status": r.info.status,
            "start_time": r.info.start_time,
            "params": r.data.params,
            "metrics": r.data.metrics,
            "tags": r.data.tags,
        }
        for r in runs
    ]


# --- sweeps -------------------------------------------------------------------------------------
SUPERSEDED_TAG = "cifar_exp.superseded"
PRUNED_TAG = ("optuna.state", "PRUNED")
BEST_TAG, BEST_MARK = "cifar_exp.best", "[best] "


def start_parent(
    uri: str, experiment: str, name: str, params: dict, tags: dict, reuse_tag: Optional[str] = None
) -> tuple[str, str]:
    """Prepare the store and experiment once, before jobs start, and open the sweep's run.
    With `reuse_tag` (a key in `tags`, its value free of quotes), a parent run carrying the same value is reopened
    instead (a resumed search): its children that a killed or stopped sweep left RUNNING
    or KILLED end KILLED, tagged as superseded, since their trials run again."""
    from mlflow.entities import Param
    from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME

    client, exp_id = connect(uri, experiment)
    tags = {k: str(v) for k, v in tags.items()}
    if reuse_tag is not None:
        found = client.search_runs(
            [exp_id],
            filter_string=f"tags.`{reuse_tag}` = '{tags[reuse_tag]}'",
            max_results=1,
            order_by=["attributes.start_time ASC"],
        )
        if found:
            parent_id = found[0].info.run_id
            client.update_run(parent_id, status="RUNNING")
            for child in child_runs(uri, exp_id, parent_id):
                # a pruned trial (KILLED by design) is a result, not an interruption
                cut_short = child["tags"].get(PRUNED_TAG[0]) == PRUNED_TAG[1]
                if child["status"] in ("RUNNING", "KILLED") and SUPERSEDED_TAG not in child["tags"] and not cut_short:
                    client.set_tag(child["run_id"], SUPERSEDED_TAG, "its sweep was killed; the trial ran again")
                    client.set_terminated(child["run_id"], "KILLED")
            return exp_id, parent_id
    run = client.create_run(exp_id, run_name=name, tags={MLFLOW_RUN_NAME: name, **tags})
    if params:
        client.log_batch(run.info.run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
    return exp_id, run.info.run_id


def child_runs(uri: str, experiment_id: str, parent_id: str) -> list[dict]:
    client = client_for(uri)
    runs = client.search_runs(
        [experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'", max_results=10000
    )
    return [
        {
            "run_id": r.info.run_id,
            "name": r.info.run_name,
            "status": r.info.status,
            "tags": r.data.tags,
            "metrics": r.data.metrics,
        }
        for r in runs
    ]


def record_failed_job(
    uri: str, experiment_id: str, parent_id: str, name: str, tags: dict, error: Optional[BaseException]
) -> None:
    """A FAILED child for a sweep job that failed before opening its own run; nothing when
    the job's run exists (it recorded its own failure)."""
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

    client = client_for(uri)
    num = tags["hydra.job.num"]
    if any(c["tags"].get("hydra.job.num") == num for c in child_runs(uri, experiment_id, parent_id)):
        return
    message = f"{type(error).__name__}: {error}" if error is not None else "failed before training"
    run = client.create_run(
        experiment_id,
        run_name=name,
        tags={MLFLOW_RUN_NAME: name, MLFLOW_PARENT_RUN_ID: parent_id, "error": message[:5000], **tags},
    )
    client.set_terminated(run.info.run_id, "FAILED")


def mark_best(uri: str, children: list[dict], best_id: Optional[str]) -> None:
    """The sweep's best job leads its name with [best] and is tagged; a job that was the
    best of an earlier pass of a resumed sweep loses the mark."""
    client = client_for(uri)
    for child in children:
        marked = child["tags"].get(BEST_TAG) == "true"
        if child["run_id"] == best_id and not marked:
            client.set_tag(best_id, BEST_TAG, "true")
            client.update_run(best_id, name=BEST_MARK + child["name"])
        elif child["run_id"] != best_id and marked:
            client.delete_tag(child["run_id"], BEST_TAG)
            client.update_run(child["run_id"], name=child["name"].removeprefix(BEST_MARK))


def finish_parent(uri: str, parent_id: str, status: str, metrics: dict, tags: dict, files: list[Path]) -> None:
    from mlflow.entities import Metric, RunTag

    client = client_for(uri)
    ts = int(time.time() * 1000)
    client.log_batch(
        parent_id,
        metrics=[Metric(k, rounded(k, v), ts, 0) for k, v in metrics.items()],
        tags=[RunTag(k, str(v)) for k, v in tags.items()],
    )
    for f in files:
        client.log_artifact(parent_id, str(f))
    client.set_terminated(parent_id, status)
