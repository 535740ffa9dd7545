"""The durable outbox: the writes the store did not take, kept in order, retried, saved
in the run dir while any are pending, and delivered by a resume or by
`python -m cifar_exp.runs --deliver <run dir>`."""

from __future__ import annotations

import json
import logging
import re
import shlex
import shutil
import uuid
from pathlib import Path, PurePosixPath
from typing import Any, Optional

from cifar_exp.errors import UserError, printable, reason
from cifar_exp.tracking.store import connect, refused, sqlite_file

log = logging.getLogger("cifar_exp")

BATCH = 1000  # MLflow's limit of metrics per log_batch call

OUTBOX = "mlflow_outbox.json"

RETRY_S = (5, 10, 20, 40, 80, 120)  # waits between delivery attempts during an outage


# --- the outbox -----------------------------------------------------------------------------------
def _deliver(client, run_id: str, op: dict, home: Optional[Path]) -> None:
    """Write one queued operation to the store; an artifact's relative path is in `home`."""
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
        path = (home or Path()) / op["path"]
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
    items: Any = op.get("items", ())
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
    file of the run dir, so neither an outage nor a killed process loses them. The file is
    data: its artifacts are files of that run dir only (one from elsewhere is copied in
    before it is saved), and it never names the store it goes to."""

    def __init__(self, path: Optional[Path], uri: str, run_id: str):
        self.path, self.uri, self.run_id = path, uri, run_id
        self.ops: list[dict] = []

    @classmethod
    def read(cls, path: Path, uri: str) -> tuple[Outbox, list[str]]:
        """The outbox kept in `path`, to be delivered to `uri` (this job's store, whatever the
        file says), and why each entry that is not a valid write of its run dir was left out."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict) or not isinstance(data.get("ops"), list):
                raise ValueError("not an outbox (no list of ops)")
            run_id = data.get("run_id")
            if not isinstance(run_id, str) or not RUN_ID.fullmatch(run_id):
                raise ValueError(f"its run id {printable(repr(run_id))[:40]} is not an MLflow run id")
        except RecursionError:
            raise UserError(f"cannot read the MLflow outbox {path}: nested too deeply") from None
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read the MLflow outbox {path}: {printable(reason(e))}") from None
        box = cls(path, uri, run_id)
        refusals = []
        for i, op in enumerate(data["ops"]):
            why = entry_problem(op, path.parent)
            if why is None:
                box.ops.append(op)
            else:
                refusals.append(f"entry {i + 1} ({printable(why)})")
        return box, refusals

    def save(self) -> None:
        if self.path is None:
            return
        from cifar_exp.durable import atomic_write_text

        home = self.path.parent.resolve()
        ops = [self._portable(op, home) if op["op"] == "artifact" else op for op in self.ops]
        atomic_write_text(json.dumps({"uri": self.uri, "run_id": self.run_id, "ops": ops}), self.path)

    @staticmethod
    def _portable(op: dict, home: Path) -> dict:
        """An artifact as a path relative to the run dir: one from outside it (a resume's job
        log, its Hydra files) is copied in first, since a reader takes artifacts from the run
        dir only."""
        source = home / op["path"]
        if not _inside(source, home):
            copy = home / FILES / uuid.uuid4().hex[:12] / source.name
            if source.exists():
                copy.parent.mkdir(parents=True)
                (shutil.copytree if source.is_dir() else shutil.copy2)(source, copy)
            op["path"], source = str(copy), copy
        return {**op, "path": str(source.resolve().relative_to(home))}

    def clear(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)
            shutil.rmtree(self.path.parent / FILES, ignore_errors=True)

    def set_aside(self, refusals: list[str], source: Path) -> None:
        """An earlier segment's outbox had entries that are not valid writes: one line, and
        the file kept beside the run dir's outbox for a look, never delivered."""
        kept = source.with_name(source.name + ".refused")
        shutil.copy2(source, kept)
        log.warning(
            "warning: %d entries of the MLflow outbox %s are not valid writes of this run and are "
            "not delivered (%s); the file is kept as %s",
            len(refusals),
            source,
            "; ".join(refusals[:3]) + (" …" if len(refusals) > 3 else ""),
            kept,
        )

    def deliver(self, client) -> None:
        """Deliver in order. A write the store refuses is said and dropped (a batch is
        first retried item by item, so only the refused item goes); on an outage the
        undelivered rest stays queued and it raises. A run the store does not have (deleted
        meanwhile) takes none of them: they are dropped together, in one line."""
        while self.ops:
            try:
                _deliver(client, self.run_id, self.ops[0], self.path and self.path.parent)
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


def deliver_outbox(run_dir: Path, uri: str) -> str:
    """`python -m cifar_exp.runs --deliver <run dir>`: hand over what a run could not, to
    `uri` (this command's store). The whole outbox is checked first, and nothing is sent
    unless every entry is a write of that run, from its run dir, and the store's run says
    it was logged from that dir."""
    path = Path(run_dir) / OUTBOX if Path(run_dir).is_dir() else Path(run_dir)
    if not path.is_file():
        raise UserError(f"no MLflow outbox at {path}: nothing to deliver")
    box, refusals = Outbox.read(path, uri)
    if refusals:
        raise UserError(
            f"the MLflow outbox {path} is refused, nothing was sent: {len(refusals)} entries are not "
            f"writes of its run dir ({'; '.join(refusals[:3])})"
        )
    db = sqlite_file(uri)
    if db is not None and not db.is_file():
        raise UserError(f"no MLflow store at {uri}: pass --tracking-uri (or MLFLOW_TRACKING_URI) for the run's store")
    client, _ = connect(uri)
    _check_owner(client, box, path.parent)
    count = len(box.ops)
    try:
        box.deliver(client)
    except Exception as e:
        box.save()
        raise UserError(
            f"delivery to {uri} stopped ({reason(e)}); {len(box.ops)} of {count} writes remain in {path}"
        ) from None
    box.clear()
    return f"delivered {count} writes to run {box.run_id} at {uri}"


