"""The sweep: ask Optuna for a batch of n_jobs trials, run them through the configured
launcher (job number = trial number, so a job finds its own trial), tell Optuna how each
ended, until the study holds n_trials finished trials. The study lives in `storage`, so
the same command after a crash continues it: trials a killed sweep left RUNNING are marked
FAIL and their parameter sets run again. Jobs report each epoch's objective to their trial
and stop when the pruner says so (cifar_exp.run); they mark the trial PRUNED themselves.
A job stopped by a signal stops the sweep, its trial left RUNNING for the next one."""

from __future__ import annotations

import logging
import math
import shlex
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, cast

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from hydra.core.plugins import Plugins
from hydra.core.utils import JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from cifar_exp.checks import at_least, container, require
from cifar_exp.errors import Interrupted, UserError, reason
from cifar_exp.metrics import objectives
from hydra_plugins.cifar_exp_optuna_sweeper.config import typed

if TYPE_CHECKING:
    from cifar_exp.study import Direction

log = logging.getLogger(__name__)
FINISHED = ("COMPLETE", "PRUNED")
RESULTS = "optimization_results.yaml"


def distribution(override: Override):
    """An Optuna distribution for a sweep override, or None for a fixed value."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if not override.is_sweep_override():
        return None
    sweep = override.value()
    log_scale = "log" in getattr(sweep, "tags", set())
    if isinstance(sweep, ChoiceSweep) or isinstance(sweep, RangeSweep) and sweep.shuffle:
        return CategoricalDistribution(list(override.sweep_iterator(transformer=lambda x: x)))  # type: ignore[arg-type]
    if isinstance(sweep, RangeSweep):
        # as hydra-optuna-sweeper reads it: from start to stop, both included, by step
        start, stop, step = sweep.start, sweep.stop, sweep.step
        if start is None or stop is None or not (step > 0 and start <= stop):
            raise UserError(f"{override.input_line} is invalid: a range needs start <= stop and a step > 0")
        if isinstance(start, int) and isinstance(stop, int) and isinstance(step, int):
            return IntDistribution(start, stop, step=step, log=log_scale and step == 1)
        return FloatDistribution(start, stop, step=step)
    if isinstance(sweep, IntervalSweep):  # int(interval(1, 8)) or tag(int, interval(1, 8)): integers
        low, high = sweep.start, sweep.end
        if low is None or high is None or not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise UserError(f"{override.input_line} is invalid: an interval needs finite bounds, low < high")
        if log_scale and low <= 0:
            raise UserError(f"{override.input_line} is invalid: a log interval needs bounds > 0")
        if "int" in sweep.tags or isinstance(low, int) and isinstance(high, int):
            return IntDistribution(int(low), int(high), log=log_scale)
        return FloatDistribution(low, high, log=log_scale)
    raise UserError(
        f"{override.input_line}: the Optuna sweeper takes interval(...), choice(...), range(...) and comma lists"
    )


def _grid_values(dist) -> Optional[list]:
    """Every value of a choice or a range, as a grid takes them; None for an interval."""
    if hasattr(dist, "choices"):
        return list(dist.choices)
    if dist.step is None:
        return None
    return [dist.low + i * dist.step for i in range(round((dist.high - dist.low) / dist.step) + 1)]


def search_space(params: Optional[dict], arguments: list[str], grid_search: bool) -> tuple[dict, list[str], dict]:
    """(distribution per searched key, the fixed overrides, the grid's values per key) of
    hydra.sweeper.params and the command line's overrides (the command line wins)."""
    chosen: dict[str, Any] = {}  # key -> its distribution, or its fixed override; the last one given wins
    for override in OverridesParser.create().parse_overrides(
        [f"{k}={v}" for k, v in (params or {}).items()] + list(arguments)
    ):
        key = override.get_key_element()
        chosen.pop(key, None)
        chosen[key] = distribution(override) or override.input_line
    space = {k: v for k, v in chosen.items() if not isinstance(v, str)}
    fixed = [v for v in chosen.values() if isinstance(v, str)]
    grid = {k: values for k, d in space.items() if (values := _grid_values(d)) is not None}
    if grid_search and len(grid) < len(space):
        raise UserError(
            "hydra.sweeper.sampler=grid needs choice(...) or range(...) for every searched key, "
            f"not interval(...): {', '.join(sorted(set(space) - set(grid)))}"
        )
    return space, fixed, grid


def all_params(settings: dict) -> dict:
    """hydra.sweeper.params with the official plugin's older `search_space` form read into
    the same sweep syntax; params win for a key both name."""
    older = {k: _sweep_syntax(k, v) for k, v in (settings.get("search_space") or {}).items()}
    return {**older, **(settings.get("params") or {})}


def _sweep_syntax(key: str, entry: Any) -> str:
    """One `search_space` entry ({type, low, high, step, log, choices}) in sweep syntax,
    meaning what the official plugin made of it."""
    at = f"hydra.sweeper.search_space.{key}"
    kind = entry.get("type") if isinstance(entry, dict) else None
    if kind == "categorical":
        choices = entry.get("choices")
        require(isinstance(choices, list) and bool(choices), f"{at}.choices", "a non-empty list", choices)
        return "choice(" + ", ".join(_quoted(str(c)) if isinstance(c, str) else str(c) for c in choices) + ")"
    require(kind in ("int", "float"), f"{at}.type", "int, float or categorical", kind)
    low, high, step, log_scale = entry.get("low"), entry.get("high"), entry.get("step"), entry.get("log", False)
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high))
    require(numbers and low < high, f"{at}", "low < high, both numbers", f"{low}..{high}")
    if kind == "int":
        low, high = int(low), int(high)
        if log_scale:
            return f"tag(log, int(interval({low}, {high})))"
        return f"range({low}, {high}, {int(step or 1)})"
    if log_scale:
        return f"tag(log, interval({float(low)}, {float(high)}))"
    if step is not None:
        return f"range({float(low)}, {float(high)}, step={float(step)})"
    return f"interval({float(low)}, {float(high)})"


