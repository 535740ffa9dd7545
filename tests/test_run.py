"""run.py: the run-end report reads the one on-device dataset, whatever the device."""

from __future__ import annotations

import pytest
import torch

from cifar_exp import plots
from cifar_exp.checkpoint import RunState
from cifar_exp.data import load_dataset
from cifar_exp.distributed import World
from cifar_exp.loop import Evaluation
from cifar_exp.run import build_trainer, report
from cifar_exp.tracking import NullTracker
from cifar_exp.validation import validate

from helpers import FAST, compose_cfg


def test_run_end_plots_take_their_images_from_the_one_dataset_on_the_training_device(tmp_path, monkeypatch):
    """torch's meta device stands in for a GPU: like CUDA it refuses any op that mixes its
    tensors with CPU tensors. The report must predict on the dataset's own device tensors
    (the old code fed CPU images through device-resident normalization and failed on CUDA,
    after the whole run had trained) and hand the plot tensors still on that device."""
    meta = torch.device("meta")
    cfg = validate(
        compose_cfg("dataset=synthetic", "dataset.train_size=64", "dataset.test_size=40", "mlflow.enabled=false")
    )
    data = load_dataset(cfg.dataset, meta)
    trainer = build_trainer(cfg, data, steps_per_epoch=1, device=meta, world=World())
    drawn = {}

    def capture(images, predicted, labels, classes, path):
        drawn.update(images=images, predicted=predicted, labels=labels)
        return path

    monkeypatch.setattr(plots, "predictions", capture)
    test = Evaluation(loss=1.0, confusion=torch.eye(data.num_classes, dtype=torch.int64))
    report(cfg, trainer, data, NullTracker(), RunState(classes=data.classes), tmp_path, test)
    assert {t.device for t in drawn.values()} == {meta}
    assert drawn["images"].shape == (32, 3, 32, 32) and drawn["images"].dtype == torch.uint8
    assert drawn["predicted"].shape == drawn["labels"].shape == (32,)
    assert (tmp_path / "plots/confusion_matrix.png").exists()


def test_loaders_read_the_dataset_tensors_themselves():
    cfg = validate(compose_cfg("dataset=synthetic", "dataset.val_size=100"))
    data = load_dataset(cfg.dataset, torch.device("cpu"))
    for split in ("train", "val", "test"):
        loader = data.loader(split, 32)
        assert loader.split is getattr(data, split) and loader.normalize is data.normalize


@pytest.mark.slow
def test_divergence_stops_the_run_failed_without_a_non_finite_checkpoint(cli, workdir):
    import math

    from mlflow.tracking import MlflowClient

    run_dir = workdir / "run"
    result = cli(
        *FAST,
        "optimizer.lr=1e9",
        "trainer.log_every_n_steps=1",
        "checkpoint.every_n_steps=1",
        f"hydra.run.dir={run_dir}",
    )
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.output
    assert "training diverged: the loss is nan at step" in lines[0]
    assert f"last good checkpoint: {run_dir / 'checkpoints/last.pt'}" in lines[0]
    state = torch.load(run_dir / "checkpoints/last.pt", weights_only=True)
    assert all(torch.isfinite(t).all() for t in state["trainer"]["model"].values())
    assert not (run_dir / "checkpoints/best.pt").exists()
    c = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    [run] = c.search_runs([c.get_experiment_by_name("cifar_exp").experiment_id])
    assert run.info.status == "FAILED" and "diverged" in run.data.tags["error"]
    assert not math.isfinite(c.get_metric_history(run.info.run_id, "train/loss")[-1].value)


@pytest.mark.slow
def test_divergence_found_at_the_epoch_end_writes_no_checkpoint(cli, workdir):

    run_dir = workdir / "run"
    result = cli(*FAST, "optimizer.lr=1e9", "mlflow.enabled=false", f"hydra.run.dir={run_dir}")
    assert result.returncode == 2 and "no checkpoint of this run holds finite weights" in result.stderr
    assert not (run_dir / "checkpoints").exists() or not list((run_dir / "checkpoints").iterdir())


