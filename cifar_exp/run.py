"""run(cfg): one training run, top to bottom. Build the data (once, on the device), the
trainer and the run's state; then each epoch: train steps with periodic logging,
checkpoints and stop checks, evaluation, the epoch-end checkpoint; then the run-end report."""

from __future__ import annotations

import contextlib
import copy
import csv
import logging
import math
import signal
import time
from pathlib import Path
from typing import Callable, NoReturn, Optional

import torch
from omegaconf import DictConfig, OmegaConf

from cifar_exp import distributed, plots, resume, study
from cifar_exp.checkpoint import Checkpointer, RunState, set_rng_state
from cifar_exp.config import image_size
from cifar_exp.data import Dataset, load_dataset
from cifar_exp.errors import Interrupted, UserError
from cifar_exp.job import Job, resume_command
from cifar_exp.loop import Evaluation, Trainer
from cifar_exp.metrics import logged
from cifar_exp.models import build_model
from cifar_exp.optim import build_optimizer, build_scheduler
from cifar_exp.profiling import StepProfiler
from cifar_exp.progress import EpochProgress
from cifar_exp.registry import flatten
from cifar_exp.runtime import Precision, pick_device, pick_precision, seed_everything
from cifar_exp.signals import StopSignals
from cifar_exp.tracking import NullTracker, open_store, open_tracker
from cifar_exp.validation import check_loaded, monitor_mode, validate

# how many training images a model that sets its first layer from the data sees (airbench's 5,000)
INIT_IMAGES = 5000
STOP_POLL_STEPS = 25  # how often, in optimizer steps, DDP ranks agree on a stop within an epoch
log = logging.getLogger("cifar_exp")


def run(cfg: DictConfig) -> dict[str, float]:
    """Train and evaluate as configured; returns the last epoch's metrics."""
    validate(cfg)
    world = distributed.setup(cfg.trainer.strategy)
    try:
        return _run(cfg, world)
    finally:
        distributed.teardown(world)


