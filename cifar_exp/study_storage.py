"""Where an Optuna study lives: the storage URL rule (a file, a server, or memory), its
checks before any job, the lease that lets one sweep run a study at a time, and a
connection that waits out a lock or a server that went away (bounded, with a line).
Optuna and SQLAlchemy are imported only when used."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import time
from pathlib import Path
from typing import Any, Optional

from cifar_exp.errors import UserError, reason

log = logging.getLogger("cifar_exp")

DEFAULT_STORAGE = "optuna.db"  # a SQLite file in the launch dir, beside MLflow's mlflow.db

MEMORY = ":memory:"  # a study kept in the sweep's own memory, gone when it ends


def storage_url(sweeper: Any, launch_dir: Path, memory_by_default: bool = False) -> str:
    """`storage` as given, a relative SQLite path made absolute (jobs may run elsewhere),
    or by default the SQLite file in the launch dir (a cifar_exp sweep: its jobs report to
    the study, and the same command resumes it) or memory (any other app, as the official
    plugin does: its jobs only return a value)."""
    url = sweeper.get("storage") or (MEMORY if memory_by_default else f"sqlite:///{DEFAULT_STORAGE}")
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url[len(prefix) :].startswith("/"):
        url = prefix + str((launch_dir / url[len(prefix) :]).resolve())
    return url


def check_storage(url: str) -> None:
    """An SQLAlchemy URL whose dialect is installed; an SQLite file's folder must exist."""
    from sqlalchemy.engine import make_url

    if url == MEMORY:
        return

    try:
        parsed = make_url(url)
        dialect = parsed.get_dialect()
    except Exception as e:  # ArgumentError for garbage, NoSuchModuleError for an unknown dialect
        raise UserError(
            f"hydra.sweeper.storage={url!r} is invalid: must be an SQLAlchemy database URL "
            f"such as sqlite:///optuna.db ({reason(e)})"
        ) from None
    try:
        dialect.import_dbapi()
    except ImportError as e:
        raise UserError(
            f"hydra.sweeper.storage={url!r} needs its database driver, which is not installed ({reason(e)}); "
            f"for PostgreSQL: pip install 'psycopg[binary]' and a URL starting postgresql+psycopg://"
        ) from None
    if parsed.get_backend_name() == "sqlite" and parsed.database:
        folder = Path(parsed.database).parent
        if not folder.is_dir():
            raise UserError(f"hydra.sweeper.storage={url!r} is invalid: its folder {folder} does not exist")
        _check_sqlite(Path(parsed.database))


def _check_sqlite(db: Path) -> None:
    """An SQLite file that is there must be a database (an empty one is a new study)."""
    import sqlite3

    if not db.is_file() or db.stat().st_size == 0:
        return
    try:
        with contextlib.closing(sqlite3.connect(db, timeout=SQLITE_BUSY_S)) as c:
            # the b-trees' structure, every page: a file damaged past its header fails here
            [verdict] = c.execute("PRAGMA quick_check(1)").fetchone()
            if verdict != "ok":
                raise sqlite3.DatabaseError(verdict)
    except sqlite3.DatabaseError as e:
        if "locked" in str(e):
            return  # in use: the sweep waits for it
        raise UserError(
            f"the Optuna storage {db} is damaged or not a database ({e}); move it away (the study "
            f"starts afresh) or point hydra.sweeper.storage elsewhere"
        ) from None


# the leases this process holds, by study: each until the process ends, when the system
# lets go of it however the process ends (a killed sweep leaves no stale lease behind)
_LEASES: dict[str, Any] = {}


def take_lease(storage: str, name: str, command: str) -> None:
    """One sweep per study: the running sweep holds a lease on it, and a second sweep of the
    same study is refused in one line naming the first. The lease is keyed on the study's
    identity, not on how the URL spells it. SQLite: a lock on a file beside the database,
    keyed on its resolved path (`./`, a linked folder and `?timeout=` reach one file);
    PostgreSQL: a session advisory lock, which the server scopes to the database the session
    is in (`localhost` and `127.0.0.1` reach one lock); other stores: no lease, said once."""
    if storage == MEMORY:  # no other process can reach this study
        return
    if storage.startswith("sqlite:///"):
        db = Path(storage[len("sqlite:///") :].split("?")[0]).expanduser().resolve()
        key = _lease_key(f"sqlite:{db}", name)
        if key not in _LEASES:
            _LEASES[key] = _file_lease(db, key, name, command)
    elif storage.startswith(("postgresql", "postgres")):
        key = _lease_key("postgresql", name)
        if key not in _LEASES:
            _LEASES[key] = _advisory_lease(storage, key, name)
    elif storage not in _LEASES:
        log.warning("warning: no sweep lease on %s: make sure no other sweep runs study %r", storage, name)
        _LEASES[storage] = None


def _lease_key(where: str, name: str) -> str:
    return hashlib.sha1(f"{where}#{name}".encode()).hexdigest()[:16]


def _running(name: str, holder: str) -> UserError:
    return UserError(
        f"the Optuna study {name!r} is being run by another sweep ({holder}); one sweep per study: "
        f"wait for it to end, stop it, or name another study with hydra.sweeper.study_name"
    )


def _file_lease(db: Path, key: str, name: str, command: str):
    import fcntl
    import os
    import socket
    import time

    path = db.parent / f".{db.name}.{key}.sweep"
    try:
        f = open(path, "a+")
    except OSError as e:
        raise UserError(f"cannot take the sweep lease {path}: {e.strerror or e}") from None
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "a process that has not said which"
        f.close()
        raise _running(name, holder) from None
    f.truncate(0)
    f.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}: {command}")
    f.flush()
    return f


