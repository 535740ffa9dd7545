"""run(cfg): one training run, top to bottom. Plan the start (fresh or resumed), reach the
store, build the data (once, on the device), the trainer and the stop policies; run the
epochs (epochs.py); then the run-end report (results.py)."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any, Optional, cast

import torch
import yaml
from omegaconf import DictConfig

from cifar_exp import distributed, plots, resume, steps, study
from cifar_exp.checkpoint import Checkpointer, RunState
from cifar_exp.checks import image_size
from cifar_exp.config import Config, plain_config
from cifar_exp.data import Dataset, load_dataset
from cifar_exp.epochs import EpochLoop
from cifar_exp.errors import Interrupted, UserError, reason
from cifar_exp.job import Job, Story, progress, resume_command
from cifar_exp.loader import Augmentation, Sampling, TensorLoader
from cifar_exp.loop import Trainer
from cifar_exp.metrics import objectives
from cifar_exp.models import build_model
from cifar_exp.optim import build_optimizer, build_scheduler
from cifar_exp.policies import EarlyStopping, Policies, Pruning, Signals
from cifar_exp.profiling import StepProfiler
from cifar_exp.record import record
from cifar_exp.registry import defaults, flatten
from cifar_exp.results import report
from cifar_exp.runtime import Precision, compiles, pick_device, pick_precision, seed_everything
from cifar_exp.signals import StopSignals
from cifar_exp.tracking import NullTracker, Tracker, open_store, open_tracker
from cifar_exp.tracking.keys import DESCRIPTION_TAG
from cifar_exp.validation import check_loaded, monitor_mode, validate

# how many training images a model that sets its first layer from the data sees (airbench's 5,000)
INIT_IMAGES = 5000
log = logging.getLogger("cifar_exp")


def run(cfg: DictConfig) -> dict[str, float]:
    """Train and evaluate as configured; returns the last epoch's metrics. The config is
    checked and typed once here; everything below reads the typed `Config`."""
    config = validate(cfg)
    world = distributed.setup(config.trainer.strategy, config.trainer.ddp_timeout_s)
    try:
        return _run(cfg, config, world)
    finally:
        distributed.teardown(world)


def _run(composed: DictConfig, config: Config, world: distributed.World) -> dict[str, float]:
    job = Job.current()
    # with several processes, rank 0's dir is everyone's, and they run one config
    shared_dir = distributed.from_main(job.output_dir)
    distributed.check_shared(shared_dir)
    distributed.agree("config", lambda: {k: repr(v) for k, v in flatten(plain_config(config)).items()})
    start = resume.plan(composed, config, job, shared_dir)
    cfg, run_dir, resumed = start.config, start.run_dir, start.checkpoint

    seed_everything(cfg.seed, cfg.trainer.deterministic)
    device = pick_device(cfg.trainer.device, world.local_rank)
    precision = pick_precision(cfg.trainer.amp, device, cfg.trainer.deterministic)
    # one process writes checkpoints; each is a commit point for the metrics before it
    ckpt = Checkpointer(run_dir, cfg, enabled=cfg.checkpoint.enabled and world.is_main)
    ckpt.check_writable()
    state = resumed.state if resumed else RunState(classes=[])
    state.segment += resumed is not None
    profiler = StepProfiler(cfg.trainer.profile_steps if world.is_main else 0, run_dir / "profile")
    # the store is checked before the data is loaded, and whatever fails after is recorded
    with (
        StopSignals() as signals,
        tracked(
            *open_run(cfg, job, state, device, world, run_dir, signals), job.log_file, state, cfg.epochs, signals
        ) as tracker,
        profiler,
    ):
        state.run_id = tracker.run_id or state.run_id  # tracking off: the run id waits for a later resume
        ckpt.before_write = tracker.flush
        data = load_data(cfg, device, state, resumed is not None)
        distributed.agree("data", lambda: data.digests)
        train, evals = loaders(cfg, data, world)
        trainer = build_trainer(cfg, data, len(train), device, world, precision)
        policies = build_policies(cfg, job, world, signals, tracker)
        if resumed is not None:
            resume.restore(trainer, policies, resumed)
            ckpt.last_good = (resumed.path, state.global_step)
        if world.is_main:
            log_start(cfg, job, tracker, data, run_dir, device, state.segment, precision)

        loop = EpochLoop(
            cfg=cfg, world=world, device=device, state=state, trainer=trainer, policies=policies,
            tracker=tracker, ckpt=ckpt, signals=signals, profiler=profiler, data=data, train=train,
            evals=evals, run_dir=run_dir, resume_hint=resume_command(run_dir),
        )  # fmt: skip
        for epoch in loop.remaining():
            stop = loop.end_epoch(epoch, loop.train_epoch(epoch))
            if stop is not None or loop.planned_end(epoch):
                break

        test = loop.test or trainer.evaluate(evals["test"], data.num_classes)  # every rank takes part
        if world.is_main:
            # a second signal now is heard between the report's steps, not raised inside a library
            signals.ending()
            report(cfg, trainer, data, tracker, state, run_dir, test, lambda: signals.signum is not None)
        if signals.signum is not None:  # asked to stop while reporting: the run did not finish
            raise Interrupted(signals.signum, resume_command(run_dir))
    return state.last_metrics


# --- building -------------------------------------------------------------------------------------
def init_images(images: torch.Tensor, seed: int) -> torch.Tensor:
    """INIT_IMAGES training images drawn at random (seeded): an image folder lists its
    images class by class, so the first ones would all be of one class."""
    pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:INIT_IMAGES]
    return images.index_select(0, pick.to(images.device))


def load_data(cfg: Config, device: torch.device, state: RunState, resumed: bool) -> Dataset:
    """The dataset, on the device, checked against the config and a resumed run's classes."""
    data = load_dataset(cfg.dataset, device, cfg.trainer.channels_last)
    check_loaded(cfg, data.classes)
    if resumed and data.classes != state.classes:
        raise UserError(f"the dataset's classes {data.classes} differ from the checkpoint's {state.classes}")
    state.classes = data.classes
    return data


