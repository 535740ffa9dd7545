"""What may end a run before its planned end. Each policy answers once after every epoch,
from that epoch's record, with a `Stop` or None, and keeps its own state for the checkpoint.
The ranks of a DDP run agree on one answer with one reduce per epoch.

The planned end (`epochs`, or `trainer.max_steps`) is not a stop: a run that reaches it
finished. At the planned end the policies still hear the epoch (their state stays whole)
but their answer is not acted on."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional

import torch

from cifar_exp import distributed, study
from cifar_exp.signals import StopSignals


@dataclass(frozen=True)
class Stop:
    reason: str  # what the log line says after "stopping after epoch N: "
    tags: dict[str, str] = field(default_factory=dict)  # set on the MLflow run
    mark: str = ""  # a run cut short (KILLED) leads its name with "[mark]", e.g. "pruned e3"
    interrupt: bool = False  # a signal: checkpoint, then exit as interrupted (resumable)
    by: str = ""  # the policy that stopped the run


@dataclass(frozen=True)
class EpochEnd:
    """What an epoch left for the policies to judge."""

    epoch: int  # epochs completed
    metrics: dict
    improved: bool  # the monitored metric improved on the best so far
    evaluated: bool  # the monitored metric was measured this epoch
    best: Optional[float]  # the monitored metric's best value so far


class Policy:
    name = "policy"

    def after_epoch(self, end: EpochEnd) -> Optional[Stop]:
        raise NotImplementedError

    def acted_on(self) -> None:
        """The run stops on this policy's answer."""

    def exhausted(self) -> bool:
        """This policy stopped the run in an earlier segment: a resume has nothing to train."""
        return False

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class EarlyStopping(Policy):
    """Stop after `patience` evaluated epochs without improvement of the monitored metric
    (0: never). An epoch that was not evaluated neither improves nor counts."""

    name = "early_stopping"

    def __init__(self, monitor: str, patience: int):
        self.monitor, self.patience = monitor, patience
        self.bad_epochs = 0  # evaluated epochs since the monitored metric last improved

    def exhausted(self) -> bool:
        return bool(self.patience) and self.bad_epochs >= self.patience

    def after_epoch(self, end: EpochEnd) -> Optional[Stop]:
        if end.evaluated:
            self.bad_epochs = 0 if end.improved else self.bad_epochs + 1
        if not self.exhausted():
            return None
        why = f"no improvement of {self.monitor} for {self.patience} evaluated epochs (best {end.best:.4g})"
        return Stop(why, tags={"cifar_exp.early_stopped": f"after epoch {end.epoch}: {why}"})

    def state_dict(self) -> dict:
        return {"bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict) -> None:
        self.bad_epochs = state["bad_epochs"]


class Pruning(Policy):
    """An Optuna trial hears every evaluated epoch's objective and may prune the run. Its
    state lives in the study's storage; only the job that owns the trial holds one."""

    name = "pruning"

    def __init__(self, trial: Optional[study.TrialLink], objective: str):
        self.trial, self.objective = trial, objective

    def after_epoch(self, end: EpochEnd) -> Optional[Stop]:
        value = end.metrics.get(self.objective)
        if self.trial is None or value is None or not self.trial.report(end.epoch, value):
            return None
        return Stop(
            f"the Optuna study prunes this trial ({self.objective} {value:.4g})",
            tags={study.TRIAL_STATE_TAG: study.PRUNED},
            mark=f"pruned e{end.epoch}",
        )

    def acted_on(self) -> None:
        if self.trial is not None:
            self.trial.mark_pruned()


class Signals(Policy):
    """SIGTERM/SIGINT/SIGUSR1 heard during the epoch: checkpoint at its end and exit."""

    name = "signals"

    def __init__(self, signals: StopSignals):
        self.signals = signals

    def after_epoch(self, end: EpochEnd) -> Optional[Stop]:
        return Stop("asked to stop", interrupt=True) if self.signals.signum is not None else None


class Policies:
    """The run's policies, asked in order; the first to stop decides."""

    def __init__(self, *policies: Policy):
        self.all = policies

    def after_epoch(self, end: EpochEnd, device: torch.device) -> Optional[Stop]:
        answers = [p.after_epoch(end) for p in self.all]  # every policy hears every epoch
        mine = next((i for i, a in enumerate(answers) if a is not None), len(answers))
        first = distributed.min_rank(mine, device)  # the one collective of the epoch end
        if first == len(answers):
            return None
        policy = self.all[first]
        # a rank that did not see the stop itself (only rank 0 holds the Optuna trial) follows
        return replace(answers[first] or Stop(f"{policy.name} stops the run on another rank"), by=policy.name)

    def acted_on(self, stop: Stop) -> None:
        next(p for p in self.all if p.name == stop.by).acted_on()

    def exhausted(self) -> bool:
        return any(p.exhausted() for p in self.all)

    def state_dict(self) -> dict:
        return {p.name: p.state_dict() for p in self.all}

    def load_state_dict(self, state: dict) -> None:
        for p in self.all:
            if p.name in state:
                p.load_state_dict(state[p.name])
