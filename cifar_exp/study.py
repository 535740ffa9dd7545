"""The Optuna study behind `hydra/sweeper=optuna`: its storage and name (one derivation for
the sweeper, the sweep's MLflow parent run and the jobs), its sampler and pruner built from
their registered names, and a job's link to its own trial, which reports the per-epoch
objective and says when the pruner stops the run. Optuna is imported only when used."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from cifar_exp import metrics
from cifar_exp.errors import UserError
from cifar_exp.job import Job, is_sweep, parse_override
from cifar_exp.tracking import PRUNED_TAG

log = logging.getLogger("cifar_exp")

SWEEPER_TARGET = "hydra_plugins.cifar_exp_optuna_sweeper.optuna_sweeper.OptunaSweeper"
DEFAULT_STORAGE = "optuna.db"  # a SQLite file in the launch dir, beside MLflow's mlflow.db
SAMPLERS = {"tpe": "TPESampler", "random": "RandomSampler", "cmaes": "CmaEsSampler", "grid": "GridSampler",
            "qmc": "QMCSampler", "nsgaii": "NSGAIISampler"}
PRUNERS = {"none": "NopPruner", "median": "MedianPruner", "hyperband": "HyperbandPruner",
           "successive_halving": "SuccessiveHalvingPruner"}
# a sweep resumed by the same command finds its MLflow parent run by this tag
STUDY_KEY_TAG = "optuna.study_key"
TRIAL_STATE_TAG, PRUNED = PRUNED_TAG  # a job's tag for its trial's state


def is_optuna(sweeper: Any) -> bool:
    return sweeper is not None and sweeper.get("_target_") == SWEEPER_TARGET


def storage_url(sweeper: Any, launch_dir: Path) -> str:
    """`storage` as given, a relative SQLite path made absolute (jobs may run elsewhere),
    or the default SQLite file in the launch dir."""
    url = sweeper.get("storage") or f"sqlite:///{DEFAULT_STORAGE}"
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url[len(prefix):].startswith("/"):
        url = prefix + str((launch_dir / url[len(prefix):]).resolve())
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
        raise UserError(f"hydra.sweeper.direction={configured} is invalid: must be {derived} or null, since "
                        f"objective={objective} is {derived}d (a run returns that one objective)")
    return derived


def check_storage(url: str) -> None:
    """An SQLAlchemy URL whose dialect is installed; an SQLite file's folder must exist."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
        parsed.get_dialect()
    except Exception as e:  # ArgumentError for garbage, NoSuchModuleError for an unknown dialect
        raise UserError(f"hydra.sweeper.storage={url!r} is invalid: must be an SQLAlchemy database URL "
                        f"such as sqlite:///optuna.db ({str(e).splitlines()[0]})") from None
    if parsed.get_backend_name() == "sqlite" and parsed.database:
        folder = Path(parsed.database).parent
        if not folder.is_dir():
            raise UserError(f"hydra.sweeper.storage={url!r} is invalid: its folder {folder} does not exist")


def study_name(sweeper: Any, task_overrides: list[str]) -> str:
    """`study_name` as given, or one derived from the command's fixed overrides: the same
    command names the same study, and so resumes it."""
    if sweeper.get("study_name"):
        return sweeper["study_name"]
    searched = set(sweeper.get("params") or {})
    fixed = sorted(o for o in task_overrides
                   if parse_override(o)[0] not in searched and not is_sweep(o))
    text = " ".join(fixed)
    digest = hashlib.sha1(text.encode()).hexdigest()[:8]
    return f"cifar_exp {text[:80]} {digest}" if text else f"cifar_exp {digest}"


def parent_tags(storage: str, name: str) -> dict[str, str]:
    """The sweep's MLflow parent run's tags for its study (the key: a digest, quote-free)."""
    key = hashlib.sha1(f"{storage}#{name}".encode()).hexdigest()[:16]
    return {"optuna.study": name, "optuna.storage": storage, STUDY_KEY_TAG: key}


def connect(storage: str):
    """Optuna's RDB storage; SQLite waits for a lock instead of failing at once when jobs
    in other processes write at the same moment."""
    import optuna

    kwargs = {"connect_args": {"timeout": 60}} if storage.startswith("sqlite") else {}
    return optuna.storages.RDBStorage(storage, engine_kwargs=kwargs)


def _build(module, registry: dict, name: str, kind: str, kwargs: dict):
    if name not in registry:
        raise UserError(f"unknown {kind} {name!r}; expected one of {', '.join(registry)}")
    return getattr(module, registry[name])(**kwargs)


def build_sampler(cfg: dict, search_space: Optional[dict] = None):
    import optuna

    kwargs = {k: v for k, v in cfg.items() if k != "name"}
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

        self._storage = connect(self.storage)
        self._study = optuna.load_study(study_name=self.study_name, storage=self._storage,
                                        pruner=build_pruner(self.pruner_cfg))
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
        except (SQLAlchemyError, StorageInternalError) as e:  # Optuna wraps a failed commit in the latter
            log.warning("could not report epoch %d to Optuna trial %d (%s); training goes on", epoch,
                        self.number, str(e).splitlines()[0])
            return False

    def mark_pruned(self) -> None:
        from optuna.trial import TrialState

        self._study.tell(self.number, state=TrialState.PRUNED, skip_if_finished=True)


def trial_for(job: Job) -> Optional[TrialLink]:
    """This job's trial when it runs in a sweep of the project's Optuna sweeper."""
    if job.num is None or not is_optuna(job.sweeper):
        return None
    return TrialLink(job.sweeper["storage"], job.sweeper["study_name"], job.num, dict(job.sweeper["pruner"]))
