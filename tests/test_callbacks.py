"""Sweeps: every job a child of one parent run, a summary at the end, nothing lost."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SWEEP = [
    "--multirun",
    "dataset=synthetic",
    "dataset.train_size=600",
    "trainer.progress=false",
    "mlflow.log_model=false",
    "optimizer.momentum=0.9",
]


def store(workdir: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")


def sweep_runs(workdir: Path, experiment: str = "cifar_exp"):
    c = store(workdir)
    exp = c.get_experiment_by_name(experiment)
    runs = c.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("cifar_exp.sweep") == "true"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return c, parents, children


def summary_rows(c, parent) -> list[dict]:
    path = c.download_artifacts(parent.info.run_id, "sweep_summary.csv")
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.fixture
def fresh_store(tmp_path, monkeypatch):
    """No store at all yet: the sweep must create it once, before its parallel jobs."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def test_parallel_joblib_sweep_on_a_fresh_store(fresh_store):
    from helpers import run_cli

    result = run_cli(
        *SWEEP,
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "optimizer.lr=0.01,0.05",
        "seed=0,1",
        cwd=fresh_store,
    )
    assert result.returncode == 0, result.output[-3000:]
    [warning] = [line for line in result.stderr.splitlines() if "warning" in line]
    assert "selects on test/acc, a test-set metric" in warning
    c, parents, children = sweep_runs(fresh_store)
    [parent] = parents
    assert parent.info.status == "FINISHED"
    assert len(children) == 4 and {r.info.status for r in children} == {"FINISHED"}
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}
    assert c.search_runs(["0"]) == []  # nothing fell into the Default experiment
    rows = summary_rows(c, parent)
    assert sorted(r["job"] for r in rows) == ["0", "1", "2", "3"]
    assert all(float(r["test/acc"]) > 0.1 for r in rows)
    artifacts = {a.path for a in c.list_artifacts(parent.info.run_id)}
    assert {"sweep_summary.csv", "sweep_seeds.csv", "objective_vs_params.png"} <= artifacts
    best = max(children, key=lambda r: r.data.metrics["test/acc"])
    assert parent.data.tags["best_run_id"] == best.info.run_id
    assert parent.data.metrics["best/test/acc"] == best.data.metrics["test/acc"]
    dirs = {r.data.tags["hydra.output_dir"] for r in children}
    assert len(dirs) == 4 and all("/multirun/" in d for d in dirs)
    # a child's name is its swept values (what its siblings share is in the parent's), the
    # best one marked; the parent keeps the swept lists apart
    names = {r.info.run_id: r.info.run_name for r in children}
    lr, seed = best.data.params["optimizer.lr"], best.data.params["seed"]
    assert names.pop(best.info.run_id) == f"[best] lr={lr} seed={seed}"
    assert sorted(names.values()) == sorted(
        {"lr=0.01 seed=0", "lr=0.01 seed=1", "lr=0.05 seed=0", "lr=0.05 seed=1"}
        - {best.info.run_name.removeprefix("[best] ")}
    )
    assert [r.data.tags.get("cifar_exp.best") for r in children].count("true") == 1
    assert parent.info.run_name.startswith("sweep ") and "lr=0.01,0.05 seed=0,1" in parent.info.run_name
    assert parent.data.params["sweep.optimizer.lr"] == "0.01,0.05" and parent.data.params["sweep.seed"] == "0,1"
    assert "optimizer.lr" not in parent.data.params
    # the parent says what it is: its command, who ran it, from what, and its best job's values
    tags = parent.data.tags
    assert tags["mlflow.user"] and tags["mlflow.source.name"] == "cifar_exp" and len(tags["cifar_exp.git_commit"]) == 40
    note = tags["mlflow.note.content"]
    assert note.startswith("`python -m cifar_exp --multirun ") and "**Best**: job" in note
    assert f"`optimizer.lr={lr}`" in note and "jobs: 4, finished 4" in note
    assert tags["best.optimizer.lr"] == lr and tags["best.seed"] == seed
    # the summary has a column per swept key, holding that job's value
    assert list(rows[0])[:4] == ["job", "status", "optimizer.lr", "seed"]
    assert sorted((r["optimizer.lr"], r["seed"]) for r in rows) == [
        ("0.01", "0"),
        ("0.01", "1"),
        ("0.05", "0"),
        ("0.05", "1"),
    ]
    assert [r["best"] for r in rows].count("True") == 1


def test_a_failed_job_leaves_the_others_and_a_summary(cli_here, workdir, test_models):
    result = cli_here(*SWEEP, "model=simple_cnn,exploding_cnn,tutorial_net")
    assert result.returncode != 0
    c, [parent], children = sweep_runs(workdir)
    statuses = sorted(r.info.status for r in children)
    assert statuses == ["FAILED", "FINISHED", "FINISHED"]
    assert parent.info.status == "FAILED"
    rows = summary_rows(c, parent)
    assert sorted(r["status"] for r in rows) == statuses


def test_submitit_local_sweep(cli, workdir):
    result = cli(*SWEEP, "hydra/launcher=submitit_local", "optimizer.lr=0.01,0.05")
    assert result.returncode == 0, result.output[-3000:]
    c, [parent], children = sweep_runs(workdir)
    assert parent.info.status == "FINISHED"
    assert sorted(r.data.params["optimizer.lr"] for r in children) == ["0.01", "0.05"]


