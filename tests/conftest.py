"""Shared fixtures: run the real CLI in a temporary directory against a private MLflow store."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
# Small, fast runs: the synthetic set, a learning rate that learns in two epochs, no bar.
FAST = ["dataset=synthetic", "optimizer.lr=0.05", "optimizer.momentum=0.9", "trainer.progress=false"]


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


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


def cli_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "CIFAR_EXP_"))}
    # tests/ on the path lets a run use the test-only models in tests/helpers.py
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), env.get("PYTHONPATH")]))
    env.pop("HYDRA_FULL_ERROR", None)
    env.update(extra)
    return env


def run_cli(
    *args: str, cwd: Path, module: str = "cifar_exp", python_args: tuple = (), timeout: float = 300, **env
) -> Result:
    proc = subprocess.run(
        [sys.executable, *python_args, "-m", module, *args],
        cwd=cwd,
        env=cli_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def cli(workdir):
    def _run(*args: str, **kwargs) -> Result:
        kwargs.setdefault("cwd", workdir)
        return run_cli(*args, **kwargs)

    return _run


def run_dirs(root: Path) -> list[Path]:
    """Hydra output dirs (those holding .hydra/) under root, oldest first."""
    return sorted((p.parent for p in root.glob("outputs/*/*/.hydra")), key=lambda p: p.stat().st_mtime)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve_mlflow(backend_uri: str, artifacts: Path, cwd: Path, timeout: float = 180, port: int = 0):
    """A real `mlflow server` on a loopback port (a free one unless given); yields its URL."""
    port = port or free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            backend_uri,
            "--artifacts-destination",
            str(artifacts),
            "--workers",
            "1",
        ],
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
        # no background job workers: nothing here uses them
        env=cli_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2)
                break
            except OSError:
                if proc.poll() is not None:
                    pytest.fail("mlflow server exited: " + proc.stderr.read().decode()[-2000:])
                if time.monotonic() > deadline:
                    pytest.fail("mlflow server did not start")
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and every worker it started
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
