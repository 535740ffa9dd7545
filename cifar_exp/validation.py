"""The one check of a whole run's config, wherever it comes from (the command line, a preset,
a sweep trial, a stored config): each group's schema checks its own keys, then the rules
that tie the run together sit here, against one catalogue of the metrics it will log.
What can be derived (a loss is minimized) is derived, and a setting that says otherwise is
refused. Every problem is one UserError naming the key, the value and the limit.

Nothing here imports torch: config errors stay fast."""

from __future__ import annotations

import math
import os
from typing import Any, Optional, cast

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cifar_exp import metrics, steps
from cifar_exp.checks import require
from cifar_exp.config import Config
from cifar_exp.errors import UserError, reason
from cifar_exp.registry import REGISTRY, on_schemas, option


def validate(cfg: DictConfig, *, paths: bool = True, origin: str = "") -> Config:
    """The run's config as typed objects, after every check; `paths` False leaves out the
    rules about files on this machine (a stored config read by a tool that loads no data).
    `origin` prefixes each message (a checkpoint's path)."""
    try:
        _check_option_keys(cfg)
        run = typed(plain(cfg))
        run.check()
        if paths:
            run.dataset.check_paths("dataset")
        check_run(run)
    except UserError as e:
        raise UserError(f"{origin}: {e}" if origin else str(e)) from None
    return run


def plain(cfg: DictConfig) -> dict:
    """The task's keys (not Hydra's), resolved, as plain values."""
    try:
        return {
            k: (OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg[k]) else cfg[k])
            for k in cfg
            if k != "hydra"
        }
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        raise UserError(f"{key} cannot be resolved: {reason(e)}") from None


def typed(values: dict) -> Config:
    """Plain values as the schemas' objects: each required value present, each float finite."""
    _walk(values, "")
    return cast(Config, OmegaConf.to_object(on_schemas(values)))


def _walk(tree: Any, path: str) -> None:
    if isinstance(tree, dict):
        for key, value in tree.items():
            _walk(value, f"{path}{key}.")
    elif isinstance(tree, (list, tuple)):
        key = path.rstrip(".")
        require(all(math.isfinite(v) for v in tree if isinstance(v, float)), key, "finite numbers", tree)
        for i, value in enumerate(tree):
            _walk(value, f"{path}{i}.")
    elif tree == "???":
        key = path.rstrip(".")
        raise UserError(
            f"{key} is required" + (" (a directory with train/ and test/)" if key == "dataset.root" else "")
        )
    elif isinstance(tree, float) and not math.isfinite(tree):
        require(False, path.rstrip("."), "a finite number", tree)


def _check_option_keys(cfg: DictConfig) -> None:
    """A group whose `name` was overridden alone still has the old option's keys."""
    for group in REGISTRY:
        if group not in cfg or not OmegaConf.is_config(cfg[group]):
            continue
        chosen = option(group, cfg[group].get("name"))
        schema = OmegaConf.get_type(cfg[group])
        if schema not in (dict, None) and schema is not chosen.schema:
            raise UserError(
                f"{group}.name={chosen.name} does not match the {group} option's keys; "
                f"choose the option with {group}={chosen.name}"
            )


# --- the rules that tie the run together ---------------------------------------------------
def check_run(run: Config) -> None:
    classes = run.dataset.class_names()
    check_metrics(run, classes)
    sizes = run.dataset.sizes()
    if sizes is not None:
        check_length(run, *sizes)


def check_metrics(run: Config, classes: Optional[list[str]]) -> None:
    """objective and checkpoint.monitor name per-epoch metrics this run logs; a set
    checkpoint.mode agrees with the monitored metric's direction."""
    check_objective(run.objective)
    named = [("objective", name) for name in metrics.objectives(run.objective)]
    for key, name in named + [("checkpoint.monitor", run.checkpoint.monitor)]:
        problem = metrics.check_selected(run, key, name, classes)
        require(problem is None, key, problem or "", name)
    monitor, mode = run.checkpoint.monitor, run.checkpoint.mode
    derived = metrics.goal(monitor)
    require(
        mode in (None, derived),
        "checkpoint.mode",
        f"{derived} or null: checkpoint.monitor={monitor} is {_better(derived)}",
        mode,
    )


