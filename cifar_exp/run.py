"""run(cfg): the notes' script as one function. Build data, model and optimizer from the
config, train and evaluate each epoch, track everything, checkpoint, return the metrics."""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import random
import signal
import subprocess
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from cifar_exp import __version__, checkpoint, distributed, plots
from cifar_exp.config import validate
from cifar_exp.data import Dataset, TensorLoader, load_dataset
from cifar_exp.errors import Interrupted, UserError
from cifar_exp.loop import Evaluation, Progress, Trainer
from cifar_exp.optim import build_optimizer, build_scheduler
from cifar_exp.signals import StopSignals
from cifar_exp.tracking import NullTracker, flatten, open_tracker

log = logging.getLogger("cifar_exp")

# Keys that may differ from the checkpoint's config when resuming: they change how the run
# is observed or how long it lasts, not what it computes.
RESUME_SAFE = ("epochs", "resume", "objective", "trainer.device", "trainer.progress",
               "trainer.log_every_n_steps", "trainer.compile", "checkpoint", "mlflow.log_model",
               "mlflow.flush_every_s", "mlflow.run_name", "mlflow.tags",
               "dataset.root", "dataset.download", "dataset.cache_dir", "dataset.eval_batch_size")


# Overrides that say nothing about the experiment itself stay out of derived run names.
RUN_NAME_SKIP = ("model", "resume", "dataset.root", "dataset.cache_dir", "trainer.progress", "trainer.device")


# --- environment --------------------------------------------------------------------------------
def pick_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"trainer.device={name} but no CUDA device is available (use trainer.device=auto)")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)  # under torchrun, each process its own GPU
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"trainer.device={name} but MPS is not available (use trainer.device=auto)")
    return device


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    if torch.are_deterministic_algorithms_enabled() != deterministic:
        torch.use_deterministic_algorithms(deterministic)  # slow the first time: only on change
    torch.backends.cudnn.benchmark = not deterministic


def hydra_overrides() -> list[str]:
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def output_dir() -> Path:
    return Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else Path.cwd()


def git_commit() -> Optional[str]:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def run_name(cfg: DictConfig, overrides: list[str]) -> str:
    """'simple_cnn lr=0.01 epochs=5': the model, then each override by its last key part."""
    if cfg.mlflow.run_name:
        return cfg.mlflow.run_name
    choices = HydraConfig.get().runtime.choices if HydraConfig.initialized() else {}
    parts = [choices.get("model") or cfg.model._target_.rsplit(".", 1)[-1]]
    for o in overrides:
        key, _, value = o.lstrip("+~").partition("=")
        if key not in RUN_NAME_SKIP and not key.startswith(("mlflow.", "checkpoint.", "hydra")):
            parts.append(f"{key.rsplit('.', 1)[-1]}={_short(value)}" if "." in key else o.lstrip("+~"))
    return " ".join(parts)


def _short(value: str) -> str:
    """0.056614015283581016 -> 0.05661: sampled floats stay readable in run names."""
    try:
        return f"{float(value):.4g}" if len(value) > 7 else value
    except ValueError:
        return value


def run_tags(cfg: DictConfig, device: torch.device, run_dir: Path, overrides: list[str],
             world: distributed.World) -> dict:
    tags = {
        "world_size": world.world_size,
        "hydra.output_dir": str(run_dir.resolve()),
        "hydra.overrides": " ".join(overrides),
        "device": str(device),
        "version.cifar_exp": __version__,
        "version.torch": torch.__version__,
        "mlflow.source.name": "cifar_exp",
        **cfg.mlflow.tags,
    }
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        tags["hydra.job.num"] = HydraConfig.get().job.num
    commit = git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags


# --- resume -------------------------------------------------------------------------------------
def _key_touched(key: str, overrides: Optional[list[str]]) -> bool:
    if overrides is None:
        return True
    for o in overrides:
        name = o.lstrip("+~").partition("=")[0]
        if key == name or key.startswith(name + "."):
            return True
    return False


def _is_safe(key: str) -> bool:
    return any(key == s or key.startswith(s + ".") for s in RESUME_SAFE)