def _run(cfg: DictConfig, world: distributed.World) -> dict[str, float]:
    job = Job.current()
    # under torchrun, rank 0's dir is everyone's
    start = resume.plan(cfg, job, distributed.from_main(job.output_dir))
    cfg, run_dir = start.cfg, start.run_dir

    seed_everything(cfg.seed, cfg.trainer.deterministic)
    device = pick_device(cfg.trainer.device, world.local_rank)
    precision = pick_precision(cfg.trainer.amp, device, cfg.trainer.deterministic)
    # one process writes checkpoints; each is a commit point for the metrics before it
    ckpt = Checkpointer(run_dir, cfg, enabled=cfg.checkpoint.enabled and world.is_main)
    ckpt.check_writable()
    state = RunState(classes=[])
    if start.checkpoint is not None:
        state = start.checkpoint.state
        state.segment += 1
    every_log, every_ckpt = cfg.trainer.log_every_n_steps, cfg.checkpoint.every_n_steps
    profiler = StepProfiler(cfg.trainer.profile_steps if world.is_main else 0, run_dir / "profile")
    # the store is checked before the data is loaded, and whatever fails after is recorded
    with (
        StopSignals() as stop,
        tracked(
            open_run(cfg, job, state, device, world, run_dir, stop),
            job.log_file,
            state.segment,
            resume_command(run_dir),
        ) as tracker,
        profiler,
    ):
        state.run_id = tracker.run_id or state.run_id  # tracking off: the run id waits for a later resume
        ckpt.before_write = tracker.flush
        # in an Optuna sweep, this job's trial: it hears each epoch's objective and may prune
        trial = study.trial_for(job) if world.is_main else None
        if trial is not None:
            tracker.set_tags({"optuna.trial": str(trial.number), "optuna.study": trial.study_name})

        data = load_dataset(cfg.dataset, device, cfg.trainer.channels_last)
        check_loaded(cfg, data.classes)
        if start.checkpoint is not None and data.classes != state.classes:
            raise UserError(f"the dataset's classes {data.classes} differ from the checkpoint's {state.classes}")
        state.classes = data.classes
        d, t = cfg.dataset, cfg.trainer
        shard = {"rank": world.rank, "world_size": world.world_size}
        train = data.loader(
            "train",
            d.batch_size,
            shuffle=True,
            augment=d.augment,
            padding=d.crop_padding,
            seed=cfg.seed,
            cutout=d.cutout,
            mixup_alpha=d.mixup_alpha,
            cutmix_alpha=d.cutmix_alpha,
            num_classes=data.num_classes,
            limit=t.limit_train_batches or t.overfit_batches,
            same_batches=t.overfit_batches > 0,
            drop_last=d.drop_last,
            flip=d.flip,
            pad_mode=d.pad_mode,
            **shard,
        )
        evals = {
            s: data.loader(s, d.eval_batch_size, shuffle=False, limit=t.limit_eval_batches, **shard)
            for s in ("val", "test")
            if getattr(data, s) is not None
        }
        trainer = build_trainer(cfg, data, len(train), device, world, precision)
        if start.checkpoint is not None:
            resume.restore(trainer, start.checkpoint)
            set_rng_state(start.checkpoint.rng)
        if world.is_main:
            log_start(cfg, job, tracker, data, run_dir, device, state.segment, precision)
        patience = t.early_stopping_patience
        stopped_early = bool(patience) and state.bad_epochs >= patience  # by an earlier segment
        max_batches = t.max_steps * t.accumulate_grad_batches  # 0: no limit
        done = stopped_early or bool(max_batches) and state.global_step >= max_batches
        if state.epoch >= cfg.epochs or done:
            log.info(
                "nothing to train: the checkpoint already completed %d epochs (epochs=%d%s)",
                state.epoch,
                cfg.epochs,
                ", stopped early" if stopped_early else "",
            )

        if start.checkpoint is not None:
            ckpt.last_good = (start.checkpoint.path, state.global_step)

        def diverged(value: float) -> NoReturn:
            raise UserError(
                f"training diverged: the loss is {value} at step {state.global_step} (epoch "
                f"{state.epoch + 1}, lr {trainer.lr():.4g}); nothing was saved after it; "
                f"{ckpt.describe_last_good()}"
            )

        def save(*, epoch_end: bool, is_best: bool, score: Optional[float] = None) -> None:
            if not trainer.finite():  # a non-finite model never becomes a checkpoint
                diverged(float(trainer.meter.loss_sum))
            ckpt.save(state, trainer, epoch_end=epoch_end, is_best=is_best, score=score)

        def stop_requested(at_step: bool = False) -> bool:
            # Under DDP every rank must agree, which is a collective (an all-reduce read back):
            # within an epoch only every STOP_POLL_STEPS optimizer steps, so a step never
            # waits for it. One process reads its own flag at every step, for free.
            if world.active and at_step and (state.global_step // t.accumulate_grad_batches) % STOP_POLL_STEPS:
                return False
            return distributed.any_rank(stop.signum is not None, device)

        def checkpoint_and_stop(*, epoch_end: bool, is_best: bool, score: Optional[float] = None) -> NoReturn:
            tracker.stop()
            save(epoch_end=epoch_end, is_best=is_best, score=score)
            if world.is_main:
                record_results(tracker, data, state, run_dir, evaluated)
            raise Interrupted(stop.signum or signal.SIGTERM, resume_command(run_dir))

        test = None  # the last epoch's test evaluation, if it had one
        evaluated = None  # the newest test evaluation, whichever epoch had it
        for epoch in range(state.epoch, state.epoch if done else cfg.epochs):
            t0, first_step, test = time.perf_counter(), state.step, None
            trainer.begin_epoch(epoch, first_step)
            with EpochProgress(t.progress, len(train), first_step, epoch + 1, cfg.epochs, d.batch_size) as bar:
                for x, y in train.epoch(epoch, first_step):
                    trainer.step(x, y)
                    state.advance()
                    profiler.step()
                    loss = None
                    # every n steps, and at each epoch's last step so short epochs have a curve too
                    if state.global_step % every_log == 0 or state.step == len(train):
                        loss = trainer.meter.pop_window()
                        point = {"train/loss": loss, "lr": trainer.lr()}
                        if trainer.grad_norm is not None:  # gradient clipping on: the norm before it
                            point["train/grad_norm"] = float(trainer.grad_norm)
                        tracker.log_metrics(point, step=state.global_step)
                        if not math.isfinite(loss):
                            diverged(loss)
                    bar.update(loss)
                    # checkpoints fall between optimizer steps, never inside an accumulation
                    if trainer.at_boundary and stop_requested(at_step=True):
                        checkpoint_and_stop(epoch_end=False, is_best=False)
                    if (
                        every_ckpt
                        and state.global_step % every_ckpt == 0
                        and state.step < len(train)
                        and trainer.at_boundary
                    ):
                        save(epoch_end=False, is_best=False)
                    if state.global_step == max_batches:  # trainer.max_steps: this epoch ends here
                        break
            trainer.end_epoch()

            seconds = time.perf_counter() - t0  # training time: evaluation is not counted
            last = epoch + 1 == cfg.epochs or state.global_step == max_batches
            metrics = epoch_summary(trainer, epoch + 1)
            if last or (epoch + 1) % t.eval_every_n_epochs == 0:
                test = evaluated = evaluate_splits(trainer, data, evals, metrics)
            metrics["time/epoch_s"] = seconds
            metrics["time/images_per_s"] = (state.step - first_step) * d.batch_size / seconds
            tracker.log_metrics(logged(metrics, {cfg.objective, cfg.checkpoint.monitor}), step=state.global_step)
            log_epoch(metrics, cfg.epochs)
            for loss in (metrics[k] for k in ("train/loss_epoch", "val/loss", "test/loss") if k in metrics):
                if not math.isfinite(loss):
                    diverged(loss)
            monitor = cfg.checkpoint.monitor
            is_best = state.end_epoch(metrics, monitor, monitor_mode(cfg))
            early = bool(patience) and state.bad_epochs >= patience and not last
            # every evaluated epoch's objective goes to the trial; the last cannot be pruned any more
            value = metrics.get(cfg.objective)
            prune = trial is not None and value is not None and trial.report(state.epoch, value)
            pruned = distributed.any_rank(prune, device) and not last
            if stop_requested() and not last:
                checkpoint_and_stop(epoch_end=True, is_best=is_best, score=metrics.get(monitor))
            if (
                state.epoch % cfg.checkpoint.every_n_epochs == 0
                or last
                or early
                or pruned
                or (is_best and cfg.checkpoint.save_best)
                or cfg.checkpoint.save_top_k
            ):
                save(epoch_end=True, is_best=is_best, score=metrics.get(monitor))
            if pruned:
                log.info(
                    "stopping after epoch %d: the Optuna study prunes this trial (%s %.4g)",
                    state.epoch,
                    cfg.objective,
                    metrics[cfg.objective],
                )
                # KILLED: the run did not get to its planned end; the name says why
                tracker.cut_short(f"pruned e{state.epoch}", {study.TRIAL_STATE_TAG: study.PRUNED})
                if trial is not None:
                    trial.mark_pruned()
                break
            if early:
                why = f"no improvement of {monitor} for {patience} evaluated epochs (best {state.best:.4g})"
                log.info("stopping early after epoch %d: %s", state.epoch, why)
                tracker.set_tags({"cifar_exp.early_stopped": f"after epoch {state.epoch}: {why}"})
                break
            if last:  # trainer.max_steps reached inside the epochs
                break

        test = test or trainer.evaluate(evals["test"], data.num_classes)  # every rank takes part
        if world.is_main:
            # a second signal now is heard between the report's steps, not raised inside a library
            stop.second_raises = False
            report(cfg, trainer, data, tracker, state, run_dir, test, lambda: stop.signum is not None)
        if stop.signum is not None:  # asked to stop while reporting: the run did not finish
            raise Interrupted(stop.signum, resume_command(run_dir))
    return state.last_metrics


# --- building -------------------------------------------------------------------------------------
def init_images(images: torch.Tensor, seed: int) -> torch.Tensor:
    """INIT_IMAGES training images drawn at random (seeded): an image folder lists its
    images class by class, so the first ones would all be of one class."""
    pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:INIT_IMAGES]
    return images.index_select(0, pick.to(images.device))


