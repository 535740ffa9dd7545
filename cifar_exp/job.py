"""Facts about this job: where Hydra put it, what the user overrode, what it is called and
tagged with. The only module that asks Hydra about the running job."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from omegaconf import DictConfig

from cifar_exp import __version__

# Overrides that say nothing about the experiment itself stay out of derived run names.
RUN_NAME_SKIP = ("model", "resume", "dataset.root", "dataset.cache_dir", "trainer.progress", "trainer.device")


def parse_override(override: str) -> tuple[str, str]:
    """'+optimizer.lr=0.1' -> ('optimizer.lr', '0.1'); a bare key has the value ''."""
    key, _, value = override.lstrip("+~").partition("=")
    return key, value


@dataclass(frozen=True)
class Job:
    output_dir: Path
    # the command line's overrides; None outside Hydra (then every key counts as set)
    overrides: Optional[list[str]] = None
    choices: dict = field(default_factory=dict)
    log_file: Optional[Path] = None
    num: Optional[int] = None  # the job's number in a --multirun sweep

    @classmethod
    def current(cls) -> "Job":
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if not HydraConfig.initialized():
            return cls(Path.cwd())
        hc = HydraConfig.get()
        out = Path(hc.runtime.output_dir)
        return cls(output_dir=out, overrides=list(hc.overrides.task), choices=dict(hc.runtime.choices),
                   log_file=out / f"{hc.job.name}.log",
                   num=hc.job.num if hc.mode == RunMode.MULTIRUN else None)

    def run_name(self, cfg: DictConfig) -> str:
        """'simple_cnn lr=0.01 epochs=5': the model, then each override by its last key part."""
        if cfg.mlflow.run_name:
            return cfg.mlflow.run_name
        parts = [self.choices.get("model") or cfg.model.name]
        for o in self.overrides or []:
            key, value = parse_override(o)
            if key not in RUN_NAME_SKIP and not key.startswith(("mlflow.", "checkpoint.", "hydra")):
                parts.append(f"{key.rsplit('.', 1)[-1]}={_short(value)}" if "." in key else o.lstrip("+~"))
        return " ".join(parts)

    def tags(self, cfg: DictConfig, device, world_size: int) -> dict:
        import torch

        tags = {
            "world_size": world_size,
            "hydra.output_dir": str(self.output_dir.resolve()),
            "hydra.overrides": " ".join(self.overrides or []),
            "device": str(device),
            "version.cifar_exp": __version__,
            "version.torch": torch.__version__,
            "mlflow.source.name": "cifar_exp",
            **cfg.mlflow.tags,
        }
        if self.num is not None:
            tags["hydra.job.num"] = self.num
        commit = git_commit()
        if commit:
            tags["mlflow.source.git.commit"] = commit
        return tags


def _short(value: str) -> str:
    """0.056614015283581016 -> 0.05661: sampled floats stay readable in run names."""
    try:
        return f"{float(value):.4g}" if len(value) > 7 else value
    except ValueError:
        return value


def git_commit() -> Optional[str]:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None
