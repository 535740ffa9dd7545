"""A private PostgreSQL server for the tests that need the real one (the team server, the
Optuna study of a sweep across SLURM nodes)."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pytest

from helpers import free_port

PG_BIN = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))


def _as_postgres(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    """PostgreSQL refuses to run as root: drop to its own user when we are root."""
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    return subprocess.run(cmd, check=True, capture_output=True, text=True, cwd="/", **kw)


@dataclass
class PgServer:
    url: str
    restart: Callable[[], None]


@contextlib.contextmanager
def pg_server() -> Iterator[PgServer]:
    """A private PostgreSQL server on a free loopback port, its database `mlflow` created."""
    if not PG_BIN:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql; .ci/run installs it)")
    pytest.importorskip("psycopg", reason="psycopg is missing (pip install -e .[dev])")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no postgres user to run the server as")
    bindir = PG_BIN[-1].parent
    # not under tmp_path: pytest keeps that private to root, out of the postgres user's reach
    base = Path(tempfile.mkdtemp(prefix="cifar_exp_pg_"))
    base.chmod(0o755)
    data, sock = base / "pgdata", base / "pgsock"
    sock.mkdir()
    if os.geteuid() == 0:
        shutil.chown(sock, "postgres")
        data.mkdir()
        shutil.chown(data, "postgres")
    port = free_port()
    _as_postgres([str(bindir / "initdb"), "-D", str(data), "--auth=trust", "-U", "postgres"])
    pg_ctl = [str(bindir / "pg_ctl"), "-D", str(data), "-w", "-l", str(sock / "log")]
    options = ["-o", f"-p {port} -c listen_addresses=127.0.0.1 -k {sock}"]
    _as_postgres([*pg_ctl, *options, "start"])
    try:
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres", autocommit=True) as conn:
            conn.execute("CREATE DATABASE mlflow")
        yield PgServer(
            f"postgresql://postgres@127.0.0.1:{port}/mlflow",
            lambda: _as_postgres([*pg_ctl, *options, "-m", "fast", "restart"]),
        )
    finally:
        _as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"])
        shutil.rmtree(base, ignore_errors=True)
