"""The Optuna study behind `hydra/sweeper=optuna`: its storage and name (one derivation for
the sweeper, the sweep's MLflow parent run and the jobs), its sampler and pruner built from
their registered names, and a job's link to its own trial, which reports the per-epoch
objective and says when the pruner stops the run. Optuna is imported only when used."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from cifar_exp import metrics
from cifar_exp.errors import UserError, reason
from cifar_exp.job import Job, is_sweep, parse_override
from cifar_exp.tracking import PRUNED_TAG

log = logging.getLogger("cifar_exp")

SWEEPER_TARGET = "hydra_plugins.cifar_exp_optuna_sweeper.optuna_sweeper.OptunaSweeper"
DEFAULT_STORAGE = "optuna.db"  # a SQLite file in the launch dir, beside MLflow's mlflow.db
SAMPLERS = {
    "tpe": "TPESampler",
    "random": "RandomSampler",
    "cmaes": "CmaEsSampler",
    "grid": "GridSampler",
    "qmc": "QMCSampler",
    "nsgaii": "NSGAIISampler",
}
# packages a sampler needs beyond Optuna's own (Optuna imports them only when it samples)
SAMPLER_PACKAGES = {"cmaes": "cmaes", "qmc": "scipy"}
PRUNERS = {
    "none": "NopPruner",
    "median": "MedianPruner",
    "hyperband": "HyperbandPruner",
    "successive_halving": "SuccessiveHalvingPruner",
}
# a sweep resumed by the same command finds its MLflow parent run by this tag
STUDY_KEY_TAG = "optuna.study_key"
TRIAL_STATE_TAG, PRUNED = PRUNED_TAG  # a job's tag for its trial's state


def is_optuna(sweeper: Any) -> bool:
    return sweeper is not None and sweeper.get("_target_") == SWEEPER_TARGET


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


DIRECTIONS = {metrics.MIN: "minimize", metrics.MAX: "maximize"}


def direction(configured: Any, objective: str) -> str:
    """The study's direction: derived from the objective (a loss is minimized, an accuracy
    maximized); a configured one (plain: a string or a list) must be that one."""
    derived = DIRECTIONS[metrics.goal(objective)]
    if configured is None:
        return derived
    given = list(configured) if isinstance(configured, (list, tuple)) else [configured]
    if given != [derived]:
        raise UserError(
            f"hydra.sweeper.direction={configured} is invalid: must be {derived} or null, since "
            f"objective={objective} is {derived}d (a run returns that one objective)"
        )
    return derived


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


def study_name(sweeper: Any, task_overrides: list[str]) -> str:
    """`study_name` as given, or one derived from the command's fixed overrides: the same
    command names the same study, and so resumes it."""
    if sweeper.get("study_name"):
        return sweeper["study_name"]
    searched = set(sweeper.get("params") or {})
    fixed = sorted(o for o in task_overrides if parse_override(o)[0] not in searched and not is_sweep(o))
    text = " ".join(fixed)
    digest = hashlib.sha1(text.encode()).hexdigest()[:8]
    return f"cifar_exp {text[:80]} {digest}" if text else f"cifar_exp {digest}"


IDENTITY_ATTR = "cifar_exp.search"


def check_same_search(study, objective: str, directions: list[str], space: dict, sampler: str) -> None:
    """A study is one search: the objective, its direction, the search space and the
    sampler it was made with are kept in the study; a sweep that names the study with any
    of them different is refused in one line saying what differs, never silently continued
    (a study made to maximize val/acc, reused for val/loss, would report the largest loss)."""
    from optuna.distributions import distribution_to_json

    now = {
        "objective": objective,
        "direction": ",".join(directions),
        "space": {k: distribution_to_json(d) for k, d in sorted(space.items())},
        "sampler": sampler,
    }
    kept = study.user_attrs.get(IDENTITY_ATTR)
    if kept is None:  # a new study, or one made before this was kept: its directions are known
        made = ",".join(d.name.lower() for d in study.directions)
        if study.trials and made != now["direction"]:
            raise _other_search(study.study_name, {"direction": (made, now["direction"])})
        study.set_user_attr(IDENTITY_ATTR, now)
        return
    differ = {k: (kept.get(k), v) for k, v in now.items() if kept.get(k) != v}
    if differ:
        raise _other_search(study.study_name, differ)


def check_existing_search(storage: str, name: str, objective: str, directions: list, space: dict, sampler: str) -> None:
    """check_same_search before any job or record: against the study, if the storage has it."""
    import optuna

    db = Path(storage[len("sqlite:///") :].split("?")[0]) if storage.startswith("sqlite:///") else None
    if storage == MEMORY or db is not None and not db.is_file():
        return
    try:
        existing = optuna.load_study(study_name=name, storage=connect(storage))
    except KeyError:  # no such study yet
        return
    check_same_search(existing, objective, directions, space, sampler)


def _other_search(name: str, differ: dict) -> UserError:
    said = "; ".join(
        f"{key} was {_short(was)}, now {_short(now)}" if key != "space" else _space_change(was, now)
        for key, (was, now) in differ.items()
    )
    return UserError(
        f"the Optuna study {name!r} is another search ({said}); a study is one search: name a new one "
        f"with hydra.sweeper.study_name, or run it as it was"
    )


def _space_change(was: Optional[dict], now: dict) -> str:
    was = was or {}
    changed = sorted(k for k in set(was) | set(now) if was.get(k) != now.get(k))
    return f"the search space differs in {', '.join(changed)}"


def _short(value: Any) -> str:
    return str(value)[:60]


def parent_tags(storage: str, name: str) -> dict[str, str]:
    """The sweep's MLflow parent run's tags for its study (the key: a digest, quote-free)."""
    key = hashlib.sha1(f"{storage}#{name}".encode()).hexdigest()[:16]
    return {"optuna.study": name, "optuna.storage": storage, STUDY_KEY_TAG: key}


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
    while e.__cause__ is not None or getattr(e, "orig", None) is not None:
        e = getattr(e, "orig", None) or e.__cause__
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


def _build(module, registry: dict, name: str, kind: str, kwargs: dict):
    if name not in registry:
        raise UserError(f"unknown {kind} {name!r}; expected one of {', '.join(registry)}")
    return getattr(module, registry[name])(**kwargs)


def check_sampler_packages(name: str) -> None:
    """A sampler whose package is missing is refused now, not after the first trial ran
    (Optuna imports it only when it samples)."""
    import importlib.util

    package = SAMPLER_PACKAGES.get(name)
    if package and importlib.util.find_spec(package) is None:
        raise UserError(
            f"hydra/sweeper/sampler={name} needs the {package} package: pip install {package} "
            f"(pip install -e '.[sweep]' brings it)"
        )


def build_sampler(cfg: dict, search_space: Optional[dict] = None):
    import optuna

    # null settings are Optuna's defaults: only what the config sets is passed
    kwargs = {k: v for k, v in cfg.items() if k not in ("name", "_target_") and v is not None}
    if cfg["name"] == "grid":  # the grid is the sweep's own choice(...) and range(...) values

        class SweepGridSampler(optuna.samplers.GridSampler):
            """Optuna's grid ends a study from inside study.optimize() once every point has run,
            which the sweeper does not use: it stops at n_trials or the grid's size itself."""

            def after_trial(self, study, trial, state, values) -> None:
                pass

        return SweepGridSampler(search_space, **kwargs)
    return _build(optuna.samplers, SAMPLERS, cfg["name"], "sampler", kwargs)


