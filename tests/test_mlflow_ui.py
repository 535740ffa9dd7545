"""What a user meets in the MLflow UI, read back through MlflowClient: the view an experiment
opens in, a resumed run that tells the truth, system metrics on short runs, clean values,
no duplicated params and a per-class table. Sweeps' names, marks and summaries are checked
with the sweeps themselves (test_callbacks.py, test_study.py)."""

from __future__ import annotations

import csv
import logging
import shutil

import pytest
import torch
import yaml

from cifar_exp import tracking
from cifar_exp.metrics import logged
from cifar_exp.progress import EpochProgress
from cifar_exp.runtime import pick_precision

from helpers import FAST, compose_cfg, register_test_models, registry_restored

KIND = "mlflow.experimentKind"
NO_SYSTEM = "mlflow.system_metrics_every_s=0"


def client_of(workdir):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")


@pytest.fixture(scope="module")
def finished(tmp_path_factory, mlflow_template):
    """One short run (three 16-step epochs of 50 ms steps: a few seconds) and its record."""
    from cifar_exp.run import run

    workdir = tmp_path_factory.mktemp("finished")
    shutil.copy(mlflow_template, workdir / "mlflow.db")
    with pytest.MonkeyPatch.context() as here, registry_restored():
        here.chdir(workdir)
        here.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{workdir / 'mlflow.db'}")
        register_test_models()
        run(compose_cfg(*FAST, "model=slow_cnn", "epochs=3", "mlflow.log_model=false"))
    c = client_of(workdir)
    [run] = c.search_runs([c.get_experiment_by_name("cifar_exp").experiment_id])
    return c, run


@pytest.mark.slow
def test_a_run_s_experiment_opens_in_the_model_training_view(finished):
    c, run = finished
    assert c.get_experiment(run.info.experiment_id).tags[KIND] == "custom_model_development"


def test_an_experiment_without_a_kind_gets_one_and_a_chosen_kind_stays(workdir):
    store = client_of(workdir)
    fresh = tracking.ensure_experiment(store, "fresh")
    assert store.get_experiment(fresh).tags[KIND] == "custom_model_development"
    older = store.create_experiment("older")  # made before the project set a kind
    assert tracking.ensure_experiment(store, "older") == older
    assert store.get_experiment(older).tags[KIND] == "custom_model_development"
    chosen = store.create_experiment("chosen", tags={KIND: "genai_development"})
    tracking.ensure_experiment(store, "chosen")
    assert store.get_experiment(chosen).tags[KIND] == "genai_development"  # someone's choice stays


@pytest.mark.slow
def test_a_five_second_run_has_true_system_metrics_from_its_start_to_its_end(finished):
    """MLflow's own loop samples every 10 s and takes its first CPU reading against nothing
    (0 %): a run of a few seconds had no system metrics, or a CPU of 0."""
    c, run = finished
    cpu = c.get_metric_history(run.info.run_id, "host/cpu_utilization_percentage")
    assert len(cpu) >= 2 and all(m.value > 0 for m in cpu), [(m.step, m.value) for m in cpu]
    assert sorted(m.step for m in cpu) == list(range(len(cpu)))
    assert c.get_metric_history(run.info.run_id, "host/system_memory_usage_megabytes")


@pytest.mark.slow
def test_the_run_s_own_metrics_come_before_the_host_s(finished):
    """MLflow's UI lists a run's metrics in the order the store first saw them, and puts any
    system/* metric first: test/acc must lead, CPU and memory follow."""
    c, run = finished
    keys = list(run.data.metrics)
    first_host = min(i for i, k in enumerate(keys) if k.startswith("host/"))
    assert keys.index("test/acc") < first_host and not [k for k in keys if k.startswith("system/")], keys


@pytest.mark.slow
def test_metric_values_carry_only_the_digits_they_have(finished):
    c, run = finished
    for key in run.data.metrics:
        for m in c.get_metric_history(run.info.run_id, key):
            if not key.startswith("host/"):  # float32's 7 significant digits, whatever the name
                assert m.value == tracking.rounded(m.value), (key, m.value)


@pytest.mark.slow
def test_the_first_charts_are_loss_and_accuracy_and_no_param_is_said_twice(finished):
    c, run = finished
    run_metrics = {k for k in run.data.metrics if not k.startswith("host/")}
    assert run_metrics == {
        "train/loss",  # no lr: a constant one is the optimizer.lr param, not a flat curve
        "epoch",
        "train/loss_epoch",
        "train/acc",
        "test/loss",
        "test/acc",
        "time/epoch_s",
        "time/images_per_s",
    }
    params = run.data.params
    for group in ("model", "optimizer", "scheduler", "dataset", "trainer"):
        assert group not in params and f"{group}.name" in params
    # how the run is observed (mlflow.*, dataset paths, the progress bar) is in its config file
    assert not [k for k in params if k.startswith(("mlflow.", "checkpoint.")) or k in ("epochs", "resume")]
    assert len(params) + len(run.data.metrics) + len(run.data.tags) < 60
    # what tells runs apart, not 50 constants: the headline keys and what the command set
    assert len(params) <= 12 and params["optimizer.momentum"] == "0.9", sorted(params)