def build_trainer(
    cfg: DictConfig,
    data: Dataset,
    steps_per_epoch: int,
    device: torch.device,
    world: distributed.World,
    precision: Optional[Precision] = None,
) -> Trainer:
    t = cfg.trainer
    precision = precision or pick_precision(t.amp, device, t.deterministic)
    model = build_model(cfg.model, data.num_classes, image_size(cfg.dataset)).to(device)
    if hasattr(model, "init_from_data"):  # e.g. a whitening layer (a resumed run loads its weights after)
        model.init_from_data(data.normalize(init_images(data.train.x, cfg.seed)))
    if t.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(cfg.optimizer, model)
    # schedules count optimizer steps: with accumulation, one per group of batches
    optimizer_steps = math.ceil(steps_per_epoch / t.accumulate_grad_batches)
    total_steps = min(cfg.epochs * optimizer_steps, t.max_steps or math.inf)
    scheduler = build_scheduler(cfg.scheduler, optimizer, total_steps, optimizer_steps)
    if world.active:
        if t.sync_batchnorm:
            if device.type != "cuda":
                raise UserError(
                    "trainer.sync_batchnorm=true needs CUDA devices: PyTorch's SyncBatchNorm runs on "
                    "GPUs only (drop it on CPU)"
                )
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if t.compile:
        model = torch.compile(model)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=t.label_smoothing)
    return Trainer(
        model,
        optimizer,
        scheduler,
        loss_fn,
        device,
        autocast_dtype=precision.dtype,
        eval_flip=t.eval_flip,
        eval_translate=t.eval_translate,
        accumulate=t.accumulate_grad_batches,
        clip_norm=t.gradient_clip_val,
        ema_decay=t.ema_decay,
        lookahead_every=t.lookahead_every,
        lookahead_decay=t.lookahead_decay,
        total_steps=total_steps,
    )


