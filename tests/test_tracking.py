"""What a run leaves in MLflow: params, metric series, artifacts, model, a true status."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Optional

import pytest
import torch

from cifar_exp.registry import flatten

from helpers import FAST, cli_env, cli_process, free_port, png_tree, run_dirs, serve_mlflow

pytestmark = pytest.mark.slow


def client(workdir):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")


def only_run(workdir):
    c = client(workdir)
    exp = c.get_experiment_by_name("cifar_exp")
    [run] = c.search_runs([exp.experiment_id])
    return c, run


def steps(c, run_id, key):
    return [m.step for m in sorted(c.get_metric_history(run_id, key), key=lambda m: m.step)]


@pytest.mark.parametrize(
    "key, valid",
    [
        ("test/acc", "test/acc"),
        ("a+b", "a_b"),
        ("test/acc_class/T-shirt (top)", "test/acc_class/T-shirt _top_"),
        ("test/acc_class/dog's", "test/acc_class/dog_s"),
        ("a//b/", "a/b"),
        ("/../x", "__/x"),
        ("k" * 300, "k" * 250),
    ],
)
def test_keys_are_made_valid_for_mlflow(key, valid):
    from mlflow.utils.validation import path_not_unique, validate_param_and_metric_name

    from cifar_exp.tracking import valid_key

    assert valid_key(key) == valid
    assert validate_param_and_metric_name(valid) and not path_not_unique(valid)


def test_a_refused_write_is_dropped_with_a_line_and_the_rest_delivered(workdir, caplog):
    """Refusals (a 4xx: a bad key, a missing run) are not outages: retrying cannot help, so
    the refused item goes (a batch is retried item by item first) and the queue moves on."""
    from cifar_exp.tracking import Outbox

    c = client(workdir)
    rid = c.create_run(c.create_experiment("refusals")).info.run_id
    box = Outbox(None, str(workdir / "mlflow.db"), rid)
    box.ops = [
        {"op": "metrics", "items": [["ok", 1.0, 0, 1], ["bad+key", 2.0, 0, 1], ["ok", 3.0, 0, 2]]},
        {"op": "tags", "items": {"bad+tag": "x", "kept": "y"}},
        {"op": "params", "items": {"p": "1"}},
        {"op": "status", "status": "FINISHED"},
    ]
    with caplog.at_level("WARNING", logger="cifar_exp"):
        box.deliver(c)
    assert box.ops == []
    run = c.get_run(rid)
    assert [m.value for m in c.get_metric_history(rid, "ok")] == [1.0, 3.0] and "bad+key" not in run.data.metrics
    assert run.data.tags["kept"] == "y" and run.data.params == {"p": "1"} and run.info.status == "FINISHED"
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 2 and "'bad+key'" in refusals[0] and "'bad+tag'" in refusals[1]


def test_the_writes_of_a_run_the_store_no_longer_has_go_in_one_line(workdir, caplog):
    from cifar_exp.tracking import Outbox

    box = Outbox(None, str(workdir / "mlflow.db"), "0123456789abcdef0123456789abcdef")
    box.ops = [
        {"op": "metrics", "items": [["loss", float(i), 0, i] for i in range(500)]},
        {"op": "status", "status": "FINISHED"},
    ]
    with caplog.at_level("WARNING", logger="cifar_exp"):
        box.deliver(client(workdir))
    assert box.ops == []
    [line] = [r.getMessage() for r in caplog.records]
    assert "has no run 0123456789abcdef0123456789abcdef" in line and "its 2 queued writes are dropped" in line


def test_odd_class_names_and_a_refused_tag_key_end_finished_with_every_metric(train, workdir):
    classes = ("T-shirt (top)", "dog's", "x" * 241)
    png_tree(workdir / "imgs", per_class=4, classes=classes)
    done = train(
        "dataset=image_folder",
        f"dataset.root={workdir / 'imgs'}",
        "dataset.batch_size=4",
        "trainer.progress=false",
        "mlflow.log_model=false",
        "+mlflow.tags={a+b:v}",
        "objective='test/acc_class/T-shirt (top)'",
    )
    assert "unreachable" not in done.log and "refused" not in done.log
    assert "it is logged as 'test/acc_class/T-shirt _top_'" in done.log
    c, run = only_run(workdir)
    assert run.info.status == "FINISHED" and run.data.tags["a_b"] == "v"
    assert {"train/loss", "test/acc", "test/loss", "epoch", "test/acc_class/T-shirt _top_"} <= set(run.data.metrics)
    assert not (done.run_dir / "mlflow_outbox.json").exists()
    table = c.download_artifacts(run.info.run_id, "per_class_accuracy.csv")
    assert "T-shirt (top)" in open(table).read()  # the original names where a user reads them


def test_flatten_dotted_keys():
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": {}}) == {"a.b": 1, "a.c.d": [1, 2], "e": {}}


def test_two_epoch_run_is_fully_logged(cli_here, workdir):
    result = cli_here(
        *FAST,
        "epochs=2",
        "trainer.log_every_n_steps=1",
        "mlflow.system_metrics_every_s=0.5",
        "mlflow.registered_model_name=synthetic-cnn",
        "trainer.channels_last=true",
    )
    assert result.returncode == 0, result.output
    assert "Warning" not in result.output, result.output  # e.g. torch.export's, on channels_last weights
    c, run = only_run(workdir)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "lr=0.05 momentum=0.9 epochs=2 … synthetic simple_cnn"  # cut between words
    p = run.data.params
    assert p["optimizer.lr"] == "0.05" and p["dataset.batch_size"] == "128"
    assert p["model.name"] == "simple_cnn" and p["dataset.name"] == "synthetic"
    assert p["trainer.name"] == "default" and "trainer" not in p
    assert run.data.tags["epochs"] == "2"  # a resume may change it: a tag, which it can update
    [run_dir] = run_dirs(workdir)
    tags = run.data.tags
    assert tags["hydra.output_dir"] == str(run_dir.resolve())
    assert "optimizer.lr=0.05" in tags["hydra.overrides"]
    assert tags["device"] == "cpu" and tags["version.torch"] == torch.__version__
    assert tags["mlflow.user"] and len(tags["cifar_exp.git_commit"]) == 40  # the package's own commit
    note = tags["mlflow.note.content"]
    assert "python -m cifar_exp dataset=synthetic" in note and f"resume={run_dir.resolve()}" in note

    # lineage: each split's name, source, digest and size
    inputs = {i.tags[0].value: i.dataset for i in run.inputs.dataset_inputs}
    assert sorted(inputs) == ["test", "train"] and inputs["train"].name == "synthetic/train"
    assert len(inputs["train"].digest) == 16 and '"num_images": 2000' in inputs["train"].profile
    assert inputs["train"].digest != inputs["test"].digest
    # MLflow's own system metrics monitor
    assert c.get_metric_history(run.info.run_id, "host/cpu_utilization_percentage")
    # reported numbers come from integer counts: 0.988 is 0.988, not 0.98799997
    for m in c.get_metric_history(run.info.run_id, "test/acc"):
        assert m.value == round(m.value * 500) / 500

    per_epoch = 16  # ceil(2000 / 128)
    assert steps(c, run.info.run_id, "train/loss") == list(range(1, 2 * per_epoch + 1))
    assert steps(c, run.info.run_id, "lr") == []  # constant: the optimizer.lr param
    for key in ("train/loss_epoch", "train/acc", "test/loss", "test/acc", "epoch", "time/epoch_s", "time/images_per_s"):
        assert steps(c, run.info.run_id, key) == [per_epoch, 2 * per_epoch], key
    accs = [m.value for m in c.get_metric_history(run.info.run_id, "test/acc")]
    assert all(0 <= a <= 1 for a in accs) and accs[-1] > 0.5
    assert [m.value for m in c.get_metric_history(run.info.run_id, "epoch")] == [1, 2]

    artifacts = {a.path for a in c.list_artifacts(run.info.run_id)}
    artifacts |= {a.path for d in ("plots", "hydra") for a in c.list_artifacts(run.info.run_id, d)}
    for name in (
        "cifar_exp.log",
        "hydra/config.yaml",
        "hydra/overrides.yaml",
        "plots/samples.png",
        "plots/learning_curves.png",
        "plots/confusion_matrix.png",
        "plots/predictions.png",
    ):
        assert name in artifacts, artifacts

    # the logged model reloads and predicts exactly as the checkpoint's weights do
    import mlflow
    import mlflow.pytorch

    from cifar_exp.loader import Normalize
    from cifar_exp.models import SimpleCNN

    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")
    [logged] = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list")
    assert logged.source_run_id == run.info.run_id and logged.name == f"simple_cnn-{run.info.run_id[:8]}"
    linked = {m.key: m.value for m in logged.metrics}
    assert linked["test/acc"] == run.data.metrics["test/acc"] and linked["epoch"] == 2
    assert len(c.get_metric_history(run.info.run_id, "test/acc")) == 2  # linking added no point
    [version] = c.search_model_versions("name='synthetic-cnn'")
    assert version.run_id == run.info.run_id
    # it describes itself: images in as decoded, the normalization inside, the class order
    info = mlflow.models.get_model_info(logged.model_uri)
    assert info.metadata["classes"] == [f"class{i}" for i in range(10)]
    assert info.metadata["normalization"]["mean"] == [0.5, 0.5, 0.5]
    assert str(info.signature.inputs.inputs[0].type) == "uint8" and info.signature.inputs.inputs[0].shape[1:] == (
        3,
        32,
        32,
    )
    assert "0 class0, 1 class1" in logged.tags["mlflow.note.content"]
    assert info.metadata["test_dataset"]["name"] == "synthetic/test" and logged.tags["mlflow.note.content"]
    assert not [k for k in linked if k.startswith("host/")]  # the model's page shows what it scored
    loaded = mlflow.pytorch.load_model(logged.model_uri)
    reference = SimpleCNN()
    reference.load_state_dict(torch.load(run_dir / "checkpoints/last.pt", weights_only=True)["trainer"]["model"])
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    normalize = Normalize([0.5] * 3, [0.5] * 3, torch.device("cpu"))
    with torch.inference_mode():
        assert torch.equal(loaded(images), reference.eval()(normalize(images)))
        served = mlflow.pyfunc.load_model(logged.model_uri).predict(images.numpy())
        assert torch.equal(torch.as_tensor(served), reference(normalize(images)))


@pytest.mark.usefixtures("test_models")
def test_a_raising_run_ends_failed_with_its_metrics(train, workdir):
    with pytest.raises(RuntimeError, match="boom at step 5"):
        train(*FAST, "model=exploding_cnn", "trainer.log_every_n_steps=1")
    c, run = only_run(workdir)
    assert run.info.status == "FAILED"
    assert "boom at step 5" in run.data.tags["error"]
    assert steps(c, run.info.run_id, "train/loss") == [1, 2, 3, 4]
    assert "error.txt" in {a.path for a in c.list_artifacts(run.info.run_id)}


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGHUP, signal.SIGQUIT], ids=lambda s: s.name)
def test_a_stop_signal_ends_killed_with_a_checkpoint(workdir, sig):
    """Ctrl-C, a closed terminal (SIGHUP) and Ctrl-\\ (SIGQUIT) all stop at a step's end."""
    proc = cli_process(
        "testing_cli",
        *FAST,
        "model=slow_cnn",
        "epochs=50",
        "trainer.log_every_n_steps=1",
        cwd=workdir,
        preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL),  # as a terminal starts it
    )
    for line in proc.stdout:
        if line.startswith("epoch 1/50"):
            break
    time.sleep(0.3)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err
    assert "resume with" in err and "resume=" in err and "Error executing job" not in err
    c, run = only_run(workdir)
    assert run.info.status == "KILLED"
    [run_dir] = run_dirs(workdir)
    assert run.data.tags["cifar_exp.resume_command"] == f"python -m cifar_exp resume={run_dir}"
    logged = steps(c, run.info.run_id, "train/loss")
    assert logged == list(range(1, len(logged) + 1)) and len(logged) > 16
    # the record says where it stopped and how to go on: the description and the log
    stopped = f"stopped by signal {sig.value} ({sig.name}) in epoch 2 of 50, after batch "
    last = run.data.tags["mlflow.note.content"].splitlines()[-1]
    assert stopped in last and f"resume with `python -m cifar_exp resume={run_dir}`" in last, last
    log_text = open(c.download_artifacts(run.info.run_id, "cifar_exp.log")).read()
    assert stopped in log_text.splitlines()[-1] and "resume with: python -m cifar_exp resume=" in log_text
    [run_dir] = run_dirs(workdir)
    state = torch.load(run_dir / "checkpoints/last.pt", weights_only=True)
    assert state["run"]["global_step"] == len(logged)  # nothing logged past the checkpoint


