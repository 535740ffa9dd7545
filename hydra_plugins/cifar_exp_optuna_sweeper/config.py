"""The sweeper's typed settings, registered as `hydra/sweeper=optuna` with its samplers in
`hydra/sweeper/sampler` and pruners in `hydra/sweeper/pruner`. The keys of the official
hydra-optuna-sweeper keep their meaning; storage, study_name and pruner are new. Each
sampler and pruner checks its own values (`check(at)`), as the run's schemas do."""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from cifar_exp.checks import at_least, require
from cifar_exp.config import SEED_LIMIT
from cifar_exp.study import SAMPLERS as OPTUNA_SAMPLERS


@dataclass
class SamplerConf:
    """A sampler's settings. Keys of the official plugin's sampler configs that Optuna still
    takes are here too, null (Optuna's default) unless set; set, they are passed as given
    (Optuna says which it deprecates). `_target_` may name the sampler's own Optuna class,
    as the official configs do; nothing else."""

    name: str = "tpe"
    seed: Optional[int] = None
    _target_: Optional[str] = None

    def check(self, at: str) -> None:
        require(
            self.seed is None or 0 <= self.seed < SEED_LIMIT,
            f"{at}.seed",
            f"an integer in [0, {SEED_LIMIT}) or null",
            self.seed,
        )
        own = f"optuna.samplers.{OPTUNA_SAMPLERS[self.name]}"
        require(
            self._target_ in (None, own),
            f"{at}._target_",
            f"{own} or null (choose another sampler with hydra/sweeper/sampler=<name>)",
            self._target_,
        )


@dataclass
class TPESamplerConf(SamplerConf):
    name: str = "tpe"
    n_startup_trials: int = 10
    n_ei_candidates: int = 24
    multivariate: bool = False
    consider_prior: Optional[bool] = None
    prior_weight: Optional[float] = None
    consider_magic_clip: Optional[bool] = None
    consider_endpoints: Optional[bool] = None
    warn_independent_sampling: Optional[bool] = None
    constant_liar: Optional[bool] = None

    def check(self, at: str) -> None:
        super().check(at)
        at_least(self, at, 0, "n_startup_trials")
        at_least(self, at, 1, "n_ei_candidates")
        require(
            self.prior_weight is None or self.prior_weight > 0, f"{at}.prior_weight", "a float > 0", self.prior_weight
        )


@dataclass
class RandomSamplerConf(SamplerConf):
    name: str = "random"


@dataclass
class CmaEsSamplerConf(SamplerConf):
    name: str = "cmaes"
    sigma0: Optional[float] = None
    n_startup_trials: int = 1
    x0: Optional[Dict[str, Any]] = None
    warn_independent_sampling: Optional[bool] = None
    consider_pruned_trials: Optional[bool] = None
    restart_strategy: Optional[str] = None
    popsize: Optional[int] = None
    inc_popsize: Optional[int] = None
    use_separable_cma: Optional[bool] = None
    with_margin: Optional[bool] = None
    lr_adapt: Optional[bool] = None

    def check(self, at: str) -> None:
        super().check(at)
        require(self.sigma0 is None or self.sigma0 > 0, f"{at}.sigma0", "a float > 0 or null", self.sigma0)
        at_least(self, at, 0, "n_startup_trials")
        strategy = self.restart_strategy
        require(strategy in (None, "ipop", "bipop"), f"{at}.restart_strategy", "ipop, bipop or null", strategy)
        for key in ("popsize", "inc_popsize"):
            value = getattr(self, key)
            require(value is None or value >= 1, f"{at}.{key}", "an integer >= 1 or null", value)


@dataclass
class GridSamplerConf(SamplerConf):
    """Every combination of the params' choice(...) and range(...) values."""

    name: str = "grid"


@dataclass
class QMCSamplerConf(SamplerConf):
    name: str = "qmc"
    qmc_type: str = "sobol"
    scramble: Optional[bool] = None
    warn_independent_sampling: Optional[bool] = None
    warn_asynchronous_seeding: Optional[bool] = None

    def check(self, at: str) -> None:
        super().check(at)
        require(self.qmc_type in ("sobol", "halton"), f"{at}.qmc_type", "sobol or halton", self.qmc_type)


@dataclass
class NSGAIISamplerConf(SamplerConf):
    name: str = "nsgaii"
    population_size: int = 50
    mutation_prob: Optional[float] = None
    crossover_prob: Optional[float] = None
    swapping_prob: Optional[float] = None

    def check(self, at: str) -> None:
        super().check(at)
        at_least(self, at, 2, "population_size")
        for key in ("mutation_prob", "crossover_prob", "swapping_prob"):
            value = getattr(self, key)
            require(value is None or 0 <= value <= 1, f"{at}.{key}", "a float in [0, 1] or null", value)