def _client(workdir):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")


@pytest.mark.slow
def test_early_stopping_on_a_plateau_ends_finished_and_says_why(train, workdir):
    done = train(*FAST, "optimizer.lr=1e-9", "epochs=20", "trainer.early_stopping_patience=2", "mlflow.log_model=false")
    assert "stopping early after epoch" in done.log
    c = _client(workdir)
    [run] = c.search_runs([c.get_experiment_by_name("cifar_exp").experiment_id])
    epochs = [m.value for m in c.get_metric_history(run.info.run_id, "epoch")]
    assert run.info.status == "FINISHED" and len(epochs) <= 5
    assert "no improvement of test/acc for 2 evaluated epochs" in run.data.tags["cifar_exp.early_stopped"]


@pytest.mark.slow
def test_evaluating_every_n_epochs_skips_the_others_but_not_the_last_and_trains_the_same(train):
    ends = {}
    for n in (1, 2):
        done = train(
            *FAST, "epochs=3", f"trainer.eval_every_n_epochs={n}", "mlflow.enabled=false", run_dir=f"every_{n}"
        )
        ends[n] = done.log, torch.load(done.run_dir / "checkpoints/last.pt", weights_only=True)
    log, end = ends[2]
    assert [h["epoch"] for h in end["run"]["history"] if "test/acc" in h] == [2, 3]
    [first] = [line for line in log.splitlines() if "epoch 1/3:" in line]
    assert "train loss" in first and "test" not in first
    # evaluating changes nothing the training depends on: the same weights either way
    every_epoch = ends[1][1]["trainer"]["model"]
    assert all(torch.equal(every_epoch[k], v) for k, v in end["trainer"]["model"].items())


@pytest.mark.slow
def test_early_stopping_counts_only_the_evaluated_epochs(train, workdir):
    done = train(
        *FAST,
        "optimizer.lr=1e-9",
        "epochs=20",
        "trainer.eval_every_n_epochs=2",
        "trainer.early_stopping_patience=2",
        "mlflow.log_model=false",
    )
    # epoch 2 sets the best, 4 and 6 do not improve on it
    assert "stopping early after epoch 6" in done.log
    c = _client(workdir)
    [run] = c.search_runs([c.get_experiment_by_name("cifar_exp").experiment_id])
    assert [m.value for m in c.get_metric_history(run.info.run_id, "epoch")] == [1, 2, 3, 4, 5, 6]
    assert len(c.get_metric_history(run.info.run_id, "test/acc")) == 3


@pytest.mark.slow
def test_debug_presets_run_end_to_end(train, workdir):
    import re

    fast = train("dataset=synthetic", "debug=fast", "mlflow.enabled=false", run_dir="fast")
    assert "epoch 1/1" in fast.log
    overfit = train("dataset=synthetic", "debug=overfit", "mlflow.enabled=false", run_dir="overfit")
    last_loss = float(re.findall(r"train loss ([\d.]+)", overfit.log)[-1])
    assert last_loss < 0.05  # two batches, 40 epochs: memorized
    train("dataset=synthetic", "debug=profile", "mlflow.log_model=false", run_dir="profile")
    c = _client(workdir)
    [run] = c.search_runs([c.get_experiment_by_name("cifar_exp").experiment_id])
    assert {a.path for a in c.list_artifacts(run.info.run_id, "profile")} == {"profile/ops.txt", "profile/trace.json"}