@pytest.mark.slow
def test_per_class_accuracy_is_a_table_artifact(finished):
    c, run = finished
    with open(c.download_artifacts(run.info.run_id, "per_class_accuracy.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [r["class"] for r in rows] == [f"class{i}" for i in range(10)]
    assert sum(int(r["images"]) for r in rows) == 500
    correct = sum(int(r["correct"]) for r in rows)
    assert correct / 500 == run.data.metrics["test/acc"]
    assert all(float(r["accuracy"]) == round(int(r["correct"]) / int(r["images"]), 4) for r in rows)


def test_a_deleted_experiment_is_one_line_naming_how_to_restore_it(workdir):
    from cifar_exp.errors import UserError

    store = client_of(workdir)
    store.delete_experiment(store.create_experiment("binned"))
    with pytest.raises(UserError, match="experiment 'binned' is deleted; restore it"):
        tracking.connect(f"sqlite:///{workdir / 'mlflow.db'}", "binned")


def test_a_per_class_metric_or_the_parameter_count_is_logged_only_when_a_run_selects_it():
    epoch = {"test/acc": 0.5, "test/acc_class/cat": 0.4, "test/acc_class/dog": 0.6, "model/params": 62006}
    assert logged(epoch, {"test/acc"}) == {"test/acc": 0.5}
    assert logged(epoch, {"test/acc_class/cat"}) == {"test/acc": 0.5, "test/acc_class/cat": 0.4}
    assert logged(epoch, {"test/acc", "model/params"}) == {"test/acc": 0.5, "model/params": 62006}


@pytest.mark.slow
def test_a_resumed_run_says_what_ran(cli_here, workdir):
    """Extended from 1 to 2 epochs by a resume: its epochs, name, description and config
    file say 2 and the checkpoint's settings, its history keeps both commands, its log goes
    on in the run dir's, and each segment's model has its own name."""
    first = workdir / "first"
    assert cli_here(*FAST, NO_SYSTEM, f"hydra.run.dir={first}").returncode == 0
    resumed = cli_here(f"resume={first}", "epochs=2", NO_SYSTEM)
    assert resumed.returncode == 0, resumed.output
    c = client_of(workdir)
    [run] = c.search_runs([c.get_experiment_by_name("cifar_exp").experiment_id])
    rid = run.info.run_id
    assert run.data.tags["epochs"] == "2" and "epochs" not in run.data.params
    here = pick_precision("auto", torch.device("cpu")).name  # bf16 on a CPU with bf16 units
    assert run.data.tags["precision"] == here and "precision" not in run.data.params
    assert run.info.run_name == "lr=0.05 momentum=0.9 epochs=2 synthetic simple_cnn"
    description = run.data.tags["mlflow.note.content"]
    assert description.startswith(f"`python -m cifar_exp {' '.join(FAST)} mlflow.system_metrics_every_s=0 epochs=2`")
    started, again = description.split("**History**")[1].strip().splitlines()
    assert "started: `python -m cifar_exp" in started and "epochs=2" not in started
    assert again.endswith(f"resumed after epoch 1 of 2: `python -m cifar_exp resume={first} epochs=2 {NO_SYSTEM}`")
    # the resume works in the run dir: no other outputs/<time>/, and Hydra's first files stay
    assert not (workdir / "outputs").exists()
    assert (first / ".hydra/overrides.yaml").read_text() != (first / ".hydra/resume_1/overrides.yaml").read_text()
    assert "epoch 1/1" in (log := (first / "cifar_exp.log").read_text()) and "epoch 2/2" in log
    config = yaml.safe_load(open(c.download_artifacts(rid, "hydra/resume_1/config.yaml")))
    assert config["dataset"]["name"] == "synthetic" and config["optimizer"]["lr"] == 0.05 and config["epochs"] == 2
    assert yaml.safe_load(open(c.download_artifacts(rid, "hydra/config.yaml")))["epochs"] == 1
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")
    models = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list")
    assert sorted(m.name for m in models) == [f"simple_cnn-{rid[:8]}", f"simple_cnn-{rid[:8]}-resume1"]


def test_progress_lines_show_a_loss_only_when_a_new_one_was_logged(caplog):
    """The plain lines (no terminal) at each quarter of an epoch: a loss logged every 50
    steps in an epoch of 16 steps must not be repeated as if it were current."""
    with caplog.at_level(logging.INFO, logger="cifar_exp"), EpochProgress(True, 16, 0, 1, 1, 8) as bar:
        for step in range(1, 16):
            bar.update(0.25 if step == 2 else None)
    lines = [r.getMessage() for r in caplog.records]
    assert [("loss" in line) for line in lines] == [True, False, False], lines


@pytest.mark.parametrize(
    "uri, run_id, link",
    [
        ("sqlite:///mlflow.db", "abc", "http://127.0.0.1:5000/#/experiments/3/runs/abc?workflowType=machine_learning"),
        ("http://team:5000/", None, "http://team:5000/#/experiments/3/runs?workflowType=machine_learning"),
    ],
)
def test_the_ui_link_opens_the_model_training_view_where_the_store_is_served(uri, run_id, link):
    assert tracking.ui_link(uri, "3", run_id) == link
    assert tracking.ui_line(uri, "3", run_id).endswith("to serve it)") == uri.startswith("sqlite")


@pytest.mark.parametrize(
    "name, capped",
    [
        ("lr=0.05 momentum=0.9 epochs=2", "lr=0.05 momentum=0.9 epochs=2"),
        ("lr=0.05 momentum=0.9 epochs=2 log_every_n_steps=1", "lr=0.05 momentum=0.9 …"),
        ("x" * 40, "x" * 29 + "…"),  # one word longer than the limit is cut itself
    ],
)
def test_a_name_is_cut_between_words(name, capped):
    from cifar_exp.job import _capped

    assert _capped(name, 30) == capped


def test_a_sweep_parent_names_its_keys_before_long_search_spaces():
    from cifar_exp.job import sweep_name

    overrides = ["optimizer.lr=tag(log, interval(1e-5, 1.0))", "optimizer.weight_decay=tag(log, interval(1e-6, 1e-2))"]
    name = sweep_name([*overrides, "dataset.batch_size=choice(64,128,256)"], ["optimizer.lr"])
    assert name == "sweep lr=… weight_decay=… batch_size=choice(64,128,256)"