@dataclass
class PrunerConf:
    name: str = "none"

    def check(self, at: str) -> None:
        pass


@dataclass
class MedianPrunerConf(PrunerConf):
    """Stop a trial whose objective after an epoch is worse than the median of the earlier
    trials' at the same epoch."""

    name: str = "median"
    n_startup_trials: int = 5
    n_warmup_steps: int = 0
    interval_steps: int = 1
    n_min_trials: int = 1

    def check(self, at: str) -> None:
        at_least(self, at, 0, "n_startup_trials", "n_warmup_steps")
        at_least(self, at, 1, "interval_steps", "n_min_trials")


@dataclass
class HyperbandPrunerConf(PrunerConf):
    name: str = "hyperband"
    min_resource: int = 1
    # null: Optuna's "auto" (the epochs the first finished trial reported)
    max_resource: Optional[int] = None
    reduction_factor: int = 3

    def check(self, at: str) -> None:
        at_least(self, at, 1, "min_resource")
        require(
            self.max_resource is None or self.max_resource > self.min_resource,
            f"{at}.max_resource",
            f"> {at}.min_resource, or null (auto)",
            self.max_resource,
        )
        at_least(self, at, 2, "reduction_factor")  # 1 would never halve anything


@dataclass
class SuccessiveHalvingPrunerConf(PrunerConf):
    name: str = "successive_halving"
    # null: Optuna's "auto"
    min_resource: Optional[int] = None
    reduction_factor: int = 4
    min_early_stopping_rate: int = 0

    def check(self, at: str) -> None:
        require(
            self.min_resource is None or self.min_resource >= 1,
            f"{at}.min_resource",
            "an integer >= 1 or null (auto)",
            self.min_resource,
        )
        at_least(self, at, 2, "reduction_factor")
        at_least(self, at, 0, "min_early_stopping_rate")


@dataclass
class OptunaSweeperConf:
    _target_: str = "hydra_plugins.cifar_exp_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    # the sampler's and pruner's settings reach the sweeper as settings: it builds them from
    # their registered names (a sampler's `_target_` is checked, never instantiated)
    _recursive_: bool = False
    defaults: List[Any] = field(default_factory=lambda: [{"sampler": "tpe"}, {"pruner": "none"}])
    # chosen in the defaults: hydra/sweeper/sampler=random, hydra/sweeper/pruner=median, ...
    sampler: SamplerConf = MISSING
    pruner: PrunerConf = MISSING
    # minimize or maximize the value the task returns (the run's `objective`); null: derived
    # from the objective (a loss is minimized, an accuracy maximized); set, it must agree
    direction: Any = None
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
    params: Optional[Dict[str, str]] = field(default_factory=dict)
    # the official plugin's older form of the search space, key -> {type: int|float|
    # categorical, low, high, step, log, choices}; params win where both name a key
    search_space: Optional[Dict[str, Any]] = None
    # the official plugin's hook: module.function(cfg, trial) that suggests further
    # parameters on each trial (their values join the trial's overrides)
    custom_search_space: Optional[str] = None
    # null: the sweep stops after max(n_trials, 3) failed trials; a share in [0, 1] (the
    # official plugin's rule): it stops when more than that share of a batch failed
    max_failure_rate: Optional[float] = None
    # the official plugin's choice of its own batch loop (OptunaExperimentSequence): this
    # sweeper runs its own, and says so when the key is set
    experiment_sequence: Optional[str] = None


SAMPLERS = {
    conf.name: conf
    for conf in (
        TPESamplerConf,
        RandomSamplerConf,
        CmaEsSamplerConf,
        GridSamplerConf,
        QMCSamplerConf,
        NSGAIISamplerConf,
    )
}
PRUNERS = {conf.name: conf for conf in (PrunerConf, MedianPrunerConf, HyperbandPrunerConf, SuccessiveHalvingPrunerConf)}


def typed(part: str, node: Any) -> Any:
    """A sampler's or pruner's settings as its own schema's object (Hydra types the node by
    the base schema only)."""
    from omegaconf import OmegaConf

    schemas = SAMPLERS if part == "sampler" else PRUNERS
    return OmegaConf.to_object(
        OmegaConf.merge(OmegaConf.structured(schemas[node.name]), OmegaConf.to_container(node, resolve=True))
    )


def register() -> None:
    cs = ConfigStore.instance()
    cs.store(group="hydra/sweeper", name="optuna", node=OptunaSweeperConf, provider="cifar_exp")
    for conf in SAMPLERS.values():
        cs.store(group="hydra/sweeper/sampler", name=conf.name, node=conf, provider="cifar_exp")
    for pruner in PRUNERS.values():
        cs.store(group="hydra/sweeper/pruner", name=pruner.name, node=pruner, provider="cifar_exp")


register()
