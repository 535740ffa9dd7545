"""A sweep's results read from its children: the best job, seed statistics, the parent's
status, and for several objectives the Pareto front."""

from __future__ import annotations

import pytest

from cifar_exp.errors import Interrupted, UserError
from cifar_exp.sweep_summary import sweep_summary


@pytest.mark.parametrize(
    "stopped_by, status",
    [
        ([], "FAILED"),  # a traceback: nothing said why
        ([UserError("the Optuna storage x stayed locked for 600 s")], "FAILED"),
        ([Interrupted(15, "python -m cifar_exp --multirun ...")], "KILLED"),
    ],
)
def test_a_sweep_that_did_not_reach_its_end_is_not_finished(stopped_by, status):
    s = sweep_summary([], "test/acc", ["optimizer.lr"], completed=False, stopped_by=stopped_by)
    assert s["status"] == status and s["metrics"]["jobs"] == 0
    why = s["tags"]["cifar_exp.sweep_end"]
    assert why.startswith("the sweep stopped before its end") and "0 jobs ran" in why
    assert all(str(e) in why for e in stopped_by)
    assert sweep_summary([], "test/acc", [], completed=True)["status"] == "FINISHED"


def test_seed_sweep_reports_mean_and_std():
    children = [
        {
            "run_id": str(i),
            "status": "FINISHED",
            "metrics": {"test/acc": acc},
            "tags": {"hydra.job.num": str(i), "hydra.overrides": f"epochs=2 seed={i}"},
        }
        for i, acc in enumerate([0.5, 0.7, 0.6])
    ]
    s = sweep_summary(children, "test/acc", ["seed"], completed=True)
    assert s["metrics"]["test/acc_mean"] == pytest.approx(0.6)
    assert s["metrics"]["test/acc_std"] == pytest.approx(0.1)
    assert s["tags"]["best_run_id"] == "1" and s["status"] == "FINISHED"