def check_objective(objective: Any) -> None:
    """One metric's name, or a list of two or more different ones (a multi-objective search)."""
    names = [objective] if isinstance(objective, str) else objective
    require(
        isinstance(names, (list, tuple))
        and all(isinstance(n, str) and n for n in names)
        and (len(names) == 1 or len(set(names)) == len(names) > 1),
        "objective",
        "a metric's name, or a list of two or more different ones: objective=[val/acc,model/params]",
        objective,
    )


def _better(goal: str) -> str:
    return "minimized (lower is better)" if goal == metrics.MIN else "maximized (higher is better)"


def monitor_mode(run) -> str:
    """The direction checkpoint.monitor is improved in: derived, and equal to a set mode."""
    return run.checkpoint.mode or metrics.goal(run.checkpoint.monitor)


def warmup_steps(warmup_epochs: float, steps_per_epoch: int) -> int:
    """The warm-up's length in optimizer steps, to the nearest step."""
    return round(warmup_epochs * steps_per_epoch)


def optimizer_steps(run: Config, train_images: int) -> tuple[int, int]:
    """(optimizer steps per epoch, optimizer steps in the run) for a split of that size."""
    d, t = run.dataset, run.trainer
    batches = steps.batches_per_epoch(
        train_images, d.batch_size, d.drop_last, t.limit_train_batches or t.overfit_batches
    )
    return steps.optimizer_steps(batches, t.accumulate_grad_batches, run.epochs, t.max_steps)


def check_length(run: Config, train_images: int, test_images: int) -> None:
    """Sizes and periods against what the run holds: the held-out images, the batches, the
    warm-up and lookahead periods against the run's steps, the images against memory."""
    d, t = run.dataset, run.trainer
    held = d.val_count(train_images)
    key, value = ("dataset.val_fraction", d.val_fraction) if d.val_fraction else ("dataset.val_size", d.val_size)
    require(held < train_images, key, f"smaller than the {train_images} training images", value)
    require(
        held >= 1 or not d.val_fraction,
        key,
        f"large enough to hold out one of the {train_images} training images",
        value,
    )
    train = train_images - held
    require(
        not d.drop_last or d.batch_size <= train,
        "dataset.batch_size",
        f"<= the {train} training images with dataset.drop_last=true (else no batch is left)",
        d.batch_size,
    )
    per_epoch, total = optimizer_steps(run, train)
    length = f"the run's {total} optimizer steps ({run.epochs} epochs of {per_epoch}" + (
        f", trainer.max_steps={t.max_steps})" if t.max_steps and t.max_steps < run.epochs * per_epoch else ")"
    )
    warmup = warmup_steps(run.scheduler.warmup_epochs, per_epoch)
    require(
        warmup > 0 or run.scheduler.warmup_epochs == 0,
        "scheduler.warmup_epochs",
        f"0 or at least one optimizer step (1/{per_epoch} of an epoch here): it rounds to no warm-up at all",
        run.scheduler.warmup_epochs,
    )
    require(
        warmup < total,
        "scheduler.warmup_epochs",
        f"shorter than {length}: a longer warm-up never reaches optimizer.lr",
        run.scheduler.warmup_epochs,
    )
    require(
        t.lookahead_every <= total,
        "trainer.lookahead_every",
        f"at most {length}: the final jump would return to the initial weights",
        t.lookahead_every,
    )
    _check_memory(d, train_images + test_images)


def _check_memory(d, images: int) -> None:
    """The decoded uint8 images (and a padded training copy) must fit in this machine's memory."""
    px = d.pixels
    needed = images * 3 * px * px
    if d.augment and d.crop_padding:
        needed += images * 3 * (px + 2 * d.crop_padding) ** 2
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if needed > memory:
        gib = 2**30
        key, value = ("dataset.train_size", d.train_size) if hasattr(d, "train_size") else ("dataset.image_size", px)
        require(
            False,
            key,
            f"small enough for memory: {images} images of {px} px need {needed / gib:.1f} GiB "
            f"as uint8, more than this machine's {memory / gib:.1f} GiB",
            value,
        )


def check_loaded(run: Config, classes: list[str]) -> None:
    """The metric names again, once the data has said its classes (CIFAR-100's are in its
    files): before the first step."""
    check_metrics(run, classes)