def build_pruner(cfg: dict):
    import optuna

    kwargs = {k: ("auto" if v is None and k.endswith("_resource") else v) for k, v in cfg.items() if k != "name"}
    return _build(optuna.pruners, PRUNERS, cfg["name"], "pruner", kwargs)


@dataclass
class TrialLink:
    """A sweep job's own Optuna trial (its number is the job's number), reached through the
    study's storage from whatever process or node the launcher ran it in."""

    storage: str
    study_name: str
    number: int
    pruner_cfg: dict

    def __post_init__(self) -> None:
        import optuna

        self._storage = connect(self.storage, JOB_WAIT_S)
        self._study = optuna.load_study(
            study_name=self.study_name, storage=self._storage, pruner=build_pruner(self.pruner_cfg)
        )
        study_id = self._storage.get_study_id_from_name(self.study_name)
        self._trial_id = self._storage.get_trial_id_from_study_id_trial_number(study_id, self.number)

    def report(self, epoch: int, value: float) -> bool:
        """Record the objective after `epoch`; True when the pruner says stop. A storage that
        cannot be reached costs this epoch's report and pruning, never the training."""
        from optuna.exceptions import StorageInternalError
        from sqlalchemy.exc import SQLAlchemyError

        try:
            self._storage.set_trial_intermediate_value(self._trial_id, epoch, value)
            return self._study.pruner.prune(self._study, self._storage.get_trial(self._trial_id))
        except (SQLAlchemyError, StorageInternalError, UserError) as e:  # Optuna wraps a failed commit in the 2nd
            log.warning(
                "could not report epoch %d to Optuna trial %d (%s); training goes on", epoch, self.number, reason(e)
            )
            return False

    def describe(self, attrs: dict) -> None:
        """Facts of this trial's job (its MLflow run, its run dir) as the trial's user_attrs,
        for Optuna's own tools; like a report, a storage that fails costs only these."""
        from optuna.exceptions import StorageInternalError
        from sqlalchemy.exc import SQLAlchemyError

        try:
            for key, value in attrs.items():
                self._storage.set_trial_user_attr(self._trial_id, key, value)
        except (SQLAlchemyError, StorageInternalError, UserError) as e:
            log.warning("could not describe Optuna trial %d (%s)", self.number, reason(e))

    def mark_pruned(self) -> None:
        from optuna.trial import TrialState

        self._study.tell(self.number, state=TrialState.PRUNED, skip_if_finished=True)


def trial_for(job: Job) -> Optional[TrialLink]:
    """This job's trial when it runs in a sweep of the project's Optuna sweeper."""
    if job.num is None or not is_optuna(job.sweeper) or job.sweeper["storage"] == MEMORY:
        return None  # a study in the sweep's memory hears only what the job returns
    return TrialLink(job.sweeper["storage"], job.sweeper["study_name"], job.num, dict(job.sweeper["pruner"]))