def custom_search(path: Optional[str]):
    """The official plugin's `custom_search_space` hook, module.function(cfg, trial), taken
    from the sweep's own config (the command line or its config files, never a stored run)."""
    if not path:
        return None
    from hydra.utils import get_method

    try:
        if path.startswith("."):  # .<script>.<function>: a function of the app's own script
            return getattr(sys.modules["__main__"], path.rsplit(".", 1)[-1])
        return get_method(path)
    except Exception as e:
        raise UserError(f"hydra.sweeper.custom_search_space={path!r} is not a function to call: {reason(e)}") from None


def check(config: DictConfig) -> list[Direction]:
    """The sweeper's own settings, before any job starts: the sampler's and pruner's values,
    the trial counts, the storage, the search space, and the direction against the run's
    objective (returned: derived when unset)."""
    from cifar_exp import study as studies
    from cifar_exp import study_storage

    sweeper = config.hydra.sweeper
    for part in ("sampler", "pruner"):
        typed(part, sweeper[part]).check(f"hydra.sweeper.{part}")
    at_least(sweeper, "hydra.sweeper", 1, "n_trials", "n_jobs")
    settings = container(sweeper)
    objective = config.get("objective")
    storage = study_storage.storage_url(settings, Path(config.hydra.runtime.cwd), memory_by_default=objective is None)
    study_storage.check_storage(storage)
    pruned = settings["pruner"]["name"] != "none"
    require(
        not (pruned and (objective is None or storage == study_storage.MEMORY)),
        "hydra/sweeper/pruner",
        "none: a pruner needs a cifar_exp run's per-epoch reports, through a storage its jobs reach",
        settings["pruner"]["name"],
    )
    require(
        not (pruned and objective is not None and len(objectives(objective)) > 1),
        "hydra/sweeper/pruner",
        "none: Optuna cannot prune a multi-objective study, and objective names several metrics",
        settings["pruner"]["name"],
    )
    overrides = list(config.hydra.overrides.task)
    sampler = settings["sampler"]["name"]
    studies.check_sampler_packages(sampler)
    space = search_space(all_params(settings), overrides, sampler == "grid")[0]
    rate = settings.get("max_failure_rate")
    require(rate is None or 0 <= rate <= 1, "hydra.sweeper.max_failure_rate", "a share in [0, 1] or null", rate)
    custom_search(settings.get("custom_search_space"))
    directions = app_directions(settings.get("direction"), objective)
    name = studies.study_name(settings, overrides)
    studies.check_existing_search(storage, name, _objective_name(objective), directions, space, sampler)
    return directions


RETURNED = "the task's return value"


def app_directions(configured: Any, objective: Any) -> list[Direction]:
    """The study's directions. A cifar_exp run optimizes its `objective` (one metric, or
    several), whose directions the metric catalogue knows. Any other Hydra app optimizes
    what its task function returns, as with the official plugin: `direction` (default
    minimize), or a list of them for a task that returns that many values (multi-objective)."""
    if objective is not None:
        from cifar_exp import study as studies

        return studies.directions(configured, objectives(objective))
    given = list(configured) if isinstance(configured, (list, tuple)) else [configured or "minimize"]
    for d in given:
        require(d in ("minimize", "maximize"), "hydra.sweeper.direction", "minimize or maximize (or a list)", d)
    return cast("list[Direction]", given)