def open_run(
    cfg: DictConfig,
    job: Job,
    state: RunState,
    device: torch.device,
    world: distributed.World,
    run_dir: Path,
    stop: StopSignals,
):
    """The MLflow run to log into (the checkpoint's, when resuming); rank 0 only. A stop
    request while the store is being reached ends the run at once: nothing is saved yet."""
    if not world.is_main:
        return NullTracker()
    store = stop.at_once(job.command(), open_store, cfg) if cfg.mlflow.enabled else None
    tags = job.tags(cfg, device, world.world_size, run_dir, state.segment)
    tracker = open_tracker(cfg, state.run_id, job.run_name(cfg), tags, run_dir, store)
    if tracker.resumed:  # named for what it now is: its first command with this resume's changes
        first = tracker.recorded_tags.get("hydra.overrides", "").split()
        tracker.rename(job.run_name(cfg, resume.continued_overrides(first, job.overrides or [])))
    return tracker


@contextlib.contextmanager
def tracked(tracker, log_file, segment: int, resume_hint: str):
    """Ends the tracked run with a status that tells the truth about how the block exited.
    The job's log is logged as cifar_exp.log (resume_<n>/cifar_exp.log for a resume); a
    KILLED run is tagged with the command that resumes it."""
    where = f"resume_{segment}" if segment else None
    try:
        yield tracker
    except (Interrupted, KeyboardInterrupt):
        tracker.stop()
        tracker.set_tags({"cifar_exp.resume_command": resume_hint})
        tracker.log_artifact(log_file, where)
        tracker.finish("KILLED")
        raise
    except BaseException as e:
        tracker.log_artifact(log_file, where)
        tracker.finish("FAILED", e)
        raise
    tracker.log_artifact(log_file, where)
    tracker.finish("KILLED" if tracker.was_cut_short else "FINISHED")