def _advisory_lease(storage: str, key: str, name: str):
    import sqlalchemy

    connection = sqlalchemy.create_engine(storage, poolclass=sqlalchemy.pool.NullPool).connect()
    lock = int(key[:15], 16)  # fits PostgreSQL's bigint
    if not connection.execute(sqlalchemy.text("SELECT pg_try_advisory_lock(:k)"), {"k": lock}).scalar():
        holders = connection.execute(
            sqlalchemy.text(
                "SELECT a.pid, a.client_addr, a.backend_start FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
                "WHERE l.locktype = 'advisory' AND l.objid = (:k & 4294967295) AND l.classid = (:k >> 32)"
            ),
            {"k": lock},
        ).fetchall()
        connection.close()
        holder = (
            ", ".join(
                f"server pid {p} from {addr or 'a local socket'} since {start:%Y-%m-%d %H:%M:%S}"
                for p, addr, start in holders
            )
            or "a session of the database server"
        )
        raise _running(name, holder)
    connection.commit()  # the lock is the session's: no transaction stays open
    return connection


# A locked SQLite storage (another process writing, a backup holding it) is waited for:
# each attempt waits SQLITE_BUSY_S, so the line saying so comes early, and the whole wait is
# bounded (the sweep's by SWEEP_WAIT_S; a job's by JOB_WAIT_S, then that epoch's report goes)
SQLITE_BUSY_S = 10
SWEEP_WAIT_S, JOB_WAIT_S = 600, 60


def connect(storage: str, wait_s: float = SWEEP_WAIT_S):
    """Optuna's RDB storage, every call of which waits out a lock or a server that went away
    (bounded, with a line). Reaching it the first time is not waited for: a server that is
    down or a database that does not exist is one line now."""
    if storage == MEMORY:
        import optuna

        return optuna.storages.InMemoryStorage()
    kwargs: dict[str, Any]
    if storage.startswith("sqlite"):
        kwargs = {"connect_args": {"timeout": SQLITE_BUSY_S}}
    else:  # a pooled connection the server dropped (a restart) is replaced, not used
        kwargs = {"pool_pre_ping": True}
    patient = _patient_storage()
    try:
        connected = _waiting(lambda: patient(storage, engine_kwargs=kwargs), storage, wait_s, reconnect=False)
    except UserError:
        raise
    except Exception as e:  # refused, unknown host, no such database, bad credentials, damage
        raise UserError(f"cannot use the Optuna storage {storage}: {_storage_reason(e)}") from None
    connected.wait_s = wait_s
    return connected


def _storage_reason(e: BaseException) -> str:
    """The database's own words: SQLAlchemy wraps them, with a link, around the driver's."""
    while (inner := getattr(e, "orig", None) or e.__cause__) is not None:
        e = inner
    return reason(e)


def _locked(e: Optional[BaseException]) -> bool:
    while e is not None:
        if "database is locked" in str(e):
            return True
        e = e.__cause__ or e.__context__
    return False


def _away(e: BaseException) -> bool:
    """A server that stopped answering (restarting, a dropped connection): SQLAlchemy's
    OperationalError or InterfaceError flagged as a lost connection, or raised while connecting."""
    from sqlalchemy.exc import DBAPIError

    return isinstance(e, DBAPIError) and (e.connection_invalidated or "connect" in str(e).lower())


def _damaged(e: BaseException) -> bool:
    return any(w in str(e) for w in ("malformed", "not a database", "disk I/O error"))


def _waiting(call, storage: str, wait_s: float, reconnect: bool = True):
    deadline = None
    while True:
        try:
            return call()
        except Exception as e:
            if _damaged(e):
                raise UserError(
                    f"the Optuna storage {storage} is damaged ({_storage_reason(e)}); move it away (the study "
                    f"starts afresh) or point hydra.sweeper.storage elsewhere"
                ) from None
            waits = _locked(e) or reconnect and _away(e)
            if not waits:
                raise
            if deadline is None:
                deadline = time.monotonic() + wait_s
                log.warning(
                    "warning: the Optuna storage %s is %s; waiting for it (up to %d s)",
                    storage,
                    "locked by another process" if _locked(e) else f"not answering ({_storage_reason(e)})",
                    wait_s,
                )
            if time.monotonic() >= deadline:
                raise UserError(
                    f"the Optuna storage {storage} stayed {'locked' if _locked(e) else 'unreachable'} for "
                    f"{wait_s:.0f} s; bring it back (or find what holds it) and run the same command again: "
                    f"the study resumes"
                ) from None
            time.sleep(1)


@functools.cache
def _patient_storage():
    """RDBStorage whose public calls wait out a lock (see _waiting)."""
    from optuna.storages import BaseStorage, RDBStorage

    def patient(method):
        @functools.wraps(method)
        def call(self, *args, **kwargs):
            return _waiting(lambda: method(self, *args, **kwargs), self.url, self.wait_s)

        return call

    methods = {
        name: patient(getattr(RDBStorage, name))
        for name in dir(BaseStorage)
        if not name.startswith("_") and callable(getattr(RDBStorage, name))
    }
    return type("PatientRDBStorage", (RDBStorage,), {"wait_s": SWEEP_WAIT_S, **methods})
