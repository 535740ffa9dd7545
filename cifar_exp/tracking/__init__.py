"""The only package that knows MLflow. A run talks to a Tracker (tracker.py): params, tags,
buffered metrics, artifacts, and a final status. With tracking off, NullTracker does nothing.

Tracking trouble never stops training: the store is checked once at the start (store.py: a
server that does not answer, an unusable SQLite file: one line, before any work), and after
that every write goes through an outbox (outbox.py). Writes the store does not take are kept
in order, retried with backoff, saved in the run dir at every checkpoint while any are
pending, and delivered by a resume or by `python -m cifar_exp.runs --deliver <run dir>`.
Sweeps get parent runs (sweeps.py); keys and values are made what MLflow takes (keys.py)."""

from cifar_exp.tracking.keys import rounded, valid_key
from cifar_exp.tracking.outbox import Outbox, deliver_outbox
from cifar_exp.tracking.store import (
    EXPERIMENT_ENV,
    PARENT_RUN_ENV,
    connect,
    ensure_experiment,
    open_store,
    tracking_uri,
    ui_line,
    ui_link,
)
from cifar_exp.tracking.sweeps import (
    BEST,
    PARETO,
    PRUNED_TAG,
    SUPERSEDED_TAG,
    child_runs,
    finish_parent,
    mark_jobs,
    record_failed_job,
    search_runs,
    start_parent,
)
from cifar_exp.tracking.tracker import MlflowTracker, ModelCard, NullTracker, Tracker, open_tracker

__all__ = [
    "EXPERIMENT_ENV",
    "PARENT_RUN_ENV",
    "PRUNED_TAG",
    "SUPERSEDED_TAG",
    "MlflowTracker",
    "ModelCard",
    "NullTracker",
    "Tracker",
    "ui_line",
    "ui_link",
    "Outbox",
    "child_runs",
    "connect",
    "deliver_outbox",
    "ensure_experiment",
    "finish_parent",
    "BEST",
    "PARETO",
    "mark_jobs",
    "open_store",
    "open_tracker",
    "record_failed_job",
    "rounded",
    "search_runs",
    "start_parent",
    "tracking_uri",
    "valid_key",
]
