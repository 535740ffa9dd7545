"""A run dir's layout: where its checkpoints live, and which run dir a `resume=` names.
Free of torch, so the entry point can read it before anything heavy is imported."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

CHECKPOINTS = "checkpoints"  # a run's checkpoints live in <run dir>/checkpoints/
HYDRA_FILES = ".hydra"  # Hydra's record of the command (config, overrides) in a run dir


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINTS


def run_dir_of(path: Path) -> Optional[Path]:
    """The run dir a checkpoint file belongs to, or None for a file kept anywhere else."""
    path = Path(path).resolve()
    return path.parent.parent if path.parent.name == CHECKPOINTS else None


def resumed_run_dir(resume: str) -> Optional[Path]:
    """The run dir a `resume=` value continues: a run dir with checkpoints, or a checkpoint
    inside one; None for anything else (auto, a loose checkpoint file, a wrong path)."""
    path = Path(resume).expanduser()
    run_dir = path.resolve() if path.is_dir() else run_dir_of(path) if path.is_file() else None
    return run_dir if run_dir is not None and checkpoint_dir(run_dir).is_dir() else None


def next_resume_files(run_dir: Path) -> str:
    """Where a resume's own Hydra files go inside the run dir (.hydra/resume_<n>), beside
    those of the command that started it, which are never replaced."""
    taken = {p.name for p in (Path(run_dir) / HYDRA_FILES).glob("resume_*")}
    n = next(n for n in range(1, len(taken) + 2) if f"resume_{n}" not in taken)
    return f"{HYDRA_FILES}/resume_{n}"
