"""A sweep's results read from its children: the best job, seed statistics, the parent's
status, and for several objectives the Pareto front."""

from __future__ import annotations

from pathlib import Path

import pytest

from cifar_exp.errors import Interrupted, UserError
from cifar_exp.sweep_summary import sweep_summary, write_csv


@pytest.mark.parametrize(
    "stopped_by, status",
    [
        ([], "FAILED"),  # a traceback: nothing said why
        ([UserError("the Optuna storage x stayed locked for 600 s")], "FAILED"),
        ([Interrupted(15, "python -m cifar_exp --multirun ...")], "KILLED"),
    ],
)
def test_a_sweep_that_did_not_reach_its_end_is_not_finished(stopped_by, status):
    s = sweep_summary([], ["test/acc"], ["optimizer.lr"], completed=False, stopped_by=stopped_by)
    assert s["status"] == status and s["metrics"]["jobs"] == 0
    why = s["tags"]["cifar_exp.sweep_end"]
    assert why.startswith("the sweep stopped before its end") and "0 jobs ran" in why
    assert all(str(e) in why for e in stopped_by)
    assert sweep_summary([], ["test/acc"], [], completed=True)["status"] == "FINISHED"


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
    s = sweep_summary(children, ["test/acc"], ["seed"], completed=True)
    assert s["metrics"]["test/acc_mean"] == pytest.approx(0.6)
    assert s["metrics"]["test/acc_std"] == pytest.approx(0.1)
    assert s["tags"]["best_run_id"] == "1" and s["status"] == "FINISHED"


def _children(values: list[tuple], names: list[str], status: str = "FINISHED") -> list[dict]:
    return [
        {
            "run_id": f"r{i}",
            "status": status,
            "metrics": dict(zip(names, point)),
            "tags": {"hydra.job.num": str(i), "hydra.overrides": f"model.width={i}"},
        }
        for i, point in enumerate(values)
    ]


NAMES = ["val/acc", "model/params"]  # accuracy up, size down


@pytest.mark.parametrize(
    "points, front",
    [
        # job 1 is beaten by job 0 on both; job 3 is as good as job 2 on one and worse on the other
        ([(0.8, 1000), (0.7, 2000), (0.9, 5000), (0.9, 6000), (0.6, 500)], [0, 2, 4]),
        ([(0.8, 1000), (0.8, 1000)], [0, 1]),  # equal points dominate neither
        ([(0.5, 100)], [0]),
    ],
)
def test_several_objectives_give_the_pareto_front_in_each_metrics_direction(points, front):
    s = sweep_summary(_children(points, NAMES), NAMES, ["model.width"], completed=True)
    assert [r["job"] for r in s["front"]] == [str(i) for i in front]
    assert [r["job"] for r in s["rows"] if r["pareto"]] == [str(i) for i in front]
    assert s["best"] is None and "best_run_id" not in s["tags"]
    assert s["metrics"]["pareto_front_jobs"] == len(front)
    assert s["tags"]["pareto_run_ids"] == ",".join(f"r{i}" for i in front)
    assert s["tags"]["pareto_jobs"] == " ".join(map(str, front))


def test_the_front_reads_directions_from_the_catalogue_not_the_order():
    # time/epoch_s is minimized like model/params: the smallest pair wins alone
    names = ["time/epoch_s", "model/params"]
    s = sweep_summary(_children([(2.0, 100), (1.0, 50), (3.0, 10)], names), names, [], completed=True)
    assert [r["job"] for r in s["front"]] == ["1", "2"]


def test_failed_and_pruned_jobs_are_never_on_the_front():
    children = _children([(0.9, 10), (0.5, 20)], NAMES)
    children[0]["status"] = "FAILED"
    s = sweep_summary(children, NAMES, [], completed=True)
    assert [r["job"] for r in s["front"]] == ["1"]


def test_the_description_lists_the_front_with_each_objective():
    from cifar_exp.sweep_summary import sweep_description

    s = sweep_summary(_children([(0.8, 1000), (0.9, 5000), (0.7, 2000)], NAMES), NAMES, ["model.width"], True)
    text = sweep_description("python -m cifar_exp --multirun", Path("/s"), s, NAMES, ["model.width"])
    assert "**Pareto front** (2 jobs; val/acc maximized, model/params minimized)" in text
    assert "| 0 | 0.8 | 1000 | `model.width=0` | `r0` |" in text and "| 2 |" not in text


def test_seed_statistics_cover_every_objective():
    children = _children([(0.5, 10), (0.7, 10)], NAMES)
    for i, c in enumerate(children):
        c["tags"]["hydra.overrides"] = f"seed={i}"
    s = sweep_summary(children, NAMES, ["seed"], completed=True)
    assert s["metrics"]["val/acc_mean"] == pytest.approx(0.6) and s["metrics"]["model/params_std"] == 0


def test_the_csv_leads_with_the_job_its_swept_values_and_its_objectives(tmp_path):
    """A table preview shows its first columns: the long overrides and paths come last."""
    import csv

    rows = sweep_summary(_children([(0.5, 10), (0.6, 20)], NAMES), NAMES, ["model.width"], completed=True)["rows"]
    with open(write_csv(rows, tmp_path / "sweep_summary.csv", ["model.width"])) as f:
        header = next(csv.reader(f))
    assert header[:5] == ["job", "status", "model.width", "val/acc", "model/params"], header
    assert header[-3:] == ["run_id", "overrides", "output_dir"], header