@pytest.fixture
def mlflow_server(workdir, mlflow_template):
    import shutil

    db = workdir / "server.db"
    shutil.copy(mlflow_template, db)
    with serve_mlflow(f"sqlite:///{db}", workdir / "server-artifacts", workdir) as url:
        yield url


def _rest(url, path, body):
    req = urllib.request.Request(
        f"{url}/api/2.0/mlflow/{path}", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    return json.load(urllib.request.urlopen(req, timeout=10))


def test_run_logged_to_a_tracking_server_is_visible_through_rest(cli_here, workdir, mlflow_server):
    from mlflow.tracking import MlflowClient

    result = cli_here(
        *FAST, f"mlflow.tracking_uri={mlflow_server}", "mlflow.experiment_name=served", "mlflow.log_model=false"
    )
    assert result.returncode == 0, result.output
    search = _rest(mlflow_server, "experiments/search", {"max_results": 10})
    [exp] = [e for e in search["experiments"] if e["name"] == "served"]
    runs = _rest(mlflow_server, "runs/search", {"experiment_ids": [exp["experiment_id"]]})["runs"]
    assert len(runs) == 1 and runs[0]["info"]["status"] == "FINISHED"
    metrics = {m["key"]: m["value"] for m in runs[0]["data"]["metrics"]}
    assert 0 <= metrics["test/acc"] <= 1
    # artifacts go through the server's proxy into its artifact destination
    served = MlflowClient(tracking_uri=mlflow_server)
    plots = {a.path for a in served.list_artifacts(runs[0]["info"]["run_id"], "plots")}
    assert "plots/confusion_matrix.png" in plots
    assert list((workdir / "server-artifacts").rglob("confusion_matrix.png"))


def test_runs_table_lists_runs_best_first(cli_here, train, workdir):
    for lr in ("0.05", "0.0001"):
        train(*FAST, f"optimizer.lr={lr}", "mlflow.log_model=false", run_dir=lr)
    result = cli_here(module="cifar_exp.runs")
    assert result.returncode == 0, result.output
    header, first, second = result.stdout.strip().splitlines()
    assert header.split()[:7] == ["run", "status", "model", "optimizer", "lr", "epochs", "dataset"]
    assert "0.05" in first.split() and "0.0001" in second.split()  # higher test/acc first
    assert "FINISHED" in first and "simple_cnn" in first
    # the UI's runs page, in the model-training view, on stderr beside the table
    assert "/#/experiments/1/runs?workflowType=machine_learning (run `mlflow ui`" in result.stderr
    assert cli_here("--experiment", "nope", module="cifar_exp.runs").returncode == 1


# --- faults: nothing lost, nothing left lying ------------------------------------------------
def test_four_runs_at_once_on_a_fresh_sqlite_store_all_finish(tmp_path):
    """No store exists yet: the four processes take turns creating it."""
    procs = [
        cli_process("cifar_exp", *FAST, f"seed={i}", "mlflow.log_model=false", cwd=tmp_path, merged=True)
        for i in range(4)
    ]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, outputs
    c = client(tmp_path)
    runs = c.search_runs([c.get_experiment_by_name("cifar_exp").experiment_id])
    assert sorted(r.data.params["seed"] for r in runs) == ["0", "1", "2", "3"]
    assert {r.info.status for r in runs} == {"FINISHED"}


@pytest.mark.parametrize(
    "store,needle",
    [
        ("http://127.0.0.1:1", "does not answer"),
        ("sqlite:////sys/kernel/no/mlflow.db", "cannot use the MLflow store sqlite:////sys/kernel/no/mlflow.db"),
        ("GARBAGE", "cannot use the MLflow store"),
        ("TRUNCATED", "cannot use the MLflow store"),
    ],
)
def test_an_unusable_store_is_one_line_before_any_work(cli, workdir, store, needle):
    if store == "GARBAGE":
        (workdir / "bad.db").write_bytes(b"this is not a database" * 100)
        store = f"sqlite:///{workdir / 'bad.db'}"
    elif store == "TRUNCATED":
        (workdir / "bad.db").write_bytes((workdir / "mlflow.db").read_bytes()[:5000])
        store = f"sqlite:///{workdir / 'bad.db'}"
    started = time.monotonic()
    result = cli(*FAST, f"mlflow.tracking_uri={store}")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.output[-2000:]
    assert needle in lines[0] and "mlflow.enabled=false" in lines[0]
    assert "epoch 1" not in result.stdout and time.monotonic() - started < 60


def test_resume_into_another_store_or_with_tracking_off(train, workdir, monkeypatch):
    command = [*FAST, "mlflow.log_model=false"]
    first = train(*command, run_dir="first").run_dir
    _, original = only_run(workdir)
    other = workdir / "other.db"
    with monkeypatch.context() as env:
        env.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{other}")
        moved = train(f"resume={first}", *command, "epochs=2", run_dir="first")
    assert f"is not in sqlite:///{other}" in moved.log
    c = MlflowClient_for(other)
    [new] = c.search_runs([c.get_experiment_by_name("cifar_exp").experiment_id])
    assert new.info.status == "FINISHED" and new.data.tags["cifar_exp.resumed_from_run"] == original.info.run_id

    second = train(*command, "mlflow.experiment_name=off", run_dir="second").run_dir
    c = client(workdir)
    [run] = c.search_runs([c.get_experiment_by_name("off").experiment_id])
    off = train(f"resume={second}", *command, "epochs=2", "mlflow.enabled=false", run_dir="second")
    assert "tracking is off for this segment" in off.log
    ckpt = torch.load(second / "checkpoints/last.pt", weights_only=True)
    assert ckpt["run"]["epoch"] == 2 and ckpt["run"]["run_id"] == run.info.run_id  # kept for later
    train(f"resume={second}", *command, "epochs=3", "mlflow.experiment_name=off", run_dir="second")
    [run] = c.search_runs([c.get_experiment_by_name("off").experiment_id])  # still one run
    assert run.info.status == "FINISHED" and run.data.metrics["epoch"] == 3


def MlflowClient_for(db):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{db}")


def shutil_copy(run_dir, epoch):
    import shutil

    shutil.copy(run_dir / f"checkpoints/epoch_{epoch:04d}.pt", run_dir / "checkpoints/last.pt")


def test_a_resume_after_a_lost_checkpoint_logs_no_step_twice(train, workdir):
    """Metrics reach the store before the checkpoint rename; a kill between the two leaves
    points past the checkpoint in the store. The resume must not log them again."""
    command = [*FAST, "epochs=2", "checkpoint.keep_last=2", "trainer.log_every_n_steps=1", "mlflow.log_model=false"]
    run_dir = train(*command).run_dir
    shutil_copy(run_dir, 1)  # as if the epoch-2 checkpoint never reached its name
    train(f"resume={run_dir}", *command)
    c, run = only_run(workdir)
    for key in ("train/loss", "lr", "test/acc", "epoch"):
        points = [m.step for m in c.get_metric_history(run.info.run_id, key)]
        assert len(points) == len(set(points)), key
    assert steps(c, run.info.run_id, "train/loss") == list(range(1, 33))


def test_a_finished_resume_drops_the_error_of_an_earlier_segment(train, workdir):
    run_dir = train(*FAST, "mlflow.log_model=false").run_dir
    c, run = only_run(workdir)
    c.set_tag(run.info.run_id, "error", "RuntimeError: an earlier segment failed")
    c.set_terminated(run.info.run_id, "FAILED")
    train(f"resume={run_dir}", *FAST, "epochs=2", "mlflow.log_model=false")
    _, run = only_run(workdir)
    assert run.info.status == "FINISHED" and "error" not in run.data.tags


def test_sigterm_while_reporting_ends_killed(workdir):
    proc = cli_process("cifar_exp", *FAST, cwd=workdir)
    for line in proc.stdout:
        if line.startswith("Accuracy of the network"):  # the report (plots, model) has begun
            proc.send_signal(signal.SIGTERM)
            break
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    _, run = only_run(workdir)
    assert run.info.status == "KILLED"


def test_a_second_sigterm_during_the_report_is_heard_without_a_traceback(workdir):
    """The report polls for a stop between its steps, so a second signal is neither raised
    inside a library's cleanup ("Exception ignored ... KeyboardInterrupt") nor lost."""
    proc = cli_process("cifar_exp", *FAST, cwd=workdir)
    for line in proc.stdout:
        if line.startswith("Accuracy of the network"):
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            proc.send_signal(signal.SIGTERM)
            break
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert err.startswith("cifar-exp: stopped by signal 15"), err
    c, run = only_run(workdir)
    assert run.info.status == "KILLED"
    assert "plots/learning_curves.png" in {a.path for a in c.list_artifacts(run.info.run_id, "plots")}


def test_a_stopped_run_keeps_what_its_finished_epochs_show(workdir):
    """KILLED after two epochs: the learning curves, the confusion matrix and the per-class
    table of the newest evaluation are in the record; the model is not (the checkpoint
    holds it)."""
    proc = cli_process("testing_cli", *FAST, "model=slow_cnn", "epochs=10", cwd=workdir)
    for line in proc.stdout:
        if line.startswith("epoch 2/"):
            proc.send_signal(signal.SIGTERM)
            break
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    c, run = only_run(workdir)
    assert run.info.status == "KILLED"
    rid = run.info.run_id
    plotted = {a.path for a in c.list_artifacts(rid, "plots")}
    assert {"plots/learning_curves.png", "plots/confusion_matrix.png"} <= plotted
    with open(c.download_artifacts(rid, "per_class_accuracy.csv")) as f:
        assert len(f.read().splitlines()) == 11
    assert [m.value for m in c.get_metric_history(rid, "epoch")][:2] == [1, 2]
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")
    assert mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list") == []


def test_a_second_ctrl_c_stops_at_once_in_one_line(workdir):
    proc = cli_process("testing_cli", *FAST, "model=sleepy_cnn", "epochs=50", cwd=workdir)
    for line in proc.stdout:
        if line.startswith("run dir"):
            break
    time.sleep(1.5)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.2)  # a separate signal, inside the same one-second step
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGINT, err
    # only our message: the at-once line, or (when the step ended before the second signal,
    # which an exiting process then ignores) the usual stop line with its resume command
    lines = err.strip().splitlines()
    assert "Traceback" not in err and lines[0].startswith("cifar-exp: stop"), err
    assert len(lines) == 1 or (len(lines) == 2 and lines[1].startswith("  python -m cifar_exp resume=")), err
    _, run = only_run(workdir)
    assert run.info.status == "KILLED"


