"""Facts about this job: where Hydra put it, what the user overrode, what it is called and
tagged with. The only module that asks Hydra about the running job."""

from __future__ import annotations

import getpass
import os
import shlex
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from omegaconf import DictConfig

from cifar_exp import __version__
from cifar_exp.checks import container
from cifar_exp.distributed_env import node_name
from cifar_exp.tracking.keys import DESCRIPTION_TAG

if TYPE_CHECKING:
    from cifar_exp.config import Config

# Overrides that say nothing about the experiment itself stay out of derived run names.
RUN_NAME_SKIP = ("model", "resume", "dataset.root", "dataset.cache_dir", "trainer.progress", "trainer.device")
RUN_NAME_SKIP_GROUPS = ("mlflow.", "checkpoint.", "hydra")
# the keys a --multirun sweeps, set by the sweep for its jobs: they lead the jobs' run names
SWEPT_ENV = "CIFAR_EXP_SWEPT"
NAME_MAX = 60  # about what the MLflow runs table shows at its default column width
SPEC_MAX = 24  # a swept value's share of a sweep's name
PACKAGE_DIR = Path(__file__).resolve().parent


def resume_command(run_dir: Path) -> str:
    return f"python -m cifar_exp resume={run_dir}"


def parse_override(override: str) -> tuple[str, str]:
    """'+optimizer.lr=0.1' -> ('optimizer.lr', '0.1'); a bare key has the value ''."""
    key, _, value = override.lstrip("+~").partition("=")
    return key, value


def is_sweep(override: str) -> bool:
    """Whether an override sweeps (a,b; choice(...); interval(...); range(...)), by Hydra's
    own grammar: a list value such as model.widths=[8,16] does not."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_overrides([override])[0].is_sweep_override()


@dataclass(frozen=True)
class Job:
    output_dir: Path
    # the command line's overrides; None outside Hydra (then every key counts as set)
    overrides: Optional[list[str]] = None
    choices: dict = field(default_factory=dict)
    log_file: Optional[Path] = None
    num: Optional[int] = None  # the job's number in a --multirun sweep
    sweeper: Optional[dict] = None  # the sweep's hydra.sweeper settings, in a --multirun sweep
    hydra_files: Optional[Path] = None  # Hydra's config.yaml and overrides.yaml for this command

    @classmethod
    def current(cls) -> Job:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if not HydraConfig.initialized():
            return cls(Path.cwd())
        hc = HydraConfig.get()
        out = Path(hc.runtime.output_dir)
        sweep = hc.mode == RunMode.MULTIRUN
        return cls(
            output_dir=out,
            overrides=list(hc.overrides.task),
            choices=dict(hc.runtime.choices),
            log_file=out / f"{hc.job.name}.log",
            num=hc.job.num if sweep else None,
            sweeper=container(hc.sweeper) if sweep else None,
            hydra_files=out / hc.output_subdir if hc.output_subdir else None,
        )

    def run_name(self, cfg: Config | DictConfig, overrides: Optional[list[str]] = None) -> str:
        """What tells the run apart, first, in at most NAME_MAX characters (the full command
        is in the description). A sweep's job: its swept values ('lr=0.01 resnet18'); what
        its jobs share is in the parent's name. Otherwise each override by its last key
        part, then the options chosen, then the model: 'lr=0.01 epochs=5 simple_cnn'.
        `overrides` replaces the job's own (a resume names the run it continues)."""
        if cfg.mlflow.run_name:
            return cfg.mlflow.run_name
        overrides = self.overrides or [] if overrides is None else overrides
        swept = set(filter(None, os.environ.get(SWEPT_ENV, "").split(","))) if self.num is not None else set()
        shown = [
            (key, self._part(key, value))
            for key, value in map(parse_override, overrides)
            if key in swept or _names(key)
        ]
        if swept & {key for key, _ in shown}:
            return _capped(" ".join(part for key, part in shown if key in swept))
        settings = " ".join(part for key, part in shown if key not in self.choices)
        options = " ".join([*(part for key, part in shown if key in self.choices), cfg.model.name])
        # what was chosen stays whole; the settings before it give way
        return _capped(f"{_capped(settings, NAME_MAX - len(options) - 1)} {options}".strip())

    def _part(self, key: str, value: str) -> str:
        """An option by its name (resnet18), a setting by its last key part (lr=0.01)."""
        return value if key in self.choices else f"{key.rsplit('.', 1)[-1]}={_short(value)}"

    def command(self, overrides: Optional[list[str]] = None) -> str:
        """This job's command line, or the one `overrides` would make."""
        chosen = self.overrides if overrides is None else overrides
        return " ".join(["python -m cifar_exp", *map(shlex.quote, chosen or [])])

    def tags(self, cfg: Config | DictConfig, device, world_size: int, run_dir: Path, segment: int) -> dict:
        """A fresh run's tags (its story's aside); for resume segment n >= 1 only
        resume.count and resume.<n>.* tags, so a resume adds to the record and never
        replaces what the run began with."""
        import torch

        facts = {
            "command": self.command(),
            "output_dir": str(self.output_dir.resolve()),
            "node": node_name(),
            "device": str(device),
            "world_size": world_size,
            "version.cifar_exp": __version__,
            "version.torch": torch.__version__,
        }
        if segment:
            return {"resume.count": segment, **{f"resume.{segment}.{k}": v for k, v in facts.items()}}
        tags = {
            "world_size": world_size,
            "hydra.output_dir": facts["output_dir"],
            "hydra.overrides": " ".join(self.overrides or []),
            "node": facts["node"],
            "device": facts["device"],
            "version.cifar_exp": __version__,
            "version.torch": torch.__version__,
            **source_tags(),
            **cfg.mlflow.tags,
        }
        if self.num is not None:
            tags["hydra.job.num"] = self.num
        return tags

    def story(self, run_dir: Path, overrides: Optional[list[str]] = None, earlier: Optional[str] = None) -> Story:
        """The run's story, standing for `overrides` (a resume's: the first command's with
        its changes) and going on from the history in the `earlier` description a resumed
        run recorded."""
        story = Story(self.command(overrides), Path(run_dir).resolve(), self.output_dir.resolve())
        _, found, history = (earlier or "").partition(HISTORY)
        story.history = [line for line in history.splitlines() if line.strip()] if found else []
        return story