def deliver_command(run_dir: Path, uri: str) -> str:
    """The command that delivers a run dir's outbox to `uri`; a relative SQLite path made
    absolute, so it works from any directory."""
    db = sqlite_file(uri)
    where = uri
    if db is not None and not db.is_absolute():
        where = f"sqlite:///{db.resolve()}" + uri[len(f"sqlite:///{db}") :]
    return f"python -m cifar_exp.runs --deliver {shlex.quote(str(run_dir))} --tracking-uri {shlex.quote(where)}"


def _check_owner(client, box: Outbox, run_dir: Path) -> None:
    """The store's run must record `run_dir` as one of its output dirs (its first segment's
    or a resume's): an outbox cannot write into a run it does not belong to."""
    try:
        tags = client.get_run(box.run_id).data.tags
    except Exception as e:
        if not refused(e):
            raise UserError(f"cannot reach the MLflow store {box.uri} ({reason(e)}); nothing was sent") from None
        raise UserError(
            f"the MLflow store {box.uri} has no run {box.run_id}: pass --tracking-uri (or "
            f"MLFLOW_TRACKING_URI) for the store the run was logged to; nothing was sent"
        ) from None
    recorded = {v for k, v in tags.items() if k == "hydra.output_dir" or RESUME_DIR.fullmatch(k)}
    if not any(_same_dir(Path(d), run_dir) for d in recorded):
        raise UserError(
            f"run {box.run_id} in {box.uri} was not logged from {run_dir.resolve()} (its output dirs: "
            f"{', '.join(sorted(recorded)) or 'none recorded'}); nothing was sent"
        )


def _same_dir(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except (OSError, RuntimeError):
        return False


# --- what an outbox read from disk may hold --------------------------------------------------------
RUN_ID = re.compile(r"[0-9a-f]{32}")
RESUME_DIR = re.compile(r"resume\.\d+\.output_dir")
STATUSES = ("FINISHED", "FAILED", "KILLED")
FILES = "mlflow_outbox_files"  # artifacts from outside the run dir, copied in while pending
DATASET_FIELDS = ("name", "digest", "source_type", "source", "context")


def _text(value) -> bool:
    return isinstance(value, str)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _relative(value) -> bool:
    """A path inside the run's artifact root: relative, no '..'."""
    return _text(value) and not PurePosixPath(value).is_absolute() and ".." not in PurePosixPath(value).parts


def _metric(item) -> bool:
    return (
        isinstance(item, list)
        and len(item) in (4, 5)
        and _text(item[0])
        and _number(item[1])
        and _whole(item[2])
        and _whole(item[3])
        and (len(item) == 4 or _text(item[4]))
    )


def _strings(items) -> bool:
    return isinstance(items, dict) and all(_text(k) and _text(v) for k, v in items.items())


def _dataset(item) -> bool:
    return (
        isinstance(item, dict)
        and all(_text(item.get(k)) for k in DATASET_FIELDS)
        and isinstance(item.get("profile"), dict)
    )


# each kind of write: its fields and what each must be
SHAPES = {
    "metrics": {"items": lambda v: isinstance(v, list) and all(map(_metric, v))},
    "params": {"items": _strings},
    "tags": {"items": _strings},
    "delete_tag": {"key": _text},
    "artifact": {"path": _text, "dest": lambda v: v is None or _relative(v)},
    "text": {"text": _text, "file": _relative},
    "inputs": {"items": lambda v: isinstance(v, list) and all(map(_dataset, v))},
    "name": {"name": _text},
    "status": {"status": lambda v: v in STATUSES},
}


def entry_problem(op, home: Path) -> Optional[str]:
    """Why `op` is not a write this project queues for the run dir `home`; None when it is."""
    if not isinstance(op, dict) or op.get("op") not in SHAPES:
        return "not a known write"
    shape = SHAPES[op["op"]]
    if set(op) != {"op", *shape}:
        return f"{op['op']} with fields {sorted(op)}"
    bad = [k for k, ok in shape.items() if not ok(op[k])]
    if bad:
        return f"{op['op']} with a bad {bad[0]}"
    if op["op"] == "artifact":
        return _artifact_problem(Path(op["path"]), home)
    return None


def _inside(path: Path, home: Path) -> bool:
    try:
        return path.resolve().is_relative_to(home.resolve())
    except (OSError, RuntimeError):  # a link loop
        return False


def _artifact_problem(path: Path, home: Path) -> Optional[str]:
    """An artifact must be a file or folder of the run dir, and nothing in a folder may lead
    out of it through a link."""
    path = path if path.is_absolute() else home / path
    if not _inside(path, home):
        return "an artifact from outside the run dir"
    if path.is_dir():
        for sub in path.rglob("*"):
            if not _inside(sub, home):
                return "an artifact folder with a link out of the run dir"
    return None