def resume_config(cfg: DictConfig, saved: dict, overrides: Optional[list[str]]) -> DictConfig:
    """The checkpoint's config with the safe keys taken from `cfg`. A key the user set that
    would change what the run computes is refused. `overrides` None means every key of cfg
    counts as set by the user."""
    merged = OmegaConf.create(saved)
    current, old = flatten(cfg), flatten(saved)
    for key in sorted(set(current) | set(old)):
        if current.get(key) == old.get(key) or not _key_touched(key, overrides):
            continue
        if _is_safe(key):
            OmegaConf.update(merged, key, current.get(key), force_add=True)
        else:
            raise UserError(
                f"cannot change {key} when resuming (checkpoint: {old.get(key)!r}, now: "
                f"{current.get(key)!r}); only {', '.join(RESUME_SAFE[:6])}, checkpoint.*, "
                f"mlflow.log_model and dataset paths may change. Start a new run instead")
    if merged.epochs != saved["epochs"] and merged.scheduler.name != "none":
        raise UserError(f"epochs cannot change when resuming with scheduler={merged.scheduler.name}: "
                        f"its schedule spans the original {saved['epochs']} epochs")
    return merged


def find_resume(cfg: DictConfig, run_dir: Path) -> Optional[tuple[Path, dict]]:
    if cfg.resume is None:
        return None
    if cfg.resume == "auto":
        if not checkpoint.has_checkpoint(run_dir):
            log.info("resume=auto: no checkpoint in %s, starting fresh", run_dir)
            return None
        return checkpoint.find(run_dir, log=log.warning)
    return checkpoint.find(cfg.resume, log=log.warning)


# --- the run ------------------------------------------------------------------------------------
@contextlib.contextmanager
def tracked(tracker, log_file: Path):
    """Ends the tracked run with a status that tells the truth about how the block exited."""
    try:
        yield tracker
    except (Interrupted, KeyboardInterrupt):
        tracker.log_artifact(log_file)
        tracker.finish("KILLED")
        raise
    except BaseException as e:
        tracker.log_artifact(log_file)
        tracker.finish("FAILED", e)
        raise
    tracker.log_artifact(log_file)
    tracker.finish("FINISHED")


def build_loaders(cfg: DictConfig, data: Dataset, world: distributed.World) -> dict[str, TensorLoader]:
    d = cfg.dataset
    common = {"channels_last": cfg.trainer.channels_last, "rank": world.rank, "world_size": world.world_size}
    loaders = {
        "train": TensorLoader(data.train, d.batch_size, d.mean, d.std, shuffle=True, augment=d.augment,
                              padding=d.crop_padding, seed=cfg.seed, **common),
        "test": TensorLoader(data.test, d.eval_batch_size, d.mean, d.std, shuffle=False, **common),
    }
    if data.val is not None:
        loaders["val"] = TensorLoader(data.val, d.eval_batch_size, d.mean, d.std, shuffle=False, **common)
    return loaders


def build_trainer(cfg: DictConfig, num_classes: int, steps_per_epoch: int, device: torch.device,
                  world: distributed.World) -> Trainer:
    model = instantiate(cfg.model, num_classes=num_classes).to(device)
    if cfg.trainer.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(cfg.optimizer, model)
    scheduler = build_scheduler(cfg.scheduler, optimizer, cfg.epochs * steps_per_epoch, steps_per_epoch)
    if world.active:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.trainer.compile:
        model = torch.compile(model)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=cfg.trainer.label_smoothing)
    return Trainer(model, optimizer, scheduler, loss_fn, device, amp=cfg.trainer.amp,
                   eval_flip=cfg.trainer.eval_flip)


def run(cfg: DictConfig) -> dict[str, float]:
    """Train and evaluate as configured; returns the last epoch's metrics."""
    validate(cfg)
    world = distributed.setup(cfg.trainer.strategy)
    try:
        return _run(cfg, world)
    finally:
        distributed.teardown(world)