def loaders(cfg: Config, data: Dataset, world: distributed.World) -> tuple[TensorLoader, dict]:
    """The training loader and the evaluation loaders (val when held out, test), this rank's shard."""
    d, t = cfg.dataset, cfg.trainer
    shard: dict[str, Any] = {"rank": world.rank, "world_size": world.world_size}
    sampling = Sampling(
        shuffle=True,
        seed=cfg.seed,
        drop_last=d.drop_last,
        limit=t.limit_train_batches or t.overfit_batches,
        same_batches=t.overfit_batches > 0,
        **shard,
    )
    train = data.loader("train", d.batch_size, sampling, Augmentation.of(d, data.num_classes))
    evals = {
        s: data.loader(s, d.eval_batch_size, Sampling(limit=t.limit_eval_batches, **shard))
        for s in ("val", "test")
        if getattr(data, s) is not None
    }
    return train, evals


def build_policies(cfg: Config, job: Job, world: distributed.World, signals: StopSignals, tracker: Tracker) -> Policies:
    """What may end the run early, asked in this order after each epoch: a signal first."""
    # in an Optuna sweep, this job's trial: it hears each epoch's objective and may prune
    trial = study.trial_for(job) if world.is_main else None
    if trial is not None:
        tracker.set_tags({"optuna.trial": str(trial.number), "optuna.study": trial.study_name})
        trial.describe({"mlflow_run_id": tracker.run_id, "run_dir": str(job.output_dir.resolve())})
    names = objectives(cfg.objective)
    return Policies(
        Signals(signals),
        EarlyStopping(cfg.checkpoint.monitor, cfg.trainer.early_stopping_patience),
        # Optuna prunes single-objective studies only: a multi-objective trial hears no epochs
        Pruning(trial if len(names) == 1 else None, names[0]),
    )


def build_trainer(
    cfg: Config,
    data: Dataset,
    steps_per_epoch: int,
    device: torch.device,
    world: distributed.World,
    precision: Optional[Precision] = None,
) -> Trainer:
    t = cfg.trainer
    precision = precision or pick_precision(t.amp, device, t.deterministic)
    model = build_model(cfg.model, data.num_classes, image_size(cfg.dataset)).to(device)
    init_from_data = getattr(model, "init_from_data", None)
    if init_from_data is not None:  # e.g. a whitening layer (a resumed run loads its weights after)
        init_from_data(data.normalize(init_images(data.train.x, cfg.seed)))
    if t.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(cfg.optimizer, model)
    # schedules count optimizer steps: with accumulation, one per group of batches
    per_epoch, total_steps = steps.optimizer_steps(steps_per_epoch, t.accumulate_grad_batches, cfg.epochs, t.max_steps)
    scheduler = build_scheduler(cfg.scheduler, optimizer, total_steps, per_epoch)
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
    if compiles(t.compile, device)[0]:
        model = cast(torch.nn.Module, torch.compile(model))
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=t.label_smoothing)
    return Trainer(model, optimizer, scheduler, loss_fn, device, t, precision.dtype, total_steps)


