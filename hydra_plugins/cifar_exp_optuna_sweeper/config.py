"""The sweeper's typed settings, registered as `hydra/sweeper=optuna` with its samplers in
`hydra/sweeper/sampler` and pruners in `hydra/sweeper/pruner`. The keys of the official
hydra-optuna-sweeper keep their meaning; storage, study_name and pruner are new."""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class SamplerConf:
    name: str = "tpe"
    seed: Optional[int] = None


@dataclass
class TPESamplerConf(SamplerConf):
    name: str = "tpe"
    n_startup_trials: int = 10
    n_ei_candidates: int = 24
    multivariate: bool = False


@dataclass
class RandomSamplerConf(SamplerConf):
    name: str = "random"


@dataclass
class CmaEsSamplerConf(SamplerConf):
    name: str = "cmaes"
    sigma0: Optional[float] = None
    n_startup_trials: int = 1


@dataclass
class GridSamplerConf(SamplerConf):
    """Every combination of the params' choice(...) and range(...) values."""
    name: str = "grid"


@dataclass
class QMCSamplerConf(SamplerConf):
    name: str = "qmc"
    qmc_type: str = "sobol"


@dataclass
class NSGAIISamplerConf(SamplerConf):
    name: str = "nsgaii"
    population_size: int = 50


@dataclass
class PrunerConf:
    name: str = "none"


@dataclass
class MedianPrunerConf(PrunerConf):
    """Stop a trial whose objective after an epoch is worse than the median of the earlier
    trials' at the same epoch."""
    name: str = "median"
    n_startup_trials: int = 5
    n_warmup_steps: int = 0
    interval_steps: int = 1
    n_min_trials: int = 1


@dataclass
class HyperbandPrunerConf(PrunerConf):
    name: str = "hyperband"
    min_resource: int = 1
    # null: Optuna's "auto" (the epochs the first finished trial reported)
    max_resource: Optional[int] = None
    reduction_factor: int = 3


@dataclass
class SuccessiveHalvingPrunerConf(PrunerConf):
    name: str = "successive_halving"
    # null: Optuna's "auto"
    min_resource: Optional[int] = None
    reduction_factor: int = 4
    min_early_stopping_rate: int = 0


@dataclass
class OptunaSweeperConf:
    _target_: str = "hydra_plugins.cifar_exp_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    defaults: List[Any] = field(default_factory=lambda: [{"sampler": "tpe"}, {"pruner": "none"}])
    # chosen in the defaults: hydra/sweeper/sampler=random, hydra/sweeper/pruner=median, ...
    sampler: SamplerConf = MISSING
    pruner: PrunerConf = MISSING
    # minimize or maximize the value the task returns (the run's `objective`)
    direction: Any = "minimize"
    # an SQLAlchemy URL; null: sqlite:///optuna.db in the launch dir
    storage: Optional[str] = None
    # null: derived from the command's fixed overrides, so the same command resumes the study
    study_name: Optional[str] = None
    # finished trials (COMPLETE or PRUNED) the study ends with, counting earlier sweeps'
    n_trials: int = 20
    # trials per batch, run together by the configured launcher
    n_jobs: int = 2
    # the search space in Hydra's sweep syntax: interval(...), tag(log, interval(...)),
    # choice(...), range(...), or a fixed value
    params: Optional[Dict[str, str]] = None


def register() -> None:
    cs = ConfigStore.instance()
    cs.store(group="hydra/sweeper", name="optuna", node=OptunaSweeperConf, provider="cifar_exp")
    for conf in (TPESamplerConf, RandomSamplerConf, CmaEsSamplerConf, GridSamplerConf, QMCSamplerConf,
                 NSGAIISamplerConf):
        cs.store(group="hydra/sweeper/sampler", name=conf.name, node=conf, provider="cifar_exp")
    for conf in (PrunerConf, MedianPrunerConf, HyperbandPrunerConf, SuccessiveHalvingPrunerConf):
        cs.store(group="hydra/sweeper/pruner", name=conf.name, node=conf, provider="cifar_exp")


register()
