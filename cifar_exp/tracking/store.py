"""Which MLflow store a run uses and a client of it: the URI rule, a short probe of a
server (one line now, not minutes of retries later), a lock around a fresh SQLite store,
and experiments marked as model training."""

from __future__ import annotations

import contextlib
import logging
import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator, Optional

from cifar_exp.config import Config
from cifar_exp.errors import UserError, reason

log = logging.getLogger("cifar_exp")

DEFAULT_URI = "sqlite:///mlflow.db"

PARENT_RUN_ENV = "CIFAR_EXP_PARENT_RUN_ID"

EXPERIMENT_ENV = "CIFAR_EXP_EXPERIMENT_ID"

# MLflow's HTTP client retries a call for minutes by default; a run retries on its own
# schedule instead (RETRY_S), so one call gives up within seconds.
# Each call is bounded (a server that hangs costs one timeout, and a stop request is heard
# within seconds); MLflow's own retries are off, since the outbox retries.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
}

PROBE_TIMEOUT_S = 5

# MLflow 3 opens an experiment in its GenAI view unless this tag says it holds model training
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}

# where `mlflow ui` serves a local store by default
UI_DEFAULT = "http://127.0.0.1:5000"
# MLflow 3.17's UI takes its GenAI or model-training view from a toggle kept in the browser,
# not from the experiment's kind: a link with this query opens the model-training view
TRAINING_VIEW = "workflowType=machine_learning"


def ui_link(uri: str, experiment_id: str, run_id: Optional[str] = None) -> str:
    """The MLflow UI's page for an experiment's runs, or one run, in the model-training view:
    on the tracking server itself, or where `mlflow ui` serves a local store."""
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else UI_DEFAULT
    page = f"runs/{run_id}" if run_id else "runs"
    return f"{base}/#/experiments/{experiment_id}/{page}?{TRAINING_VIEW}"


def ui_line(uri: str, experiment_id: str, run_id: Optional[str] = None) -> str:
    """The line that points a user at the UI: the link, and for a local store how to serve it."""
    served = "" if uri.startswith(("http://", "https://")) else " (run `mlflow ui` in this directory to serve it)"
    return f"in the MLflow UI: {ui_link(uri, experiment_id, run_id)}{served}"


def tracking_uri(explicit: Optional[str]) -> str:
    """The one rule: the given URI, else $MLFLOW_TRACKING_URI, else MLflow's default store."""
    return explicit or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def refused(e: BaseException) -> bool:
    """Whether the store answered and said no (a bad key or value, a missing run): trying
    again cannot help. No answer, a 5xx or a locked database is an outage instead."""
    from mlflow.exceptions import MlflowException

    if not isinstance(e, MlflowException):
        return False
    status = e.get_http_status_code()
    return 400 <= status < 500 and status != 429


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


def sqlite_file(uri: str) -> Optional[Path]:
    """The database file of a sqlite:/// URI; None for any other store."""
    return Path(uri[len("sqlite:///") :].split("?")[0]) if uri.startswith("sqlite:///") else None


@contextlib.contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """Processes that open a fresh SQLite store at once take turns: MLflow creates the schema
    on first use and concurrent creators fail half-way."""
    db = sqlite_file(uri)
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


def open_store(cfg: Config) -> tuple:
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