def open_run(
    cfg: Config,
    job: Job,
    state: RunState,
    device: torch.device,
    world: distributed.World,
    run_dir: Path,
    signals: StopSignals,
) -> tuple[Tracker, Story]:
    """The MLflow run to log into (the checkpoint's, when resuming); rank 0 only. A stop
    request while the store is being reached ends the run at once: nothing is saved yet."""
    story = job.story(run_dir)
    story.add(f"started: `{job.command()}`")
    if not world.is_main:
        return NullTracker(), story
    store = signals.at_once(job.command(), open_store, cfg) if cfg.mlflow.enabled else None
    tags = job.tags(cfg, device, world.world_size, run_dir, state.segment)
    tracker = open_tracker(cfg, state.run_id, job.run_name(cfg), {**tags, **story.tags()}, run_dir, store)
    if tracker.resumed:  # named and described for what it now is: its first command with this resume's changes
        recorded = tracker.recorded_tags or {}
        overrides = resume.continued_overrides(recorded.get("hydra.overrides", "").split(), job.overrides or [])
        tracker.rename(job.run_name(cfg, overrides))
        story = job.story(run_dir, overrides, recorded.get(DESCRIPTION_TAG, ""))
        story.add(f"resumed {progress(state.epoch, state.step, cfg.epochs)}: `{job.command()}`")
        tracker.set_tags(story.tags())
    return tracker, story


@contextlib.contextmanager
def tracked(tracker: Tracker, story: Story, log_file, state: RunState, epochs: int, signals: StopSignals):
    """Ends the tracked run with a status that tells the truth about how the block exited.
    No stop signal can cut that ending short (each path first says the run is ending). A
    stopped or failed run says where it stood, in its log and in its story. The job's log
    is logged as cifar_exp.log (resume_<n>/cifar_exp.log for a resume); a KILLED run is
    tagged with the command that resumes it. run(cfg) called outside Hydra has no job log
    to keep."""
    where = f"resume_{state.segment}" if state.segment else None

    def end(status: str, event: Optional[str] = None, error: Optional[BaseException] = None) -> None:
        signals.ending()
        if event is not None:
            story.add(event)
            tracker.set_tags(story.tags())
        if log_file is not None:
            tracker.log_artifact(log_file, where)
        tracker.finish(status, error)

    try:
        yield tracker
    except (Interrupted, KeyboardInterrupt) as e:
        signals.ending()
        tracker.stop()
        hint = resume_command(story.run_dir)
        stopped = (
            f"{e if isinstance(e, Interrupted) else 'stopped at once'} {progress(state.epoch, state.step, epochs)}"
        )
        log.warning("%s; resume with: %s", stopped, hint)
        tracker.set_tags({"cifar_exp.resume_command": hint})
        end("KILLED", f"{stopped}; resume with `{hint}`")
        raise
    except BaseException as e:
        end("FAILED", f"failed {progress(state.epoch, state.step, epochs)}: {reason(e)}", e)
        raise
    end("KILLED" if tracker.was_cut_short else "FINISHED")


# --- the run's start and end ----------------------------------------------------------------------
def log_start(
    cfg: Config, job: Job, tracker, data: Dataset, run_dir: Path, device, segment: int, precision: Precision
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
    compiled, why = compiles(cfg.trainer.compile, device)
    log.info("torch.compile %s (%s)", "on" if compiled else "off", why)
    mode = monitor_mode(cfg)
    log.info(
        "objective %s; checkpoint.monitor %s, %s%s",
        ", ".join(objectives(cfg.objective)),
        cfg.checkpoint.monitor,
        "minimized" if mode == "min" else "maximized",
        "" if cfg.checkpoint.mode else " (the metric catalogue's direction)",
    )
    plain = plain_config(cfg)
    params, compared = record(flatten(plain), defaults(plain), job.overrides)
    tracker.log_params(params)  # trainer.name says which trainer option ran
    # the precision follows the device, which a resume may change: a tag, like the compared keys
    tracker.set_tags({**compared, "checkpoint.mode": mode, "precision": precision.name})
    hydra_dir = job.hydra_files
    if hydra_dir is not None and hydra_dir.is_dir():
        if segment:
            # Hydra composed this job's config.yaml from the resume command alone: what runs
            # is the checkpoint's config with the resume's changes
            (hydra_dir / "config.yaml").write_text(yaml.safe_dump(plain_config(cfg), sort_keys=False))
        tracker.log_artifact(hydra_dir, f"hydra/resume_{segment}" if segment else "hydra")
    if tracker.run_id and not segment:
        tracker.log_inputs(data.lineage(cfg.dataset))
    if not segment:
        idx = plots.showcase(len(data.train), data.device)
        grid = plots.image_grid(
            data.train.x[idx], [data.classes[i] for i in data.train.y[idx].tolist()], run_dir / "plots" / "samples.png"
        )
        tracker.log_artifact(grid, "plots")
