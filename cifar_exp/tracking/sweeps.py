"""Sweep parent runs and their children: start, failed jobs, the best job's mark, finish;
and the search the runs tool shows."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Optional

from cifar_exp.errors import UserError
from cifar_exp.tracking.keys import MAX_PARAM_VALUE, MAX_TAG_VALUE, cut, rounded
from cifar_exp.tracking.store import client_for, connect, sqlite_file

log = logging.getLogger("cifar_exp")


def search_runs(uri: str, experiment: str, sort_by: str, ascending: bool, limit: int) -> list[dict]:
    """Runs of an experiment as plain dicts (id, name, status, params, metrics), best first.
    Reading never creates a store: a SQLite file that is not there is a UserError."""
    db = sqlite_file(uri)
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
            "experiment_id": r.info.experiment_id,
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

# a sweep's best job, and the jobs on its Pareto front: (tag, name prefix)
BEST = ("cifar_exp.best", "[best] ")
PARETO = ("cifar_exp.pareto", "[pareto] ")


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
        values = cut(params, MAX_PARAM_VALUE, "param")
        client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in values.items()])
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
        tags={MLFLOW_RUN_NAME: name, MLFLOW_PARENT_RUN_ID: parent_id, "error": message[:MAX_TAG_VALUE], **tags},
    )
    client.set_terminated(run.info.run_id, "FAILED")


def mark_jobs(uri: str, children: list[dict], marked: set[str], kind: tuple[str, str]) -> None:
    """The sweep's best job, or its Pareto front's jobs, lead their names with the kind's
    mark and carry its tag; a job marked by an earlier pass of a resumed sweep that is no
    longer among them loses both."""
    tag, mark = kind
    client = client_for(uri)
    for child in children:
        was = child["tags"].get(tag) == "true"
        if child["run_id"] in marked and not was:
            client.set_tag(child["run_id"], tag, "true")
            client.update_run(child["run_id"], name=mark + child["name"])
        elif child["run_id"] not in marked and was:
            client.delete_tag(child["run_id"], tag)
            client.update_run(child["run_id"], name=child["name"].removeprefix(mark))


def finish_parent(uri: str, parent_id: str, status: str, metrics: dict, tags: dict, files: list[Path]) -> None:
    from mlflow.entities import Metric, RunTag

    client = client_for(uri)
    ts = int(time.time() * 1000)
    client.log_batch(
        parent_id,
        metrics=[Metric(k, rounded(v), ts, 0) for k, v in metrics.items()],
        tags=[RunTag(k, str(v)) for k, v in tags.items()],
    )
    for f in files:
        client.log_artifact(parent_id, str(f))
    client.set_terminated(parent_id, status)