def _run(cfg: DictConfig, world: distributed.World) -> dict[str, float]:
    run_dir = distributed.from_main(output_dir())  # under torchrun, rank 0's dir is everyone's
    overrides = hydra_overrides()
    resumed = find_resume(cfg, run_dir)
    if resumed is not None:
        ckpt_path, state = resumed
        cfg = resume_config(cfg, state["config"], overrides if HydraConfig.initialized() else None)
        run_dir = ckpt_path.parent.parent
        log.info("resuming from %s (epoch %d, step %d)", ckpt_path, state["epoch"], state["step"])
    else:
        state = None

    seed_everything(cfg.seed, cfg.trainer.deterministic)
    device = pick_device(cfg.trainer.device, world.local_rank)
    data = load_dataset(cfg.dataset)
    loaders = build_loaders(cfg, _on_device(data, device), world)
    trainer = build_trainer(cfg, data.num_classes, len(loaders["train"]), device, world)
    progress = {"epoch": 0, "step": 0, "best": None, "history": [], "run_id": None, "classes": data.classes}
    if state is not None:
        trainer.load_state_dict(state["trainer"])
        checkpoint.set_rng_state(state["rng"])
        progress = {k: state[k] for k in progress}

    c = cfg.checkpoint
    # one process writes: the only one with a tracker and an enabled checkpoint writer
    writer = checkpoint.CheckpointWriter(run_dir / "checkpoints", c.keep_last, c.save_best, c.monitor, c.mode,
                                         enabled=c.enabled and world.is_main)
    log_file = output_dir() / f"{HydraConfig.get().job.name}.log" if HydraConfig.initialized() else Path()
    with StopSignals() as stop:
        tracker = (open_tracker(cfg, progress["run_id"], run_name(cfg, overrides),
                                run_tags(cfg, device, output_dir(), overrides, world))
                   if world.is_main else NullTracker())
        with tracked(tracker, log_file):
            progress["run_id"] = tracker.run_id
            if world.is_main:
                _start(cfg, tracker, data, run_dir, device, fresh=state is None)
            metrics, test = _train(cfg, trainer, loaders, data, tracker, writer, progress, stop, run_dir)
            _finish(cfg, trainer, loaders, data, tracker, progress, run_dir, test, world.is_main)
    return metrics


def _on_device(data: Dataset, device: torch.device) -> Dataset:
    val = data.val.to(device) if data.val is not None else None
    return Dataset(data.train.to(device), data.test.to(device), val, data.classes)


def _start(cfg, tracker, data: Dataset, run_dir: Path, device, fresh: bool) -> None:
    log.info("run dir %s | device %s | %d train / %d test images, %d classes%s",
             run_dir, device, len(data.train), len(data.test), data.num_classes,
             f" | mlflow run {tracker.run_id}" if tracker.run_id else "")
    tracker.log_params(flatten(cfg))
    tracker.log_artifact(output_dir() / ".hydra", "hydra")
    if fresh:
        idx = _showcase(len(data.train))
        grid = plots.image_grid(data.train.x[idx], [data.classes[i] for i in data.train.y[idx]],
                                run_dir / "plots" / "samples.png")
        tracker.log_artifact(grid, "plots")