# --- each epoch -----------------------------------------------------------------------------------
def epoch_summary(trainer: Trainer, epoch: int) -> dict:
    """The epoch's training sums."""
    summary = trainer.meter.summary()
    return {"epoch": epoch, "train/loss_epoch": summary["loss"], "train/acc": summary["acc"]}


def evaluate_splits(trainer: Trainer, data: Dataset, evals: dict, metrics: dict) -> Evaluation:
    """Validation (if held out) and test metrics into `metrics`; returns the test evaluation."""
    if "val" in evals:
        metrics.update(trainer.evaluate(evals["val"], data.num_classes).metrics("val", data.classes))
    test = trainer.evaluate(evals["test"], data.num_classes)
    metrics.update(test.metrics("test", data.classes))
    return test


def log_epoch(m: dict, epochs: int) -> None:
    test = f" | test loss {m['test/loss']:.4f} acc {100 * m['test/acc']:.2f}%" if "test/acc" in m else ""
    val = f" | val acc {100 * m['val/acc']:.2f}%" if "val/acc" in m else ""
    log.info(
        "epoch %d/%d: train loss %.4f acc %.2f%%%s%s | %.1fs",
        m["epoch"],
        epochs,
        m["train/loss_epoch"],
        100 * m["train/acc"],
        test,
        val,
        m["time/epoch_s"],
    )


# --- the run's start and end ----------------------------------------------------------------------
def log_start(
    cfg: DictConfig, job: Job, tracker, data: Dataset, run_dir: Path, device, segment: int, precision: Precision
) -> None:
    """The run's params (what it computes with), the tags a resume may update (its
    precision among them), its data's lineage and Hydra's files: the first segment's as hydra/, a resume's beside them
    as hydra/resume_<n>/, so the record only grows."""
    log.info(
        "run dir %s | device %s | %d train / %d test images, %d classes%s",
        run_dir,
        device,
        len(data.train),
        len(data.test),
        data.num_classes,
        f" | mlflow run {tracker.run_id}" if tracker.run_id else "",
    )
    log.info("precision %s (%s)", precision.name, precision.reason)
    mode = monitor_mode(cfg)
    log.info(
        "objective %s; checkpoint.monitor %s, %s%s",
        cfg.objective,
        cfg.checkpoint.monitor,
        "minimized" if mode == "min" else "maximized",
        "" if cfg.checkpoint.mode else " (derived from its name)",
    )
    params, compared = resume.record(flatten(cfg))
    tracker.log_params({**params, "trainer": job.choices.get("trainer", "default")})
    # the precision follows the device, which a resume may change: a tag, like the compared keys
    tracker.set_tags({**compared, "checkpoint.mode": mode, "precision": precision.name})
    hydra_dir = job.output_dir / ".hydra"
    if segment and hydra_dir.is_dir():
        # Hydra composed this job's config.yaml from the resume command alone: what runs is
        # the checkpoint's config with the resume's changes
        (hydra_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    tracker.log_artifact(hydra_dir, f"hydra/resume_{segment}" if segment else "hydra")
    if tracker.run_id and not segment:
        tracker.log_inputs(data.lineage(cfg.dataset))
    if not segment:
        idx = plots.showcase(len(data.train), data.device)
        grid = plots.image_grid(
            data.train.x[idx], [data.classes[i] for i in data.train.y[idx].tolist()], run_dir / "plots" / "samples.png"
        )
        tracker.log_artifact(grid, "plots")


def report(
    cfg: DictConfig,
    trainer: Trainer,
    data: Dataset,
    tracker,
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
    if cfg.mlflow.enabled and cfg.mlflow.log_model and not stopping():
        example = data.normalize(images[:2]).cpu()
        # one model per segment, each its own name
        name = f"{cfg.model.name}-{tracker.run_id[:8]}" + (f"-resume{state.segment}" if state.segment else "")
        tracker.log_model(copy.deepcopy(trainer.final_module).cpu(), example, name, state.last_metrics.keys())


def record_results(tracker, data: Dataset, state: RunState, run_dir: Path, test: Optional[Evaluation]) -> None:
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
