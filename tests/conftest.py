"""Shared fixtures: run the real CLI in a temporary directory against a private MLflow store."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from helpers import Result, run_cli


@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory) -> Path:
    """An initialised MLflow SQLite store, made once: creating the schema takes seconds."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def workdir(tmp_path, mlflow_template, monkeypatch) -> Path:
    """A launch directory holding its own copy of the store, used as the default URI."""
    shutil.copy(mlflow_template, tmp_path / "mlflow.db")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


@pytest.fixture
def cli(workdir):
    def _run(*args: str, **kwargs) -> Result:
        kwargs.setdefault("cwd", workdir)
        return run_cli(*args, **kwargs)

    return _run