def _train(cfg, trainer: Trainer, loaders, data: Dataset, tracker, writer, progress: dict,
           stop: StopSignals, run_dir: Path) -> tuple[dict[str, float], Optional[Evaluation]]:
    train_loader = loaders["train"]
    steps = len(train_loader)
    every_log, every_ckpt = cfg.trainer.log_every_n_steps, cfg.checkpoint.every_n_steps
    metrics = progress["history"][-1] if progress["history"] else {}
    test = None
    if progress["epoch"] >= cfg.epochs:
        log.info("nothing to train: the checkpoint already completed %d epochs (epochs=%d)",
                 progress["epoch"], cfg.epochs)
    for epoch in range(progress["epoch"], cfg.epochs):
        bar = Progress(cfg.trainer.progress, steps, epoch + 1, cfg.epochs)
        start_step, t0 = progress["step"], time.perf_counter()

        def after_step(i: int, epoch: int = epoch, bar: Progress = bar) -> None:
            gs = trainer.global_step
            loss = None
            if gs % every_log == 0:
                loss = trainer.meter.pop_window()
                tracker.log_metrics({"train/loss": loss, "lr": trainer.lr()}, step=gs)
            bar.update(i, loss)
            stopping = distributed.any_rank(stop.signum is not None, trainer.device)
            if stopping or (every_ckpt and gs % every_ckpt == 0 and i < steps):
                progress.update(epoch=epoch, step=i)
                _save(cfg, trainer, tracker, writer, progress, epoch_end=False, is_best=False)
            if stopping:
                bar.close()
                raise Interrupted(stop.signum or signal.SIGTERM, f"python -m cifar_exp resume={run_dir}")

        train = trainer.train_epoch(train_loader, epoch, start_step, after_step)
        bar.close()
        seconds = time.perf_counter() - t0
        metrics = {"epoch": epoch + 1, "train/loss_epoch": train["loss"], "train/acc": train["acc"]}
        if "val" in loaders:
            metrics.update(trainer.evaluate(loaders["val"], data.num_classes).metrics("val", data.classes))
        test = trainer.evaluate(loaders["test"], data.num_classes)
        metrics.update(test.metrics("test", data.classes))
        metrics["time/epoch_s"] = seconds
        metrics["time/images_per_s"] = (steps - start_step) * train_loader.batch_size / seconds
        tracker.log_metrics(metrics, step=trainer.global_step)
        log.info("epoch %d/%d: train loss %.4f acc %.2f%% | test loss %.4f acc %.2f%%%s | %.1fs",
                 epoch + 1, cfg.epochs, train["loss"], 100 * train["acc"], metrics["test/loss"],
                 100 * metrics["test/acc"],
                 f" | val acc {100 * metrics['val/acc']:.2f}%" if "val/acc" in metrics else "", seconds)
        progress["history"].append(metrics)
        is_best = writer.improved(metrics, progress["best"])
        if is_best:
            progress["best"] = metrics[cfg.checkpoint.monitor]
        last = epoch + 1 == cfg.epochs
        stopping = distributed.any_rank(stop.signum is not None, trainer.device)
        progress.update(epoch=epoch + 1, step=0)
        if ((epoch + 1) % cfg.checkpoint.every_n_epochs == 0 or last or stopping
                or (is_best and cfg.checkpoint.save_best)):
            _save(cfg, trainer, tracker, writer, progress, epoch_end=True, is_best=is_best)
        if stopping and not last:
            raise Interrupted(stop.signum or signal.SIGTERM, f"python -m cifar_exp resume={run_dir}")
    return metrics, test


def _save(cfg, trainer: Trainer, tracker, writer, progress: dict, *, epoch_end: bool, is_best: bool) -> None:
    """A checkpoint of the position in `progress`. It is a commit point: the metrics it
    covers reach the store first."""
    if not writer.enabled:
        return
    tracker.flush()
    state = {**progress, "trainer": trainer.state_dict(), "rng": checkpoint.rng_state(),
             "config": OmegaConf.to_container(cfg, resolve=True)}
    writer.save(state, epoch_end=epoch_end, is_best=is_best)


def _finish(cfg, trainer: Trainer, loaders, data: Dataset, tracker, progress: dict, run_dir: Path,
            test: Optional[Evaluation], is_main: bool) -> None:
    test = test or trainer.evaluate(loaders["test"], data.num_classes)
    if not is_main:
        return
    log.info("%s", test.report(data.classes))
    plot_dir = run_dir / "plots"
    if progress["history"]:
        tracker.log_artifact(plots.learning_curves(progress["history"], plot_dir / "learning_curves.png"), "plots")
    tracker.log_artifact(plots.confusion_matrix(test.confusion, data.classes, plot_dir / "confusion_matrix.png"), "plots")
    tracker.log_artifact(_predictions_grid(trainer, loaders["test"], data, plot_dir / "predictions.png"), "plots")
    if cfg.mlflow.enabled and cfg.mlflow.log_model:
        x, _ = next(loaders["test"].epoch(0))
        tracker.log_model(copy.deepcopy(trainer.module).cpu(), x[:2].cpu())


def _showcase(n: int, k: int = 32) -> torch.Tensor:
    """k fixed, spread-out indices: folder datasets are sorted by class."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(0))[:k].sort().values


@torch.inference_mode()
def _predictions_grid(trainer: Trainer, loader: TensorLoader, data: Dataset, path: Path) -> Path:
    idx = _showcase(len(data.test)).to(data.test.x.device)
    trainer.module.eval()
    pred = trainer.module(loader.normalize(data.test.x[idx])).argmax(1).cpu()
    y = data.test.y[idx].cpu()
    titles = [f"{data.classes[p]}\n({data.classes[t]})" for p, t in zip(pred, y)]
    colors = ["green" if p == t else "red" for p, t in zip(pred, y)]
    return plots.image_grid(data.test.x[idx], titles, path, colors=colors)
