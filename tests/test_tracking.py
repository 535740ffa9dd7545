"""What a run leaves in MLflow: params, metric series, artifacts, model, a true status."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import json
import urllib.request

import pytest
import torch

from conftest import FAST, cli_env, run_dirs, serve_mlflow
from cifar_exp.config import flatten

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


def test_flatten_dotted_keys():
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": {}}) == {"a.b": 1, "a.c.d": [1, 2], "e": {}}


def test_two_epoch_run_is_fully_logged(cli, workdir):
    result = cli(*FAST, "epochs=2", "trainer.log_every_n_steps=1")
    assert result.returncode == 0, result.output
    c, run = only_run(workdir)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "simple_cnn dataset=synthetic lr=0.05 momentum=0.9 epochs=2 log_every_n_steps=1"
    p = run.data.params
    assert p["optimizer.lr"] == "0.05" and p["epochs"] == "2" and p["dataset.batch_size"] == "128"
    assert p["model.name"] == "simple_cnn" and p["dataset.name"] == "synthetic"
    [run_dir] = run_dirs(workdir)
    assert run.data.tags["hydra.output_dir"] == str(run_dir.resolve())
    assert "optimizer.lr=0.05" in run.data.tags["hydra.overrides"]
    assert run.data.tags["device"] == "cpu" and run.data.tags["version.torch"] == torch.__version__

    per_epoch = 16  # ceil(2000 / 128)
    assert steps(c, run.info.run_id, "train/loss") == list(range(1, 2 * per_epoch + 1))
    assert steps(c, run.info.run_id, "lr") == list(range(1, 2 * per_epoch + 1))
    for key in ("train/loss_epoch", "train/acc", "test/loss", "test/acc", "epoch",
                "test/acc_class/class3", "time/epoch_s", "time/images_per_s"):
        assert steps(c, run.info.run_id, key) == [per_epoch, 2 * per_epoch], key
    accs = [m.value for m in c.get_metric_history(run.info.run_id, "test/acc")]
    assert all(0 <= a <= 1 for a in accs) and accs[-1] > 0.5
    assert [m.value for m in c.get_metric_history(run.info.run_id, "epoch")] == [1, 2]

    artifacts = {a.path for a in c.list_artifacts(run.info.run_id)}
    artifacts |= {a.path for d in ("plots", "hydra") for a in c.list_artifacts(run.info.run_id, d)}
    for name in ("cifar_exp.log", "hydra/config.yaml", "hydra/overrides.yaml", "plots/samples.png",
                 "plots/learning_curves.png", "plots/confusion_matrix.png", "plots/predictions.png"):
        assert name in artifacts, artifacts

    # the logged model reloads and predicts exactly as the checkpoint's weights do
    import mlflow
    import mlflow.pytorch

    from cifar_exp.models import SimpleCNN

    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")
    [logged] = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list")
    assert logged.source_run_id == run.info.run_id
    loaded = mlflow.pytorch.load_model(logged.model_uri)
    reference = SimpleCNN()
    reference.load_state_dict(torch.load(run_dir / "checkpoints/last.pt", weights_only=True)["trainer"]["model"])
    x = torch.randn(5, 3, 32, 32)
    with torch.inference_mode():
        assert torch.equal(loaded(x), reference.eval()(x))


def test_a_raising_run_ends_failed_with_its_metrics(cli, workdir):
    result = cli(*FAST, "model=exploding_cnn", "trainer.log_every_n_steps=1", module="testing_cli")
    assert result.returncode != 0
    c, run = only_run(workdir)
    assert run.info.status == "FAILED"
    assert "boom at step 5" in run.data.tags["error"]
    assert steps(c, run.info.run_id, "train/loss") == [1, 2, 3, 4]
    assert "error.txt" in {a.path for a in c.list_artifacts(run.info.run_id)}


def test_sigint_ends_killed_with_a_checkpoint(workdir):
    proc = subprocess.Popen([sys.executable, "-m", "testing_cli", *FAST, "model=slow_cnn",
                             "epochs=50", "trainer.log_every_n_steps=1"],
                            cwd=workdir, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    for line in proc.stdout:
        if line.startswith("epoch 1/50"):
            break
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGINT, err
    assert "resume with" in err and "resume=" in err
    c, run = only_run(workdir)
    assert run.info.status == "KILLED"
    logged = steps(c, run.info.run_id, "train/loss")
    assert logged == list(range(1, len(logged) + 1)) and len(logged) > 16
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
    req = urllib.request.Request(f"{url}/api/2.0/mlflow/{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    return json.load(urllib.request.urlopen(req, timeout=10))


def test_run_logged_to_a_tracking_server_is_visible_through_rest(cli, workdir, mlflow_server):
    from mlflow.tracking import MlflowClient

    result = cli(*FAST, f"mlflow.tracking_uri={mlflow_server}", "mlflow.experiment_name=served",
                 "mlflow.log_model=false")
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


def test_runs_table_lists_runs_best_first(cli, workdir):
    for lr in ("0.05", "0.0001"):
        assert cli(*FAST, f"optimizer.lr={lr}", "mlflow.log_model=false").returncode == 0
    result = cli(module="cifar_exp.runs")
    assert result.returncode == 0, result.output
    header, first, second = result.stdout.strip().splitlines()
    assert header.split()[:7] == ["run", "status", "model", "optimizer", "lr", "epochs", "dataset"]
    assert "0.05" in first.split() and "0.0001" in second.split()  # higher test/acc first
    assert "FINISHED" in first and "simple_cnn" in first
    assert cli("--experiment", "nope", module="cifar_exp.runs").returncode == 1