@pytest.mark.slow
def test_every_new_training_key_together_in_one_short_run(train, workdir):
    done = train(
        *FAST,
        "epochs=3",
        "dataset.val_size=200",
        "objective=val/acc",
        "dataset.augment=true",
        "dataset.cutout=8",
        "dataset.mixup_alpha=0.2",
        "dataset.cutmix_alpha=1.0",
        "trainer.accumulate_grad_batches=2",
        "trainer.gradient_clip_val=1.0",
        "trainer.ema_decay=0.9",
        "trainer.early_stopping_patience=5",
        "scheduler=cosine",
        "scheduler.warmup_epochs=0.5",
        "optimizer.decay_norm_and_bias=false",
        "checkpoint.save_top_k=2",
        "trainer.log_every_n_steps=2",
    )
    assert len(list((done.run_dir / "checkpoints").glob("top_epoch_*.pt"))) == 2
    state = torch.load(done.run_dir / "checkpoints/last.pt", weights_only=True)
    assert state["trainer"]["ema"] is not None and len(state["run"]["top"]) == 2
    c = _client(workdir)
    [run] = c.search_runs([c.get_experiment_by_name("cifar_exp").experiment_id])
    assert run.info.status == "FINISHED" and c.get_metric_history(run.info.run_id, "train/grad_norm")
    assert run.data.tags["checkpoint.monitor"] == "val/acc"


def test_a_model_initialized_from_data_sees_every_class_of_a_class_sorted_folder():
    from cifar_exp.run import INIT_IMAGES, init_images

    per_class = INIT_IMAGES  # ten classes, stored class by class as an image folder lists them
    labels = torch.arange(10).repeat_interleave(per_class)
    images = labels.view(-1, 1, 1, 1).expand(-1, 3, 2, 2).to(torch.uint8)
    picked = init_images(images, seed=0)
    assert len(picked) == INIT_IMAGES and set(picked[:, 0, 0, 0].tolist()) == set(range(10))
    assert torch.equal(picked, init_images(images, seed=0))  # the same for the same seed


def test_a_run_says_its_precision_and_compile_and_refuses_forced_bf16_without_the_units(train, workdir, monkeypatch):
    from cifar_exp import runtime
    from cifar_exp.errors import UserError

    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: False)
    small = [
        "dataset=synthetic",
        "dataset.train_size=64",
        "dataset.test_size=32",
        "mlflow.enabled=false",
        "trainer.progress=false",
        "trainer.device=cpu",
    ]
    with pytest.raises(UserError, match="trainer.amp=true is invalid on cpu"):
        train(*small, "trainer.amp=true")
    assert not (workdir / "run/checkpoints").exists()
    log = train(*small, "trainer.compile=auto").log
    assert "precision float32 (cpu without native bf16)" in log
    assert "torch.compile off (auto on cpu)" in log


def test_test_time_views_are_used_only_by_the_last_epochs_evaluation(train, monkeypatch):
    from cifar_exp.loop import Trainer

    seen, evaluate = [], Trainer.evaluate

    def recording(self, loader, num_classes, tta=True):
        seen.append(tta)
        return evaluate(self, loader, num_classes, tta)

    monkeypatch.setattr(Trainer, "evaluate", recording)
    small = ["dataset=synthetic", "dataset.train_size=64", "dataset.test_size=32", "mlflow.enabled=false"]
    small += ["trainer.progress=false", "trainer.eval_flip=true", "epochs=3"]
    train(*small)
    assert seen == [False, False, True]  # one test evaluation an epoch
    seen.clear()
    train(*small, "trainer.tta_every_eval=true", run_dir="every")
    assert seen == [True, True, True]


@pytest.mark.slow
def test_a_gradient_norm_above_the_warning_is_said_and_logged_without_clipping(train, workdir):
    done = train(*FAST, "dataset.train_size=256", "trainer.grad_norm_warn=1e-6", "trainer.log_every_n_steps=1")
    warned = [line for line in done.log.splitlines() if "gradient norm" in line]
    assert warned and "> trainer.grad_norm_warn" in warned[0]
    c = _client(workdir)
    [run] = c.search_runs([c.get_experiment_by_name("cifar_exp").experiment_id])
    norms = [m.value for m in c.get_metric_history(run.info.run_id, "train/grad_norm")]
    assert len(norms) == 2 and all(n > 1e-6 for n in norms)  # two steps of 128 images, nothing clipped to 1e-6
