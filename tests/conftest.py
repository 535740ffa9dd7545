"""Shared fixtures: run the real CLI in a temporary directory against a private MLflow
store; and the thread count of pytest-xdist's workers."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import pg
import pytest
import torch

from helpers import Result, Trained, compose_cfg, main_in_process, register_test_models, registry_restored, run_cli


def pytest_configure(config):
    """Under pytest-xdist each worker gets one core, and so does every process it starts
    (they inherit OMP_NUM_THREADS): two workers of two threads each would oversubscribe
    the two cores."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


UNGROUPED = pytest.StashKey[set]()


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """Tests marked xdist_group share what their module starts (one SLURM cluster) and must
    run on one worker. pytest-xdist 3.8 groups them by rewriting node ids, which pytest 9.2
    no longer reads (pytest-xdist#1386): such a split is a failure, not a silent race."""
    if getattr(config.option, "loadgroup", False):
        grouped = [i for i in items if i.get_closest_marker("xdist_group")]
        config.stash[UNGROUPED] = {i.nodeid for i in grouped if "@" not in i.nodeid}


def pytest_runtest_setup(item):
    if item.nodeid in item.config.stash.get(UNGROUPED, set()):
        pytest.fail(
            f"--dist=loadgroup does not keep this xdist_group on one worker with pytest {pytest.__version__}; "
            f"install the dev extra's pytest (pip install -e '.[dev]')",
            pytrace=False,
        )


@pytest.fixture(autouse=True)
def _registry_restored():
    """Whatever a test registers is gone after it (helpers.registry_restored)."""
    with registry_restored():
        yield


@pytest.fixture
def test_models():
    """The test-only models (model=exploding_cnn, slow_cnn, sleepy_cnn) for this test."""
    register_test_models()


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


@pytest.fixture
def cli_here(workdir, monkeypatch):
    """`python -m <module> *args` run by this process in workdir, as `cli` runs it in a
    process of its own (helpers.main_in_process)."""

    def _run(*args: str, module: str = "cifar_exp") -> Result:
        monkeypatch.chdir(workdir)
        return main_in_process(*args, module=module)

    return _run


@pytest.fixture
def train(workdir, monkeypatch, caplog):
    """`run(cfg)` in this process, on the config `python -m cifar_exp *overrides` composes:
    for behaviour tests, where the process boundary is not the point (the CLI tests keep
    signals, exit codes and the one-line errors). Each call runs in `workdir/<run_dir>`, its
    run directory, against workdir's store, and returns what it logged and its metrics."""
    from cifar_exp.run import run

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{workdir / 'mlflow.db'}")

    def _train(*overrides: str, run_dir: str = "run") -> Trained:
        directory = workdir / run_dir
        directory.mkdir(exist_ok=True)
        monkeypatch.chdir(directory)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="cifar_exp"):
            metrics = run(compose_cfg(*overrides))
        return Trained(directory, caplog.text, metrics)

    return _train


@pytest.fixture
def pg_server():
    """A private PostgreSQL server on a free loopback port, its database `mlflow` created."""
    with pg.pg_server() as server:
        yield server


@pytest.fixture
def postgres(pg_server) -> str:
    return pg_server.url