def test_optuna_search_with_three_trials_selects_on_validation_data(cli_here, workdir):
    # the preset holds out a share of the training images, so it runs on synthetic's 600 as is
    result = cli_here(*SWEEP, "hparams_search=optuna_lr", "hydra.sweeper.n_trials=3")
    assert result.returncode == 0, result.output[-3000:]
    assert "maximize val/acc" in result.output  # the direction, derived from the objective
    assert "warning" not in result.stderr  # a validation objective: no warning
    c, [parent], children = sweep_runs(workdir)
    assert len(children) == 3 and {r.info.status for r in children} == {"FINISHED"}
    best = max(children, key=lambda r: r.data.metrics["val/acc"])
    assert parent.data.metrics["best/val/acc"] == best.data.metrics["val/acc"]
    assert {r.data.tags["checkpoint.monitor"] for r in children} == {"val/acc"}  # follows the objective
    rows = summary_rows(c, parent)
    assert all(r["val/acc"] and r["test/acc"] for r in rows)  # selected on val, reported on test
    assert "Best value" in result.output
    lrs = {r.data.params["optimizer.lr"] for r in children}
    assert len(lrs) == 3 and all(1e-4 <= float(v) <= 0.3 for v in lrs)


def test_jobs_that_fail_before_training_are_recorded(cli_here, workdir):
    """Bad values are refused before the sweep starts (tests/test_validation.py); what only
    the job can find, a checkpoint that is not there, fails that job before its run opens."""
    result = cli_here(*SWEEP, "optimizer.lr=0.01,0.05", f"resume=auto,{workdir / 'nope.pt'}")
    assert result.returncode != 0, result.output[-3000:]
    c, [parent], children = sweep_runs(workdir)
    assert len(children) == 4 and parent.info.status == "FAILED"
    failed = sorted((r for r in children if r.info.status == "FAILED"), key=lambda r: r.data.tags["hydra.job.num"])
    assert [r.data.tags["hydra.overrides"].split()[-2:] for r in failed] == [
        ["optimizer.lr=0.01", f"resume={workdir / 'nope.pt'}"],
        ["optimizer.lr=0.05", f"resume={workdir / 'nope.pt'}"],
    ]
    assert all("nope.pt does not exist" in r.data.tags["error"] for r in failed)
    rows = summary_rows(c, parent)
    assert sorted(r["status"] for r in rows) == ["FAILED", "FAILED", "FINISHED", "FINISHED"]
    assert parent.data.metrics["jobs"] == 4


def test_a_multi_objective_study_reports_its_pareto_front(cli_here, workdir):
    import optuna

    result = cli_here(
        *SWEEP,
        "hparams_search=optuna_pareto",
        "hydra.sweeper.n_trials=4",
        "model=choice(tutorial_net,simple_cnn)",
    )
    assert result.returncode == 0, result.output[-3000:]
    assert "maximize/minimize val/acc,model/params" in result.output
    c, [parent], children = sweep_runs(workdir)
    assert len(children) == 4 and {r.info.status for r in children} == {"FINISHED"}
    points = {r.info.run_id: (r.data.metrics["val/acc"], r.data.metrics["model/params"]) for r in children}
    front = {
        i
        for i, (acc, size) in points.items()
        if not any(a >= acc and s <= size and (a, s) != (acc, size) for a, s in points.values())
    }
    assert set(parent.data.tags["pareto_run_ids"].split(",")) == front
    assert parent.data.metrics["pareto_front_jobs"] == len(front) and "best_run_id" not in parent.data.tags
    marked = {r.info.run_id for r in children if r.data.tags.get("cifar_exp.pareto") == "true"}
    assert marked == front and all(r.info.run_name.startswith("[pareto] ") for r in children if r.info.run_id in front)
    artifacts = {a.path for a in c.list_artifacts(parent.info.run_id)}
    assert {"sweep_summary.csv", "pareto_front.png", "optimization_results.yaml"} <= artifacts
    rows = summary_rows(c, parent)
    assert {r["run_id"] for r in rows if r["pareto"] == "True"} == front
    assert "**Pareto front**" in parent.data.tags["mlflow.note.content"]
    # Optuna's own record: both values per trial, named
    study = optuna.load_study(study_name=None, storage=f"sqlite:///{workdir / 'optuna.db'}")
    assert study.metric_names == ["val/acc", "model/params"]
    # (MLflow holds 7 significant digits)
    told, logged = sorted(tuple(t.values) for t in study.trials), sorted(points.values())
    assert [v for p in told for v in p] == pytest.approx([v for p in logged for v in p], rel=1e-6)


@pytest.mark.parametrize(
    "extra, said",
    [
        (["hydra/sweeper/pruner=median"], "Optuna cannot prune a multi-objective study"),
        (["hydra.sweeper.direction=[maximize,maximize]"], "model/params is minimized"),
        (["objective=[val/acc,val/acc]"], "a list of two or more different ones"),
        (["objective=[val/acc,params]"], "objective='params' is invalid"),
    ],
)
def test_a_multi_objective_study_is_checked_before_any_job(cli_here, workdir, extra, said):
    """The study's checks, in this process: test_validation's refused sweep is the real
    process whose one line and exit code these share."""
    result = cli_here(*SWEEP, "hparams_search=optuna_pareto", *extra)
    assert result.returncode != 0 and said in result.stderr, result.stderr[-2000:]
    assert len(result.stderr.strip().splitlines()) == 1 and not (workdir / "multirun").exists()
