"""A --multirun sweep checked before its first job: its first trial's config, and each other
value of each swept key in turn (an interval by its two bounds), composed by Hydra as its
job would be and put through the run's own checks; then the sweeper's own settings. A bad
value is one line before anything trains, not a failed job per trial."""

from __future__ import annotations

import subprocess
from typing import Iterator, Optional

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cifar_exp import study
from cifar_exp.errors import UserError, one_line
from cifar_exp.validation import validate

MAX_VALUES = 50  # per swept key: a longer list is checked by its first values


def _values(override: Override) -> list[str]:
    """The values a swept override takes, as override strings (an interval: its bounds)."""
    sweep = override.value()
    if isinstance(sweep, IntervalSweep):
        return [str(sweep.start), str(sweep.end)]
    if isinstance(sweep, (ChoiceSweep, RangeSweep)):
        values = []
        for value in override.sweep_string_iterator():
            values.append(value)
            if len(values) == MAX_VALUES:
                break
        return values
    return []  # a glob over a group's options: those options are registered ones


def _prefix(override: Override) -> str:
    return "++" if override.is_force_add() else "+" if override.is_add() else ""


def trials(config: DictConfig) -> Iterator[list[str]]:
    """Override lists to check: the first trial, then one per other value of each key."""
    params = OmegaConf.select(config, "hydra.sweeper.params") or {} if study.is_optuna(config.hydra.sweeper) else {}
    lines = [f"{k}={v}" for k, v in params.items()] + list(config.hydra.overrides.task)
    fixed: list[str] = []
    swept: dict[str, list[str]] = {}
    for override in OverridesParser.create().parse_overrides(lines):
        key = override.get_key_element()
        if key.startswith("hydra"):
            continue
        if override.is_sweep_override():
            values = _values(override)
            if values:
                swept[key] = [f"{_prefix(override)}{key}={v}" for v in values]
        else:
            fixed.append(str(override.input_line))
    first = {key: values[0] for key, values in swept.items()}
    yield fixed + list(first.values())
    for key, values in swept.items():
        for value in values[1:]:
            yield fixed + list({**first, key: value}.values())


def check_sweep(config: DictConfig, config_name: str) -> None:
    """Every trial config this sweep will run passes the run's checks; an Optuna sweep's own
    settings pass the sweeper's."""
    from hydra import compose

    for overrides in trials(config):
        try:
            validate(compose(config_name, overrides=overrides))
        except (UserError, HydraException, OmegaConfBaseException) as e:
            swept = [o for o in overrides if o not in config.hydra.overrides.task] or overrides
            raise UserError(f"sweep trial {' '.join(swept)}: {one_line(e)}") from None
    if study.is_optuna(config.hydra.sweeper):
        from hydra_plugins.cifar_exp_optuna_sweeper.optuna_sweeper import check

        check(config)
    check_cluster(config.hydra.launcher)


def check_cluster(launcher: DictConfig) -> None:
    """A SLURM job asking for more nodes than its partition has: SLURM would accept it and
    keep it pending forever (unless the cluster enforces partition limits), so it is refused
    here, with the count SLURM's own sinfo gives. Where sinfo cannot answer, the submission
    says what it says. A negative wait for results is refused too."""
    from hydra_plugins.cifar_exp_slurm_launcher.slurm_launcher import SlurmLauncher
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as HydraSlurmLauncher

    slurm = {f"{c.__module__}.{c.__qualname__}" for c in (SlurmLauncher, HydraSlurmLauncher)}
    if launcher.get("_target_") not in slurm:  # ours (hydra/launcher=slurm) or Hydra's (submitit_slurm)
        return
    if launcher.get("results_timeout_s", 0) < 0:
        raise UserError(
            f"hydra.launcher.results_timeout_s={launcher.results_timeout_s} is invalid: it is the seconds to wait "
            "for a task's result file after its job ended, 0 or more"
        )
    partition = launcher.get("partition")
    nodes = _partition_nodes(partition)
    if nodes and launcher.nodes > len(nodes):
        raise UserError(
            f"hydra.launcher.nodes={launcher.nodes}, but SLURM's partition {partition or '(the default)'} has "
            f"{len(nodes)} node{'s' if len(nodes) > 1 else ''} ({', '.join(nodes)}): the job would never start"
        )


def _partition_nodes(partition: Optional[str]) -> list[str]:
    """The nodes of a partition (None: the default one, which sinfo marks with *)."""
    try:
        done = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %P"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    rows = [line.split() for line in done.stdout.splitlines() if len(line.split()) == 2]
    wanted = (lambda p: p.rstrip("*") == partition) if partition else (lambda p: p.endswith("*"))
    return sorted({node for node, part in rows if wanted(part)}) if done.returncode == 0 else []
