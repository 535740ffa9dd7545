"""The outbox read from disk is data: it never names the store, never reads outside its run
dir, never writes into a run it does not belong to, and a crafted one sends nothing."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from cifar_exp.errors import UserError
from cifar_exp.tracking import deliver_outbox
from cifar_exp.tracking.outbox import OUTBOX

from helpers import FAST


@pytest.fixture
def store(workdir):
    """workdir's store with a run logged from workdir/run, as a run's start tags it."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    run_dir = workdir / "run"
    run_dir.mkdir()
    exp = client.create_experiment("outbox", artifact_location=str(workdir / "artifacts"))
    run_id = client.create_run(exp, tags={"hydra.output_dir": str(run_dir)}).info.run_id
    other = client.create_run(exp, tags={"hydra.output_dir": str(workdir / "elsewhere")}).info.run_id
    return client, uri, run_dir, run_id, other


def _write(run_dir: Path, run_id: str, ops: list, uri: str = "sqlite:///ignored.db") -> Path:
    path = run_dir / OUTBOX
    path.write_text(json.dumps({"uri": uri, "run_id": run_id, "ops": ops}))
    return path


def _untouched(client, run_id: str, workdir: Path) -> None:
    run = client.get_run(run_id)
    assert run.data.metrics == {} and "planted" not in run.data.tags
    assert not any((workdir / "artifacts").rglob("*"))


def _secret(workdir: Path) -> Path:
    secret = workdir / "secret"
    secret.mkdir(exist_ok=True)
    (secret / "id_rsa").write_text("private")
    return secret


METRIC = {"op": "metrics", "items": [["loss", 0.5, 0, 1]]}
CRAFTED = {
    "an absolute path outside": lambda w, r: [METRIC, {"op": "artifact", "path": "/etc/passwd", "dest": None}],
    "a home folder": lambda w, r: [{"op": "artifact", "path": str(_secret(w)), "dest": "ssh"}],
    "a relative path out": lambda w, r: [{"op": "artifact", "path": "../secret/id_rsa", "dest": None}],
    "a link out of the run dir": lambda w, r: [
        (r / "plots").symlink_to(_secret(w)),
        {"op": "artifact", "path": "plots", "dest": None},
    ][1:],
    "a folder holding a link out": lambda w, r: [
        (r / "plots").mkdir(),
        (r / "plots" / "key").symlink_to(_secret(w) / "id_rsa"),
        {"op": "artifact", "path": "plots", "dest": None},
    ][2:],
    "a destination out of the run's artifacts": lambda w, r: [
        (r / "a.txt").write_text("a"),
        {"op": "artifact", "path": "a.txt", "dest": "../../x"},
    ][1:],
    "a text file out of the run's artifacts": lambda w, r: [{"op": "text", "text": "x", "file": "../../x.txt"}],
    "an unknown write": lambda w, r: [{"op": "exec", "code": "id"}],
    "an extra field": lambda w, r: [{"op": "name", "name": "n", "uri": "http://elsewhere"}],
    "a string metric value": lambda w, r: [{"op": "metrics", "items": [["loss", "0.5", 0, 1]]}],
    "a status MLflow does not end with": lambda w, r: [{"op": "status", "status": "SCHEDULED"}],
    "tags that are not strings": lambda w, r: [{"op": "tags", "items": {"planted": ["x"]}}],
}


@pytest.mark.parametrize("case", CRAFTED)
def test_a_crafted_outbox_is_refused_whole_and_sends_nothing(workdir, store, case):
    client, uri, run_dir, run_id, _ = store
    _write(run_dir, run_id, [*CRAFTED[case](workdir, run_dir), {"op": "tags", "items": {"planted": "1"}}])
    with pytest.raises(UserError, match="refused, nothing was sent") as err:
        deliver_outbox(run_dir, uri)
    assert "\n" not in str(err.value)
    _untouched(client, run_id, workdir)


def test_the_store_is_this_commands_never_the_files(workdir, store):
    """The file names a store of its own: delivery goes to the one given, and the other is
    never created or contacted."""
    client, uri, run_dir, run_id, _ = store
    (run_dir / "notes.txt").write_text("kept")
    _write(
        run_dir,
        run_id,
        [METRIC, {"op": "artifact", "path": "notes.txt", "dest": "docs"}],
        uri=f"sqlite:///{workdir / 'planted.db'}",
    )
    assert "delivered 2 writes" in deliver_outbox(run_dir, uri)
    assert client.get_run(run_id).data.metrics == {"loss": 0.5}
    assert [a.path for a in client.list_artifacts(run_id, "docs")] == ["docs/notes.txt"]
    assert not (workdir / "planted.db").exists() and not (run_dir / OUTBOX).exists()


