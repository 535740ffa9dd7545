"""What a run shows at its end, or when it stops: the test report, the learning curves,
the confusion matrix, the per-class table, sample predictions and the logged model."""

from __future__ import annotations

import copy
import csv
import logging
from pathlib import Path
from typing import Callable, Optional

from cifar_exp import plots
from cifar_exp.checkpoint import RunState
from cifar_exp.checks import image_size
from cifar_exp.config import Config
from cifar_exp.data import Dataset
from cifar_exp.loop import Evaluation, Trainer
from cifar_exp.serving import Served, describe
from cifar_exp.tracking import ModelCard, Tracker

log = logging.getLogger("cifar_exp")


def report(
    cfg: Config,
    trainer: Trainer,
    data: Dataset,
    tracker: Tracker,
    state: RunState,
    run_dir: Path,
    test: Evaluation,
    stopping: Callable[[], bool] = lambda: False,
) -> None:
    """The test report, the run-end plots and the logged model. Every image shown comes from
    the one on-device dataset; only the few drawn move to the CPU, inside plots. Once
    `stopping()` says a stop was asked for, the slow rest (predictions, the model) is left."""
    log.info("%s", test.report(data.classes))
    if (run_dir / "profile").is_dir():
        tracker.log_artifact(run_dir / "profile", "profile")
    record_results(tracker, data, state, run_dir, test)
    if stopping():
        return
    idx = plots.showcase(len(data.test), data.device)
    images, labels = data.test.x[idx], data.test.y[idx]
    predicted = trainer.predict(data.normalize(images))
    tracker.log_artifact(
        plots.predictions(images, predicted, labels, data.classes, run_dir / "plots" / "predictions.png"), "plots"
    )
    # a pruned trial's model is not worth a row in the Models tab: its checkpoint keeps it
    if cfg.mlflow.enabled and cfg.mlflow.log_model and not stopping() and not tracker.was_cut_short:
        served = Served(copy.deepcopy(trainer.final_module).cpu(), data.normalize)
        tracker.log_model(served, images[:2].cpu(), model_card(cfg, data, tracker, state, test))


def model_card(cfg: Config, data: Dataset, tracker: Tracker, state: RunState, test: Evaluation) -> ModelCard:
    """The logged model's card: one model per segment, each its own name, the model of the
    run's last step."""
    name = f"{cfg.model.name}-{(tracker.run_id or '')[:8]}" + (f"-resume{state.segment}" if state.segment else "")
    [test_data] = [d for d in data.lineage(cfg.dataset) if d["context"] == "test"]
    trained = (
        f"Trained by run {tracker.run_id} ({state.epoch} epochs); test/acc {test.acc:.4f} on "
        f"{test_data['name']} ({int(test.confusion.sum())} images, {test.precision})."
    )
    description, metadata = describe(data.classes, cfg.dataset.mean, cfg.dataset.std, image_size(cfg.dataset), trained)
    tested_on = {"test_dataset": {"name": test_data["name"], "digest": test_data["digest"]}}
    return ModelCard(name, description, {**metadata, **tested_on}, state.logged_step)


def record_results(tracker: Tracker, data: Dataset, state: RunState, run_dir: Path, test: Optional[Evaluation]) -> None:
    """What the finished epochs show, cheaply: the learning curves, and the newest test
    evaluation's confusion matrix and per-class table. A stopped run logs them too."""
    plot_dir = run_dir / "plots"
    if state.history:
        tracker.log_artifact(plots.learning_curves(state.history, plot_dir / "learning_curves.png"), "plots")
    if test is not None:
        tracker.log_artifact(
            plots.confusion_matrix(test.confusion, data.classes, plot_dir / "confusion_matrix.png"), "plots"
        )
        tracker.log_artifact(per_class_table(test, data.classes, run_dir / "per_class_accuracy.csv"))


def per_class_table(test: Evaluation, classes: list[str], path: Path) -> Path:
    """The test set's accuracy (recall) and precision per class, a table MLflow previews."""
    confusion = test.confusion.cpu()
    correct, images, predicted = confusion.diag(), confusion.sum(1), confusion.sum(0)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["class", "images", "correct", "accuracy", "precision"])
        for i, name in enumerate(classes):
            writer.writerow(
                [
                    name,
                    int(images[i]),
                    int(correct[i]),
                    f"{float(correct[i] / max(int(images[i]), 1)):.4f}",
                    f"{float(correct[i] / predicted[i]):.4f}" if predicted[i] else "",
                ]
            )
    return path
