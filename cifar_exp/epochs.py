"""The epoch loop of a run: the training steps with their periodic logging, checkpoints and
stop polls; the epoch's evaluation; and its end, where the stop policies answer once and
the checkpoint policy writes."""

from __future__ import annotations

import logging
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn, Optional

import torch

from cifar_exp import distributed
from cifar_exp.checkpoint import Checkpointer, RunState
from cifar_exp.config import Config
from cifar_exp.data import Dataset
from cifar_exp.errors import Interrupted, UserError
from cifar_exp.loader import TensorLoader
from cifar_exp.loop import Evaluation, Trainer
from cifar_exp.metrics import EPOCH, logged, objectives
from cifar_exp.policies import EpochEnd, Policies, Stop
from cifar_exp.profiling import StepProfiler
from cifar_exp.progress import EpochProgress
from cifar_exp.results import record_results
from cifar_exp.signals import StopSignals
from cifar_exp.tracking import Tracker
from cifar_exp.validation import monitor_mode

STOP_POLL_STEPS = 25  # how often, in optimizer steps, DDP ranks agree on a stop within an epoch
log = logging.getLogger("cifar_exp")


@dataclass
class EpochLoop:
    """Everything the epochs work with. `test` is the last epoch's test evaluation (None when
    that epoch was not evaluated); `evaluated` the newest one, whichever epoch had it."""

    cfg: Config
    world: distributed.World
    device: torch.device
    state: RunState
    trainer: Trainer
    policies: Policies
    tracker: Tracker
    ckpt: Checkpointer
    signals: StopSignals
    profiler: StepProfiler
    data: Dataset
    train: TensorLoader
    evals: dict[str, TensorLoader]
    run_dir: Path
    resume_hint: str
    test: Optional[Evaluation] = None
    evaluated: Optional[Evaluation] = None

    def remaining(self) -> range:
        """The epochs left to train: none once the planned end is reached or an earlier
        segment stopped early."""
        s = self.state
        stopped = self.policies.exhausted()  # by an earlier segment
        if s.epoch >= self.cfg.epochs or stopped or self.max_steps_reached():
            log.info(
                "nothing to train: the checkpoint already completed %d epochs (epochs=%d%s)",
                s.epoch,
                self.cfg.epochs,
                ", stopped early" if stopped else "",
            )
            return range(0)
        return range(s.epoch, self.cfg.epochs)

    def max_steps_reached(self) -> bool:
        max_steps = self.cfg.trainer.max_steps  # 0: no limit
        return bool(max_steps) and self.state.global_step >= max_steps

    def planned_end(self, epoch: int) -> bool:
        return epoch + 1 == self.cfg.epochs or self.max_steps_reached()

    # --- the steps ------------------------------------------------------------------------------
    def train_epoch(self, epoch: int) -> dict[str, float]:
        """One epoch's steps (from the checkpoint's step when resuming inside it); returns
        its training time (evaluation is not counted) and speed."""
        t0, first, state, trainer = time.perf_counter(), self.state.step, self.state, self.trainer
        every_ckpt, batches = self.cfg.checkpoint.every_n_steps, len(self.train)
        trainer.begin_epoch(epoch, first)
        with EpochProgress(
            self.cfg.trainer.progress, batches, first, epoch + 1, self.cfg.epochs, self.cfg.dataset.batch_size
        ) as bar:
            for x, y in self.train.epoch(epoch, first):
                stepped = trainer.step(x, y, closes=state.step + 1 == batches)
                state.advance(stepped)
                self.profiler.step()
                bar.update(self.log_step(stepped))
                if not stepped:  # checkpoints and stops fall between optimizer steps
                    continue
                if self.stop_polled():
                    self.checkpoint_and_stop(epoch_end=False)
                if every_ckpt and state.global_step % every_ckpt == 0 and state.step < batches:
                    self.save(epoch_end=False)
                if self.max_steps_reached():  # this epoch ends here
                    break
        seconds = time.perf_counter() - t0
        images = (state.step - first) * self.cfg.dataset.batch_size
        return {"time/epoch_s": seconds, "time/images_per_s": images / seconds}

    def log_step(self, stepped: bool) -> Optional[float]:
        """The loss of the window since the last log, every n optimizer steps and at each
        epoch's last batch (so short epochs have a curve too); None between them."""
        s = self.state
        if not (stepped and s.global_step % self.cfg.trainer.log_every_n_steps == 0 or s.step == len(self.train)):
            return None
        loss = self.trainer.meter.pop_window()
        point = {"train/loss": loss}
        if self.trainer.scheduler is not None:  # a constant lr is the optimizer.lr param, not a flat curve
            point["lr"] = self.trainer.lr()
        if self.trainer.grad_norm is not None:  # gradient clipping or its warning on: the norm before clipping
            point["train/grad_norm"] = norm = float(self.trainer.grad_norm)
            if 0 < self.cfg.trainer.grad_norm_warn < norm:
                log.warning("step %d: gradient norm %.4g > trainer.grad_norm_warn", s.global_step, norm)
        self.tracker.log_metrics(point, step=s.logged_step)
        if not math.isfinite(loss):
            self.diverged(loss)
        return loss

    def stop_polled(self) -> bool:
        """A stop request, heard at an optimizer step. Under DDP every rank must agree, which
        is a collective (an all-reduce read back): only every STOP_POLL_STEPS optimizer steps,
        so a step never waits for it. One process reads its own flag at every step, for free."""
        if self.world.active and self.state.global_step % STOP_POLL_STEPS:
            return False
        return distributed.any_rank(self.signals.signum is not None, self.device)

    # --- the epoch's end ------------------------------------------------------------------------
    def end_epoch(self, epoch: int, timing: dict[str, float]) -> Optional[Stop]:
        """Evaluate (as the cadence says), log, ask the policies, checkpoint; returns the stop
        the run ends on, if any."""
        cfg, state = self.cfg, self.state
        last = self.planned_end(epoch)
        metrics = epoch_summary(self.trainer, epoch + 1)
        self.test = None
        if last or (epoch + 1) % cfg.trainer.eval_every_n_epochs == 0:
            self.test = self.evaluated = self.evaluate(metrics, tta=last or cfg.trainer.tta_every_eval)
        metrics.update(timing)
        selected = {*objectives(cfg.objective), cfg.checkpoint.monitor}
        self.tracker.log_metrics(logged(metrics, selected), step=state.logged_step)
        log_epoch(metrics, cfg.epochs)
        for loss in (metrics[k] for k in ("train/loss_epoch", "val/loss", "test/loss") if k in metrics):
            if not math.isfinite(loss):
                self.diverged(loss)
        monitor = cfg.checkpoint.monitor
        is_best = state.end_epoch(metrics, monitor, monitor_mode(cfg))
        score = metrics.get(monitor)
        end = EpochEnd(state.epoch, metrics, is_best, evaluated=score is not None, best=state.best)
        stop = self.policies.after_epoch(end, self.device)
        if last:  # the planned end: nothing is cut short
            stop = None
        if stop is not None and stop.interrupt:
            self.checkpoint_and_stop(epoch_end=True, is_best=is_best, score=score)
        if self.checkpoint_due(is_best, ending=last or stop is not None):
            self.save(epoch_end=True, is_best=is_best, score=score)
        if stop is not None:
            self.announce(stop)
        return stop

    def evaluate(self, metrics: dict, tta: bool) -> Evaluation:
        """Validation (if held out) and test metrics into `metrics`; returns the test evaluation."""
        n, classes = self.data.num_classes, self.data.classes
        if "val" in self.evals:
            metrics.update(self.trainer.evaluate(self.evals["val"], n, tta).metrics("val", classes))
        test = self.trainer.evaluate(self.evals["test"], n, tta)
        metrics.update(test.metrics("test", classes))
        return test

    def checkpoint_due(self, is_best: bool, ending: bool) -> bool:
        c = self.cfg.checkpoint
        return self.state.epoch % c.every_n_epochs == 0 or ending or (is_best and c.save_best) or bool(c.save_top_k)

    def announce(self, stop: Stop) -> None:
        log.info("stopping early after epoch %d: %s", self.state.epoch, stop.reason)
        if stop.mark:  # KILLED: the run did not get to its planned end; the name says why
            self.tracker.cut_short(stop.mark, stop.tags)
        else:
            self.tracker.set_tags(stop.tags)
        self.policies.acted_on(stop)

    # --- saving and failing ---------------------------------------------------------------------
    def save(self, *, epoch_end: bool, is_best: bool = False, score: Optional[float] = None) -> None:
        if not self.trainer.finite():  # a non-finite model never becomes a checkpoint
            self.diverged(float(self.trainer.meter.loss_sum))
        self.ckpt.save(self.state, self.trainer, self.policies, epoch_end=epoch_end, is_best=is_best, score=score)

    def checkpoint_and_stop(self, *, epoch_end: bool, is_best: bool = False, score: Optional[float] = None) -> NoReturn:
        self.tracker.stop()
        self.save(epoch_end=epoch_end, is_best=is_best, score=score)
        if self.world.is_main:
            record_results(self.tracker, self.data, self.state, self.run_dir, self.evaluated)
        self.signals.ending()
        raise Interrupted(self.signals.signum or signal.SIGTERM, self.resume_hint)

    def diverged(self, value: float) -> NoReturn:
        raise UserError(
            f"training diverged: the loss is {value} at step {self.state.global_step} (epoch "
            f"{self.state.epoch + 1}, lr {self.trainer.lr():.4g}); nothing was saved after it; "
            f"{self.ckpt.describe_last_good()}"
        )


def epoch_summary(trainer: Trainer, epoch: int) -> dict:
    """The epoch's training sums."""
    summary = trainer.meter.summary()
    return {
        EPOCH: epoch,
        "train/loss_epoch": summary["loss"],
        "train/acc": summary["acc"],
        "model/params": trainer.parameter_count,
    }


def log_epoch(m: dict, epochs: int) -> None:
    test = f" | test loss {m['test/loss']:.4f} acc {100 * m['test/acc']:.2f}%" if "test/acc" in m else ""
    val = f" | val acc {100 * m['val/acc']:.2f}%" if "val/acc" in m else ""
    log.info(
        "epoch %d/%d: train loss %.4f acc %.2f%%%s%s | %.1fs",
        m[EPOCH],
        epochs,
        m["train/loss_epoch"],
        100 * m["train/acc"],
        test,
        val,
        m["time/epoch_s"],
    )