@pytest.mark.parametrize(
    "whose, needle",
    [
        ("other", "was not logged from"),
        ("0123456789abcdef0123456789abcdef", "has no run"),
        ("../../etc", "not an MLflow run id"),
    ],
)
def test_an_outbox_writes_only_into_the_run_logged_from_its_dir(workdir, store, whose, needle):
    client, uri, run_dir, run_id, other = store
    _write(run_dir, other if whose == "other" else whose, [METRIC, {"op": "status", "status": "FAILED"}])
    with pytest.raises(UserError, match=needle):
        deliver_outbox(run_dir, uri)
    assert client.get_run(other).data.metrics == {} and client.get_run(other).info.status == "RUNNING"


def test_a_store_that_does_not_exist_is_not_created(workdir, store):
    _, _, run_dir, run_id, _ = store
    _write(run_dir, run_id, [METRIC])
    with pytest.raises(UserError, match="no MLflow store at"):
        deliver_outbox(run_dir, f"sqlite:///{workdir / 'new.db'}")
    assert not (workdir / "new.db").exists()


def test_an_outbox_nested_100000_deep_is_one_line(workdir, store):
    _, uri, run_dir, run_id, _ = store
    deep = "[" * 100_000 + "]" * 100_000
    (run_dir / OUTBOX).write_text(f'{{"run_id": "{run_id}", "ops": [{deep}]}}')
    with pytest.raises(UserError, match="nested too deeply"):
        deliver_outbox(run_dir, uri)


@pytest.mark.slow
def test_a_resume_delivers_the_valid_writes_and_sets_aside_the_rest(train, workdir, caplog):
    """An earlier segment's outbox with a malformed entry: the valid writes arrive, the bad
    one is kept aside in one line, and the run ends FINISHED on a healthy store."""
    from mlflow.tracking import MlflowClient

    first = train(*FAST)
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("cifar_exp").experiment_id])
    _write(
        first.run_dir,
        run.info.run_id,
        [{"op": "tags", "items": {"kept": "yes"}}, {"op": "metrics", "items": [["loss", "bad"]]}, METRIC],
    )
    resumed = train(*FAST, "resume=auto", "epochs=2")
    run = client.get_run(run.info.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["kept"] == "yes"
    assert [m.value for m in client.get_metric_history(run.info.run_id, "loss")] == [0.5]
    [line] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "outbox" in r.getMessage()]
    assert "1 entries" in line and "entry 2" in line and "does not take writes" not in resumed.log
    assert (first.run_dir / (OUTBOX + ".refused")).is_file() and not (first.run_dir / OUTBOX).exists()


def test_an_artifact_from_outside_the_run_dir_is_copied_in_before_it_is_saved(workdir, store):
    """A resume's job log lives in that job's own output dir: while it waits in the outbox it
    is kept inside the run dir, so the saved outbox names nothing outside it."""
    from cifar_exp.tracking import Outbox

    client, uri, run_dir, run_id, _ = store
    elsewhere = workdir / "outputs" / "resume"
    elsewhere.mkdir(parents=True)
    (elsewhere / "cifar_exp.log").write_text("the resume's log")
    box = Outbox(run_dir / OUTBOX, uri, run_id)
    box.ops = [{"op": "artifact", "path": str(elsewhere / "cifar_exp.log"), "dest": "resume_1"}]
    box.save()
    (elsewhere / "cifar_exp.log").write_text("changed later")
    saved = json.loads((run_dir / OUTBOX).read_text())["ops"][0]["path"]
    assert not Path(saved).is_absolute() and (run_dir / saved).read_text() == "the resume's log"
    assert "delivered 1 writes" in deliver_outbox(run_dir, uri)
    assert [a.path for a in client.list_artifacts(run_id, "resume_1")] == ["resume_1/cifar_exp.log"]
    assert not (run_dir / OUTBOX).exists() and not (run_dir / "mlflow_outbox_files").exists()
