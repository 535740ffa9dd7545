"""The Optuna study behind `hydra/sweeper=optuna`: its storage and name (one derivation for
the sweeper, the sweep's MLflow parent run and the jobs; where it lives: study_storage.py),
its sampler and pruner built from
their registered names, and a job's link to its own trial, which reports the per-epoch
objective and says when the pruner stops the run. Optuna is imported only when used."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional, Sequence

from cifar_exp import metrics
from cifar_exp.errors import UserError, reason
from cifar_exp.job import Job, is_sweep, parse_override
from cifar_exp.study_storage import JOB_WAIT_S, MEMORY, connect
from cifar_exp.tracking import PRUNED_TAG

log = logging.getLogger("cifar_exp")

SWEEPER_TARGET = "hydra_plugins.cifar_exp_optuna_sweeper.optuna_sweeper.OptunaSweeper"
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


Direction = Literal["minimize", "maximize"]
DIRECTIONS: dict[str, Direction] = {metrics.MIN: "minimize", metrics.MAX: "maximize"}


def directions(configured: Any, objectives: list[str]) -> list[Direction]:
    """The study's directions, one per objective: derived from the metric catalogue (a loss
    is minimized, an accuracy maximized); configured ones (a string or a list) must be those."""
    derived = [DIRECTIONS[metrics.goal(name)] for name in objectives]
    if configured is None:
        return derived
    given = list(configured) if isinstance(configured, (list, tuple)) else [configured]
    if given != derived:
        said = ", ".join(f"{name} is {d}d" for name, d in zip(objectives, derived))
        raise UserError(
            f"hydra.sweeper.direction={configured} is invalid: must be {_listed(derived)} or null, since {said} "
            f"(the catalogue knows each metric's direction)"
        )
    return derived


def _listed(values: Sequence[str]) -> str:
    return values[0] if len(values) == 1 else "[" + ",".join(values) + "]"


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


def check_same_search(study, objective: str, directions: Sequence[str], space: dict, sampler: str) -> None:
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

        return SweepGridSampler(search_space or {}, **kwargs)
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
    sweeper = job.sweeper
    if job.num is None or sweeper is None or not is_optuna(sweeper) or sweeper["storage"] == MEMORY:
        return None  # a study in the sweep's memory hears only what the job returns
    return TrialLink(sweeper["storage"], sweeper["study_name"], job.num, dict(sweeper["pruner"]))
