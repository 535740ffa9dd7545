"""The durable outbox: the writes the store did not take, kept in order, retried, saved
in the run dir while any are pending, and delivered by a resume or by
`python -m cifar_exp.runs --deliver <run dir>`."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

from cifar_exp.errors import UserError, reason
from cifar_exp.tracking.store import connect, refused

log = logging.getLogger("cifar_exp")

BATCH = 1000  # MLflow's limit of metrics per log_batch call

OUTBOX = "mlflow_outbox.json"

RETRY_S = (5, 10, 20, 40, 80, 120)  # waits between delivery attempts during an outage


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