def _objective_name(objective: Any) -> str:
    """What the study optimizes, as its identity records it."""
    return RETURNED if objective is None else ",".join(objectives(objective))


def _command() -> str:
    """The command this sweep was started with, as the user typed it."""
    return shlex.join(["python", *sys.orig_argv[1:]])


def _quoted(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class OptunaSweeper(Sweeper):
    def __init__(
        self,
        sampler: Any,
        pruner: Any,
        direction: Any,
        storage: Optional[str],
        study_name: Optional[str],
        n_trials: int,
        n_jobs: int,
        params: Optional[dict],
        search_space: Optional[dict] = None,
        custom_search_space: Optional[str] = None,
        max_failure_rate: Optional[float] = None,
        experiment_sequence: Optional[str] = None,
    ) -> None:
        if experiment_sequence:
            log.info(
                "hydra.sweeper.experiment_sequence=%s is the official plugin's batch loop; this sweeper asks "
                "Optuna for n_jobs trials a batch itself",
                experiment_sequence,
            )
        settings = {"sampler": sampler, "pruner": pruner, "storage": storage, "study_name": study_name}
        self.settings = container(OmegaConf.create({**settings, "params": params, "search_space": search_space}))
        self.n_trials, self.n_jobs, self.max_failure_rate = n_trials, n_jobs, max_failure_rate
        self.custom_search_space = custom_search_space

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config: DictConfig = config
        self.directions = check(config)
        self.objective = config.get("objective")
        self.extend = custom_search(self.custom_search_space)
        launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )
        assert launcher is not None  # Hydra always configures one
        self.job_launcher = launcher
        self.sweep_dir = Path(config.hydra.sweep.dir)

    def sweep(self, arguments: list[str]) -> None:
        import optuna

        from cifar_exp import study as studies
        from cifar_exp import study_storage

        grid_search = self.settings["sampler"]["name"] == "grid"
        space, fixed, grid = search_space(all_params(self.settings), arguments, grid_search)
        storage = study_storage.storage_url(
            self.settings, Path(self.config.hydra.runtime.cwd), memory_by_default=self.objective is None
        )
        name = studies.study_name(self.settings, list(self.config.hydra.overrides.task))
        study_storage.take_lease(storage, name, _command())
        study = optuna.create_study(
            study_name=name,
            storage=study_storage.connect(storage),
            directions=self.directions,
            load_if_exists=True,
            sampler=studies.build_sampler(self.settings["sampler"], grid),
            pruner=studies.build_pruner(self.settings["pruner"]),
        )
        sampler = self.settings["sampler"]["name"]
        studies.check_same_search(study, _objective_name(self.objective), self.directions, space, sampler)
        if study.metric_names is None and self.objective is not None:  # Optuna's own tools name the values by them
            with warnings.catch_warnings():  # Optuna marks it experimental; the project relies on it as is
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.set_metric_names(objectives(self.objective))
        self._requeue_left_running(study)
        log.info(
            "Optuna study %r in %s: %d of %d trials finished, searching %s, %s %s",
            name,
            storage,
            self._finished(study),
            self.n_trials,
            ", ".join(space) or "nothing",
            "/".join(self.directions),
            _objective_name(self.objective),
        )
        identity = [f"hydra.sweeper.storage={_quoted(storage)}", f"hydra.sweeper.study_name={_quoted(name)}"]
        # a grid has as many trials as points
        n_trials = min(self.n_trials, math.prod(map(len, grid.values()))) if grid_search else self.n_trials
        if self._finished(study) >= n_trials:
            print(
                f"the Optuna study {name!r} already has {self._finished(study)} finished trials "
                f"(hydra.sweeper.n_trials={self.n_trials}{', the whole grid' if grid_search else ''}): nothing to "
                f"run; to extend it, run the same command with a larger hydra.sweeper.n_trials"
            )
        failed = 0
        # with max_failure_rate set, failed trials count toward n_trials, as in the official plugin
        while (done := self._finished(study) + (failed if self.max_failure_rate is not None else 0)) < n_trials:
            trials = [study.ask(space) for _ in range(min(self.n_jobs, n_trials - done))]
            for trial in trials:
                trial.set_user_attr("fixed_overrides", fixed)
                if self.extend is not None:  # the official hook: it suggests further parameters
                    self.extend(self.config, trial)
            batch = [tuple(fixed + [f"{k}={v}" for k, v in t.params.items()] + identity) for t in trials]
            returns = self.job_launcher.launch(batch, initial_job_idx=trials[0].number)
            stopped = [ret for ret in returns if isinstance(getattr(ret, "_return_value", None), Interrupted)]
            n_values = len(self.directions)
            told = [self._tell(study, t, ret, n_values) for t, ret in zip(trials, returns) if ret not in stopped]
            failed_now = told.count(False)
            failed += failed_now
            if stopped:  # Ctrl-C or SIGTERM: the study stops; its stopped trials run again next time
                raise Interrupted(stopped[0]._return_value.signum, _command(), stopped[0]._return_value.elsewhere)
            rate = self.max_failure_rate
            if rate is not None and failed_now / len(trials) > rate:
                why = next(getattr(r, "_return_value", None) for r, ok in zip(returns, told) if not ok)
                said = f"{type(why).__name__}: {reason(why)}" if isinstance(why, BaseException) else f"returned {why!r}"
                raise UserError(
                    f"the study stops: {failed_now} of {len(trials)} trials of a batch failed, more than "
                    f"hydra.sweeper.max_failure_rate={rate} (the first: {said}); see their logs in {self.sweep_dir}"
                )
            if rate is None and failed >= max(n_trials, 3):
                raise UserError(
                    f"the study stops: {failed} trials failed in this sweep; see their logs in {self.sweep_dir}"
                )
        self._report(study)

    @staticmethod
    def _finished(study) -> int:
        return sum(t.state.name in FINISHED for t in study.get_trials(deepcopy=False))

    @staticmethod
    def _requeue_left_running(study) -> None:
        """Trials a killed sweep left RUNNING: FAIL, and their parameters asked again.
        (One sweep process per study at a time.)"""
        from optuna.trial import TrialState

        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            study.tell(t.number, state=TrialState.FAIL)
            study.enqueue_trial(t.params, user_attrs={"rerun_of": t.number})
            log.info("trial %d was left running by a killed sweep: marked FAIL, its parameters run again", t.number)

    @staticmethod
    def _tell(study, trial, ret, n_values: int) -> bool:
        """Record how a job ended; False for a failed trial. A trial its job pruned stays
        PRUNED, untold (Optuna would say at INFO that it skipped it). A multi-objective study
        takes a list of n_values numbers."""
        from optuna.trial import TrialState

        if study.get_trials(deepcopy=False)[trial.number].state.is_finished():
            return True
        if ret.status == JobStatus.COMPLETED:
            value = ret.return_value
            values = list(value) if isinstance(value, (list, tuple)) else [value]
            numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)
            if numbers and len(values) == n_values:
                told = [float(v) for v in values] if n_values > 1 else float(values[0])
                study.tell(trial, told, skip_if_finished=True)
                return True
            wanted = "a finite number" if n_values == 1 else f"{n_values} finite numbers, one per direction"
            log.warning("trial %d returned %r, not %s: marked FAIL", trial.number, value, wanted)
        else:
            log.warning("trial %d failed: %s", trial.number, getattr(ret, "_return_value", "unknown error"))
        study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        return False

    def _report(self, study) -> None:
        """The study's record: `optimization_results.yaml` in the sweep dir, where the
        official plugin writes it (the best trial; for several directions the Pareto front's
        trials as `solutions`), and in <sweep dir>/optuna/ the trials table and Optuna's
        plots (the sweep's MLflow parent run gets them all as artifacts)."""
        from cifar_exp.plots import study_plots

        out = self.sweep_dir / "optuna"
        out.mkdir(parents=True, exist_ok=True)
        study.trials_dataframe().to_csv(out / "trials.csv", index=False)
        complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
        if complete and len(self.directions) > 1:
            front = [{"number": t.number, "params": t.params, "values": t.values} for t in study.best_trials]
            OmegaConf.save(OmegaConf.create({"name": "optuna", "solutions": front}), self.sweep_dir / RESULTS)
            print(f"Pareto front: {len(front)} trials ({', '.join(self.directions)}); study record in {self.sweep_dir}")
        elif complete:
            best = study.best_trial
            OmegaConf.save(
                OmegaConf.create(
                    {"name": "optuna", "best_trial": best.number, "best_value": best.value, "best_params": best.params}
                ),
                self.sweep_dir / RESULTS,
            )
            # printed, not logged: the jobs' logging config has replaced the sweep's by now
            print(
                f"Best trial {best.number}: Best value {best.value} ({self.directions[0]}), "
                f"Best parameters {best.params}; study record in {self.sweep_dir}"
            )
        study_plots(study, out)
