"""The catalogue of the metrics a run logs, given its config and classes, and which way each
is better. `objective`, `checkpoint.monitor` (best and top-k checkpoints, early stopping),
the sweep summary and the Optuna study's direction all read it: a name the run never logs
is refused before anything trains, and a loss is never maximized."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from cifar_exp.errors import UserError

MIN, MAX = "min", "max"
EPOCH = "epoch"  # the epoch count, logged with each epoch's record
CLASS_PREFIX = "test/acc_class/"


@dataclass(frozen=True)
class Metric:
    name: str
    # "min" or "max": chosen per epoch by objective/monitor; None: a trace (lr, epoch, ...)
    goal: Optional[str]
    # logged once per epoch (else per logging step)
    per_epoch: bool = True


# which way each per-epoch metric is better: a fact the catalogue holds for each metric,
# never read off how its name is spelled (images_per_s rises, a class called "floss" is an
# accuracy)
EPOCH_GOALS = {
    "train/loss_epoch": MIN,
    "train/acc": MAX,
    "time/epoch_s": MIN,
    "time/images_per_s": MAX,
    "test/loss": MIN,
    "test/acc": MAX,
    # the model's trainable parameters: the size side of an accuracy-against-size search
    "model/params": MIN,
}
VAL_GOALS = {"val/loss": MIN, "val/acc": MAX}


def catalogue(cfg, classes: Optional[list[str]]) -> dict[str, Metric]:
    """Every metric a run with `cfg` logs; `classes` None when only loading the data tells
    (then test/acc_class/<name> is taken on trust until the data is loaded)."""
    from cifar_exp.config import TrainerConfig
    from cifar_exp.settings import step_metrics

    steps = ["train/loss", *(["lr"] if schedules(cfg) else []), *step_metrics(TrainerConfig, cfg.trainer)]
    epochs = dict(EPOCH_GOALS)
    if cfg.dataset.val_size > 0 or cfg.dataset.val_fraction > 0:
        epochs.update(VAL_GOALS)
    epochs.update({f"{CLASS_PREFIX}{c}": MAX for c in classes or []})
    metrics = [Metric(n, None, per_epoch=False) for n in steps] + [Metric(EPOCH, None)]
    return {m.name: m for m in metrics + [Metric(n, g) for n, g in epochs.items()]}


def schedules(cfg) -> bool:
    """Whether the learning rate changes during the run (a schedule, or a warmup): only
    then is it a curve worth logging; a constant one is the optimizer.lr param."""
    from cifar_exp.registry import builds

    return builds("scheduler", cfg.scheduler) or cfg.scheduler.warmup_epochs > 0


def objectives(objective: Any) -> list[str]:
    """The metrics `objective` names: one name, or a list of them for a multi-objective
    search (each optimized in its catalogue direction)."""
    return [objective] if isinstance(objective, str) else [str(name) for name in objective]


def goal(name: str) -> str:
    """Which way the per-epoch metric `name` is better, as the catalogue records it: every
    test/acc_class/<class> is an accuracy, whatever the class is called."""
    if name.startswith(CLASS_PREFIX):
        return MAX
    try:
        return {**EPOCH_GOALS, **VAL_GOALS}[name]
    except KeyError:
        raise UserError(f"{name!r} is not a per-epoch metric of this project: {', '.join(EPOCH_GOALS)}") from None


def selectable(cfg, classes: Optional[list[str]]) -> list[str]:
    """The names objective and checkpoint.monitor may take."""
    return [m.name for m in catalogue(cfg, classes).values() if m.goal and m.per_epoch]


def check_selected(cfg, key: str, name: str, classes: Optional[list[str]]) -> Optional[str]:
    """None when `name` is a per-epoch metric of this run, else what is wrong with it."""
    known = selectable(cfg, classes)
    if name in known or (classes is None and name.startswith(CLASS_PREFIX) and len(name) > len(CLASS_PREFIX)):
        return None
    plain = [k for k in known if not k.startswith(CLASS_PREFIX)]
    if name.startswith(CLASS_PREFIX):
        return f"{CLASS_PREFIX}<class> for a class of this dataset: {', '.join(classes or [])}"
    hint = " (val/* needs dataset.val_size or dataset.val_fraction > 0)" if name.startswith("val/") else ""
    return f"a metric the run logs per epoch: {', '.join(plain)} or {CLASS_PREFIX}<class>{hint}"


# metrics a run computes every epoch but logs only when objective or checkpoint.monitor
# names them: a constant (the parameter count) would be a flat chart in every run
ON_REQUEST = ("model/params",)


def logged(values: dict, selected: set) -> dict:
    """An epoch's metrics as they go to MLflow: per-class accuracies and ON_REQUEST ones only
    where objective or checkpoint.monitor names one. The run's per-class table holds them
    all; a chart per class (a hundred for CIFAR-100) would bury the loss and accuracy charts."""
    return {k: v for k, v in values.items() if not (k.startswith(CLASS_PREFIX) or k in ON_REQUEST) or k in selected}
