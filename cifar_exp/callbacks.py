"""Hydra callbacks: config validation before a run starts, and MLflow bookkeeping for sweeps."""

from __future__ import annotations

import atexit
import os
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional, cast

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from cifar_exp import errors, study, study_storage, tracking
from cifar_exp.errors import UserError, exit_with
from cifar_exp.job import SWEPT_ENV, is_sweep, parse_override, source_tags, sweep_name
from cifar_exp.metrics import objectives
from cifar_exp.record import sweep_record
from cifar_exp.registry import flatten
from cifar_exp.sweep_summary import sweep_description, sweep_summary, write_csv
from cifar_exp.tracking.keys import DESCRIPTION_TAG
from cifar_exp.validation import validate


class ValidateConfig(Callback):
    """Checks the whole config before a single run starts, and every trial config and the
    sweeper's settings before a sweep's first job, so a bad value leaves no output dir or
    MLflow run behind. Hydra turns a callback's exceptions into warnings, so a user error
    exits here directly."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            validate(config)
        except UserError as e:
            exit_with(str(e))

    def on_multirun_start(self, config: DictConfig, config_name: Optional[str] = None, **kwargs: Any) -> None:
        from cifar_exp.sweep_check import check_sweep

        try:
            check_sweep(config, config_name or "config")
        except UserError as e:
            exit_with(str(e))


class SweepTracking(Callback):
    """Groups a --multirun sweep in MLflow. In the launching process, before any job starts,
    it prepares the store and the experiment (fresh SQLite stores and set_experiment race
    when parallel jobs do it) and opens a parent run whose id the jobs inherit through the
    environment. At the end, or at exit when a failed job made Hydra skip
    on_multirun_end, the parent gets a summary table, a plot and a final status."""

    def __init__(self) -> None:
        self.parent: Optional[dict] = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        names = objectives(config.objective)
        tested = [n for n in names if n.startswith("test/")]
        if tested:
            print(
                f"cifar-exp: warning: this sweep selects on {', '.join(tested)}, a test-set metric; "
                f"select on held-out data instead: dataset.val_fraction=0.1 objective=val/acc",
                file=sys.stderr,
            )
        overrides = list(config.hydra.overrides.task)
        command = " ".join(["python -m cifar_exp --multirun", *map(shlex.quote, overrides)])
        optuna = None
        if study.is_optuna(config.hydra.sweeper):  # one sweep per study, before anything is recorded
            sweeper = OmegaConf.to_container(config.hydra.sweeper, resolve=True)
            optuna = (
                study_storage.storage_url(sweeper, Path(config.hydra.runtime.cwd)),
                study.study_name(sweeper, overrides),
            )
            try:
                study_storage.take_lease(*optuna, command)
            except UserError as e:
                exit_with(str(e))
        if not config.mlflow.enabled:
            return
        swept = [parse_override(o)[0] for o in overrides if is_sweep(o)]
        swept += [k for k in OmegaConf.select(config, "hydra.sweeper.params") or {} if k not in swept]
        sweep_dir = config.hydra.sweep.dir
        uri = tracking.tracking_uri(config.mlflow.tracking_uri)
        own = {k: v for k, v in cast(dict, OmegaConf.to_container(config, resolve=False)).items() if k != "hydra"}
        params, compared = sweep_record(overrides, swept, flatten(own))
        tags = {
            **compared,
            "cifar_exp.sweep": "true",
            "hydra.sweep_dir": str(Path(sweep_dir).resolve()),
            "hydra.overrides": " ".join(overrides),
            "hydra.sweeper": config.hydra.sweeper._target_,
            DESCRIPTION_TAG: sweep_description(command, Path(sweep_dir).resolve()),
            **source_tags(),
        }
        reuse = None
        if optuna is not None:  # a resumed study keeps its one parent run
            tags.update(study.parent_tags(*optuna))
            reuse = study.STUDY_KEY_TAG
        try:
            exp_id, parent_id = tracking.start_parent(
                uri,
                config.mlflow.experiment_name,
                sweep_name(overrides, swept),
                params=params,
                tags=tags,
                reuse_tag=reuse,
            )
        except UserError as e:  # Hydra would turn it into a warning and start every job anyway
            exit_with(str(e))
        os.environ[tracking.PARENT_RUN_ENV] = parent_id
        os.environ[tracking.EXPERIMENT_ENV] = exp_id
        os.environ[SWEPT_ENV] = ",".join(swept)
        self.parent = {
            "uri": uri,
            "experiment_id": exp_id,
            "run_id": parent_id,
            "swept": swept,
            "objectives": names,
            "sweep_dir": Path(sweep_dir),
            "command": command,
        }
        atexit.register(self._finish)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        # the sweeper ran to its end: jobs that failed are ones it chose to go on without
        self._finish(completed=True)

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        """A sweep job that failed before it opened its MLflow run (a bad value, a missing
        dataset, a device error) is still recorded: a FAILED child with its error. Runs in
        the job's own process, wherever the launcher put it."""
        from hydra.core.utils import JobStatus

        parent = os.environ.get(tracking.PARENT_RUN_ENV)
        if job_return.status != JobStatus.FAILED or not parent or not config.mlflow.enabled:
            return
        from cifar_exp.job import Job

        job = Job.current()
        error = getattr(job_return, "_return_value", None)  # the job's exception
        tracking.record_failed_job(
            tracking.tracking_uri(config.mlflow.tracking_uri),
            os.environ[tracking.EXPERIMENT_ENV],
            parent,
            job.run_name(config),
            {
                "hydra.job.num": str(job.num),
                "hydra.overrides": " ".join(job.overrides or []),
                "hydra.output_dir": str(job.output_dir.resolve()),
            },
            error,
        )

    def _finish(self, completed: bool = False) -> None:
        if self.parent is None:
            return
        p, self.parent = self.parent, None
        for name in (tracking.PARENT_RUN_ENV, tracking.EXPERIMENT_ENV, SWEPT_ENV):
            os.environ.pop(name, None)
        children = tracking.child_runs(p["uri"], p["experiment_id"], p["run_id"])
        names = p["objectives"]
        summary = sweep_summary(children, names, p["swept"], completed, errors.stopping[-1:])
        out = Path(tempfile.mkdtemp(prefix="cifar_exp_sweep_"))
        files = [write_csv(summary["rows"], out / "sweep_summary.csv", p["swept"])]
        sweep_dir = p["sweep_dir"]  # the Optuna sweeper's study record
        files += sorted(sweep_dir.glob("optimization_results.yaml")) + sorted((sweep_dir / "optuna").glob("*.*"))
        if summary["seed_groups"]:
            files.append(write_csv(summary["seed_groups"], out / "sweep_seeds.csv"))
        files += self._plots(summary["rows"], names, p["swept"], out)
        best = summary["best"]
        tracking.mark_jobs(p["uri"], children, {best["run_id"]} if best else set(), tracking.BEST)
        tracking.mark_jobs(p["uri"], children, {r["run_id"] for r in summary["front"]}, tracking.PARETO)
        tags = {
            **summary["tags"],
            DESCRIPTION_TAG: sweep_description(p["command"], p["sweep_dir"].resolve(), summary, names, p["swept"]),
        }
        tracking.finish_parent(p["uri"], p["run_id"], summary["status"], summary["metrics"], tags, files)

    @staticmethod
    def _plots(rows: list[dict], names: list[str], swept: list[str], out: Path) -> list[Path]:
        """One objective against each swept key; several objectives against each other."""
        from cifar_exp import plots

        if not rows:
            return []
        if len(names) > 1:
            return [plots.pareto_front(rows, names, out / "pareto_front.png")]
        return [plots.objective_vs_params(rows, swept, names[0], out / "objective_vs_params.png")] if swept else []