HISTORY = "**History**"


@dataclass
class Story:
    """What the run's description in the MLflow UI tells: the command it stands for, where
    its files are and how to go on, and its history (started, stopped, resumed, failed),
    which only grows."""

    command: str
    run_dir: Path
    output_dir: Path
    history: list[str] = field(default_factory=list)

    def add(self, event: str) -> None:
        self.history.append(f"- {time.strftime('%Y-%m-%d %H:%M')} {event}")

    def tags(self) -> dict[str, str]:
        return {DESCRIPTION_TAG: self.description()}

    def description(self) -> str:
        """The run's description (markdown)."""
        return "\n".join(
            [
                f"`{self.command}` (cifar_exp {__version__})",
                "",
                f"- output dir: `{self.output_dir}`",
                f"- checkpoints: `{self.run_dir / 'checkpoints'}`",
                f"- resume or extend: `{resume_command(self.run_dir)} [epochs=N]`",
                f"- evaluate: `python -m cifar_exp.evaluate checkpoint={self.run_dir}`",
                "",
                HISTORY,
                "",
                *self.history,
            ]
        )


def progress(epoch: int, step: int, epochs: int) -> str:
    """Where a run stands, in words: 'after epoch 6 of 30', 'in epoch 7 of 30, after batch 5'."""
    if step:
        return f"in epoch {epoch + 1} of {epochs}, after batch {step}"
    return f"after epoch {epoch} of {epochs}" if epoch else "before its first batch"


def sweep_name(overrides: list[str], swept: list[str]) -> str:
    """'sweep lr=0.001,0.01 model=simple_cnn,resnet18 epochs=5': the parent run of a
    --multirun, its swept keys first."""
    pairs = sorted(
        ((k, v) for k, v in map(parse_override, overrides) if k in swept or _names(k)),
        key=lambda kv: kv[0] not in swept,
    )
    return _capped(" ".join(["sweep", *(f"{key.rsplit('.', 1)[-1]}={_spec(value)}" for key, value in pairs)]))


def _names(key: str) -> bool:
    """Whether an override says something about the experiment, and so belongs in a name."""
    return key not in RUN_NAME_SKIP and not key.startswith(RUN_NAME_SKIP_GROUPS)


def _spec(value: str) -> str:
    """A swept value as a name shows it: a long search space (tag(log, interval(1e-5, 1.0)))
    gives way to the keys beside it; the command in the description has it whole."""
    compact = value.replace(", ", ",")
    return compact if len(compact) <= SPEC_MAX else "…"


def source_tags() -> dict[str, str]:
    """Who launched a run and from what: MLflow's 'Created by' and 'Source' columns."""
    tags = {"mlflow.source.name": "cifar_exp", "mlflow.user": _user()}
    for key, where in (("mlflow.source.git.commit", None), ("cifar_exp.git_commit", PACKAGE_DIR)):
        commit = git_commit(where)
        if commit:
            tags[key] = commit
    return tags


def _capped(name: str, limit: int = NAME_MAX) -> str:
    """`name` in at most `limit` characters, cut between words (an override, an option) and
    marked with an ellipsis; a first word longer than the limit is cut itself."""
    if len(name) <= limit:
        return name
    kept = ""
    for word in name.split(" "):
        if len(f"{kept} {word} …".strip()) > limit:
            break
        kept = f"{kept} {word}".strip()
    return f"{kept} …" if kept else name[: max(limit - 1, 0)] + "…"


def _short(value: str) -> str:
    """0.056614015283581016 -> 0.05661: sampled floats stay readable in run names."""
    try:
        return f"{float(value):.4g}" if len(value) > 7 else value
    except ValueError:
        return value


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a bare container)
        return str(os.getuid())


def git_commit(where: Optional[Path] = None) -> Optional[str]:
    """The commit checked out in `where` (the launch directory by default), if a repository."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=where)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None