def _outage_run(workdir, url, run_dir, epochs, *extra):
    """A run against `url`, returned once its first epoch has been logged."""
    command = [
        sys.executable,
        "-m",
        "testing_cli",
        *FAST,
        "model=slow_cnn",
        f"epochs={epochs}",
        "trainer.log_every_n_steps=1",
        "mlflow.log_model=false",
        f"mlflow.tracking_uri={url}",
        f"hydra.run.dir={run_dir}",
        *extra,
    ]
    proc = subprocess.Popen(
        command, cwd=workdir, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    for line in proc.stdout:
        if line.startswith("epoch 1/"):
            return proc
    pytest.fail(f"the run ended before its first epoch: {proc.communicate()[0]}")


def _complete(url, epochs):
    from mlflow.tracking import MlflowClient

    c = MlflowClient(tracking_uri=url)
    [run] = c.search_runs([c.get_experiment_by_name("cifar_exp").experiment_id])
    assert run.info.status == "FINISHED"
    assert steps(c, run.info.run_id, "train/loss") == list(range(1, 16 * epochs + 1))  # each step once
    assert [m.value for m in c.get_metric_history(run.info.run_id, "epoch")] == list(range(1, epochs + 1))
    assert "plots/confusion_matrix.png" in {a.path for a in c.list_artifacts(run.info.run_id, "plots")}


def test_a_server_that_goes_away_mid_run_loses_nothing(workdir, mlflow_template):
    import shutil

    shutil.copy(mlflow_template, workdir / "server.db")
    serve = dict(
        backend_uri=f"sqlite:///{workdir / 'server.db'}", artifacts=workdir / "art", cwd=workdir, port=free_port()
    )
    with serve_mlflow(**serve) as url:
        proc = _outage_run(workdir, url, workdir / "run", epochs=8)
    # the server is gone: training goes on and writes wait ...
    for line in proc.stdout:
        if "does not take writes" in line:
            break
    # ... until it comes back on the same port
    with serve_mlflow(**serve) as url:
        out = proc.communicate(timeout=300)[0]
        assert proc.returncode == 0, out[-3000:]
        assert "is back" in out
        _complete(url, 8)
    assert not (workdir / "run/mlflow_outbox.json").exists()


def test_a_server_still_away_at_the_end_keeps_the_writes_for_delivery(workdir, mlflow_template, cli_here):
    import shutil

    shutil.copy(mlflow_template, workdir / "server.db")
    serve = dict(
        backend_uri=f"sqlite:///{workdir / 'server.db'}", artifacts=workdir / "art", cwd=workdir, port=free_port()
    )
    run_dir = workdir / "run"
    with serve_mlflow(**serve):
        # two seconds of retries at the end: the wait is the setting, the outbox is the point
        proc = _outage_run(workdir, serve_url(serve), run_dir, 3, "mlflow.finish_retry_s=2")
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, out[-3000:]  # the training itself succeeded
    # the store to deliver to is this run's, in the command the run prints; never the file's
    assert f"python -m cifar_exp.runs --deliver {run_dir} --tracking-uri {serve_url(serve)}" in out
    assert (run_dir / "mlflow_outbox.json").exists() and (run_dir / "checkpoints/last.pt").exists()
    with serve_mlflow(**serve) as url:
        delivered = cli_here("--deliver", str(run_dir), "--tracking-uri", url, module="cifar_exp.runs")
        assert delivered.returncode == 0 and "delivered" in delivered.stdout, delivered.output
        _complete(url, 3)
    assert not (run_dir / "mlflow_outbox.json").exists()


def serve_url(serve: dict) -> str:
    return f"http://127.0.0.1:{serve['port']}"


def test_a_resume_adds_a_segment_and_keeps_what_the_run_began_with(cli_here, workdir):
    """The record only grows: the first segment's config, overrides, output dir and log stay;
    the resume is logged beside them. Short epochs (16 steps, logging every 50) still get a
    train/loss and lr point at each epoch's end."""
    import yaml

    first = workdir / "first"
    began = cli_here(*FAST, "mlflow.log_model=false", "mlflow.system_metrics_every_s=0.5", f"hydra.run.dir={first}")
    assert began.returncode == 0, began.output
    assert cli_here(f"resume={first}", "epochs=2", "mlflow.log_model=false").returncode == 0
    c, run = only_run(workdir)
    rid, tags = run.info.run_id, run.data.tags
    config = yaml.safe_load(open(c.download_artifacts(rid, "hydra/config.yaml")))
    assert config["dataset"]["name"] == "synthetic" and config["optimizer"]["lr"] == 0.05 and config["epochs"] == 1
    assert tags["hydra.output_dir"] == str(first.resolve()) and "optimizer.lr=0.05" in tags["hydra.overrides"]
    assert (
        tags["resume.count"] == "1"
        and tags["resume.1.command"] == f"python -m cifar_exp resume={first} epochs=2 mlflow.log_model=false"
    )
    resumed = {a.path for a in c.list_artifacts(rid, "hydra/resume_1")}
    assert "hydra/resume_1/overrides.yaml" in resumed
    assert "epoch 1/1" in open(c.download_artifacts(rid, "cifar_exp.log")).read()
    assert "epoch 2/2" in open(c.download_artifacts(rid, "resume_1/cifar_exp.log")).read()
    assert steps(c, rid, "train/loss") == [16, 32]
    system = steps(c, rid, "host/cpu_utilization_percentage")
    assert len(system) == len(set(system))  # the resumed series continues, no step twice


class HangingProxy:
    """A tracking server's stand-in on loopback: it answers /health itself and forwards the
    API to `target`, until `hang` is set; from then on API calls get no answer at all, and
    `hung` counts them (how many calls the run spends on a store that does not answer)."""

    def __init__(self, target: Optional[str]):
        import http.server
        import threading

        self.hang = threading.Event()
        self.release = threading.Event()
        self.reached = threading.Event()  # a call got no answer
        self.hung = 0
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path.startswith("/health"):
                    return self._answer(200, b"OK", "text/plain")
                if proxy.hang.is_set() or proxy.target is None:
                    body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                    # the run's own calls; MLflow's system monitor samples on its own thread
                    proxy.hung += b'"host/' not in body  # one thread per call; += under the GIL
                    proxy.reached.set()
                    proxy.release.wait(120)
                    return
                length = int(self.headers.get("Content-Length") or 0)
                request = urllib.request.Request(
                    proxy.target + self.path,
                    method=self.command,
                    data=self.rfile.read(length) if length else None,
                    headers={"Content-Type": self.headers.get("Content-Type", "")},
                )
                try:
                    with urllib.request.urlopen(request, timeout=60) as r:
                        self._answer(r.status, r.read(), r.headers.get("Content-Type", ""))
                except urllib.error.HTTPError as e:
                    self._answer(e.code, e.read(), e.headers.get("Content-Type", ""))

            do_POST = do_PUT = do_GET

            def _answer(self, code, body, kind):
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.target = target
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.release.set()
        self.server.shutdown()


def test_sigterm_while_the_store_hangs_from_the_start_is_heard_at_once(workdir):
    proxy = HangingProxy(None)
    command = [sys.executable, "-m", "cifar_exp", *FAST, f"mlflow.tracking_uri={proxy.url}"]
    try:
        proc = subprocess.Popen(
            command, cwd=workdir, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        assert proxy.reached.wait(120)  # the run's first call to the store, which gets no answer
        time.sleep(1)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)  # a guard against a hang, not the bound
        # heard at once: the hung call is abandoned and no other is made
        assert proxy.hung == 1 and proc.returncode == 128 + signal.SIGTERM, err
        assert "Traceback" not in err and err.startswith("cifar-exp: stopped by signal 15")
        # no signal: one line within the probe's bound, not minutes of retries
        proxy.reached.clear()
        proxy.hung = 0
        alone = subprocess.Popen(
            command, cwd=workdir, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        _, err = alone.communicate(timeout=120)
        assert proxy.hung == 1 and alone.returncode == 2  # one call, bounded by its timeout: no retries
        [line] = err.strip().splitlines()
        assert f"the MLflow tracking server {proxy.url} does not answer" in line
    finally:
        proxy.close()


def test_sigterm_while_the_store_hangs_mid_run_is_honoured_after_one_more_call(workdir, mlflow_server):
    """The server stops answering mid-run: a SIGTERM still stops the run, its checkpoint
    written and the undelivered writes (the KILLED status among them) kept for delivery,
    which later brings them all. The bound is the mechanism's, not the clock's: after the
    signal the run waits on at most the call in flight and one flush (each bounded by the
    HTTP timeout), never the end-of-run retries."""
    from mlflow.tracking import MlflowClient

    proxy = HangingProxy(mlflow_server)
    try:
        run_dir = workdir / "run"
        proc = _outage_run(workdir, proxy.url, run_dir, 20, "mlflow.system_metrics_every_s=1")
        proxy.hang.set()
        time.sleep(1)
        before = proxy.hung
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=180)[0]  # a guard against a hang, not the bound
        assert proxy.hung - before <= 2, out[-2000:]
        assert proc.returncode == 128 + signal.SIGTERM, out[-2000:]
        assert (run_dir / "checkpoints" / "last.pt").is_file() and (run_dir / "mlflow_outbox.json").is_file()
        proxy.hang.clear()  # the server answers again
        proxy.release.set()
        delivered = subprocess.run(
            [sys.executable, "-m", "cifar_exp.runs", "--deliver", str(run_dir), "--tracking-uri", mlflow_server],
            cwd=workdir,
            env=cli_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert delivered.returncode == 0, delivered.stderr
    finally:
        proxy.close()
    c = MlflowClient(tracking_uri=mlflow_server)
    [run] = c.search_runs([c.get_experiment_by_name("cifar_exp").experiment_id])
    assert run.info.status == "KILLED" and steps(c, run.info.run_id, "epoch")[0] == 16
