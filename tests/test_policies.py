"""policies.py: what ends a run early, each policy on its own, and their order."""

from __future__ import annotations

import torch

from cifar_exp import study
from cifar_exp.policies import EarlyStopping, EpochEnd, Policies, Pruning, Signals

CPU = torch.device("cpu")


def _end(epoch: int, acc=None, improved=False) -> EpochEnd:
    metrics = {} if acc is None else {"test/acc": acc}
    return EpochEnd(epoch, metrics, improved, evaluated=acc is not None, best=0.5)


class _Trial:
    """An Optuna trial link that prunes from epoch `prune_at` on."""

    def __init__(self, prune_at: int):
        self.prune_at, self.reported, self.marked = prune_at, [], False

    def report(self, epoch: int, value: float) -> bool:
        self.reported.append((epoch, value))
        return epoch >= self.prune_at

    def mark_pruned(self) -> None:
        self.marked = True


class _Signals:
    signum = None


def test_early_stopping_counts_only_evaluated_epochs_and_resumes_its_count():
    early = EarlyStopping("test/acc", patience=2)
    assert early.after_epoch(_end(1, 0.5, improved=True)) is None
    assert early.after_epoch(_end(2, 0.4)) is None
    assert early.after_epoch(_end(3)) is None  # not evaluated: neither improves nor counts
    assert early.bad_epochs == 1
    stop = early.after_epoch(_end(4, 0.3))
    assert "no improvement of test/acc for 2 evaluated epochs (best 0.5)" in stop.reason
    assert stop.tags == {"cifar_exp.early_stopped": f"after epoch 4: {stop.reason}"} and not stop.mark
    again = EarlyStopping("test/acc", patience=2)
    again.load_state_dict(early.state_dict())
    assert again.exhausted() and not EarlyStopping("test/acc", patience=3).exhausted()
    assert EarlyStopping("test/acc", patience=0).after_epoch(_end(9, 0.1)) is None  # 0: off


def test_pruning_reports_each_evaluated_epoch_and_marks_only_when_acted_on():
    trial = _Trial(prune_at=2)
    pruning = Pruning(trial, "test/acc")
    assert pruning.after_epoch(_end(1, 0.3)) is None and pruning.after_epoch(_end(2)) is None
    stop = pruning.after_epoch(_end(2, 0.2))
    assert trial.reported == [(1, 0.3), (2, 0.2)] and not trial.marked
    assert stop.mark == "pruned e2" and stop.tags == {study.TRIAL_STATE_TAG: study.PRUNED}
    assert Pruning(None, "test/acc").after_epoch(_end(5, 0.1)) is None  # not in a sweep


def test_every_policy_hears_every_epoch_and_the_first_in_order_decides():
    signals, trial = _Signals(), _Trial(prune_at=1)
    policies = Policies(Signals(signals), EarlyStopping("test/acc", 1), Pruning(trial, "test/acc"))
    stop = policies.after_epoch(_end(1, 0.1), CPU)  # early stopping and pruning both stop
    assert stop.by == "early_stopping" and trial.reported == [(1, 0.1)]
    policies.acted_on(stop)
    assert not trial.marked  # the run stopped early, it was not pruned
    signals.signum = 15
    stop = policies.after_epoch(_end(2, 0.1), CPU)
    assert stop.by == "signals" and stop.interrupt
    assert policies.state_dict() == {"signals": {}, "early_stopping": {"bad_epochs": 2}, "pruning": {}}
    signals.signum = None
    pruned = Policies(Pruning(trial, "test/acc")).after_epoch(_end(3, 0.1), CPU)
    Policies(Pruning(trial, "test/acc")).acted_on(pruned)
    assert trial.marked and Policies().after_epoch(_end(1, 0.1), CPU) is None
