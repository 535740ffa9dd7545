"""The team set-up: an MLflow server backed by a real PostgreSQL, fed by a parallel sweep."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import free_port, lease_held_elsewhere, run_cli, serve_mlflow

pytestmark = pytest.mark.slow


def test_parallel_sweep_into_a_postgres_backed_server(tmp_path, postgres, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    with serve_mlflow(postgres, tmp_path / "artifacts", tmp_path, timeout=300) as url:
        result = run_cli(
            "--multirun",
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2",
            "dataset=synthetic",
            "dataset.train_size=600",
            "trainer.progress=false",
            "mlflow.log_model=false",
            f"mlflow.tracking_uri={url}",
            "mlflow.experiment_name=team",
            "optimizer.lr=0.01,0.05",
            "seed=0,1",
            cwd=tmp_path,
        )
        assert result.returncode == 0, result.output[-3000:]
        c = MlflowClient(tracking_uri=url)
        runs = c.search_runs([c.get_experiment_by_name("team").experiment_id])
        [parent] = [r for r in runs if r.data.tags.get("cifar_exp.sweep") == "true"]
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        assert parent.info.status == "FINISHED"
        assert len(children) == 4 and {r.info.status for r in children} == {"FINISHED"}
        # artifacts come back through the server's proxy
        summary = Path(c.download_artifacts(parent.info.run_id, "sweep_summary.csv", str(tmp_path)))
        assert len(summary.read_text().strip().splitlines()) == 5
        plots = {a.path for a in c.list_artifacts(children[0].info.run_id, "plots")}
        assert "plots/learning_curves.png" in plots


def test_the_lease_is_one_per_study_on_a_server_however_it_is_reached(postgres):
    """localhost and 127.0.0.1 reach one server: one lease for the study on it."""
    from cifar_exp import study_storage
    from cifar_exp.errors import UserError

    by_address = postgres.replace("postgresql://", "postgresql+psycopg://")
    by_name = by_address.replace("@127.0.0.1:", "@localhost:")
    with lease_held_elsewhere(by_address, "lr_search"):
        with pytest.raises(UserError, match="is being run by another sweep"):
            study_storage.take_lease(by_name, "lr_search", "the second sweep")


def test_a_server_restarted_mid_sweep_is_waited_for_and_the_study_goes_on(pg_server, caplog):
    """The study's server restarts between two of the sweep's calls: the dropped pooled
    connection is replaced and the call goes through, with a line if it had to wait."""
    import optuna

    from cifar_exp import study_storage

    storage = pg_server.url.replace("postgresql://", "postgresql+psycopg://")
    made = optuna.create_study(study_name="s", storage=study_storage.connect(storage, wait_s=60), direction="maximize")
    made.tell(made.ask({"x": optuna.distributions.FloatDistribution(0, 1)}), 0.5)
    pg_server.restart()
    made.tell(made.ask({"x": optuna.distributions.FloatDistribution(0, 1)}), 0.7)
    assert [t.value for t in made.get_trials()] == [0.5, 0.7]


def test_a_storage_that_cannot_be_reached_is_one_line_at_once(pg_server):
    from cifar_exp import study_storage
    from cifar_exp.errors import UserError

    missing = pg_server.url.replace("postgresql://", "postgresql+psycopg://").replace("/mlflow", "/nope")
    with pytest.raises(UserError, match='cannot use the Optuna storage .*database "nope" does not exist'):
        study_storage.connect(missing)
    down = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/mlflow"
    with pytest.raises(UserError, match="cannot use the Optuna storage .*(refused|failed)"):
        study_storage.connect(down)
