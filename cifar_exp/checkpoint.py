"""Checkpoints: one dict of tensors and plain values (loadable with weights_only=True),
written atomically, found and validated for resuming."""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from cifar_exp import __version__
from cifar_exp.errors import UserError

FORMAT_VERSION = 1
LAST, BEST = "last.pt", "best.pt"


def atomic_save(obj: Any, path: Path) -> None:
    """Write to a temporary file beside `path`, fsync, then rename: a crash at any point
    leaves either the old file or the new one, never a torn one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def link_or_copy(src: Path, dst: Path) -> None:
    """Atomically make `dst` hold the same bytes as `src` (a hard link where possible)."""
    tmp = dst.with_name(f".{dst.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        import shutil

        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    random.setstate(_to_tuple(state["python"]))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy(), *rest))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"][: torch.cuda.device_count()])


def _to_tuple(x):
    return tuple(_to_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def load(path: Path) -> dict:
    """Load and check one checkpoint file; any problem is a UserError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated or foreign files
        reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise UserError(f"checkpoint {path} is unreadable (truncated or corrupt?): {reason}") from None
    if not isinstance(state, dict) or "format_version" not in state:
        raise UserError(f"{path} is not a cifar_exp checkpoint")
    if state["format_version"] != FORMAT_VERSION:
        raise UserError(f"checkpoint {path} has format version {state['format_version']}; "
                        f"this cifar_exp {__version__} reads version {FORMAT_VERSION}")
    return state


def candidates(ckpt_dir: Path) -> list[Path]:
    """Checkpoint files of a run, last.pt first, then newest first."""
    files = [p for p in ckpt_dir.glob("*.pt") if p.name != LAST]
    files.sort(key=lambda p: p.stat().st_mtime_ns, reverse=True)
    last = ckpt_dir / LAST
    return ([last] if last.exists() else []) + files


def find(target: str | Path, log=print) -> tuple[Path, dict]:
    """A checkpoint file, or a run output dir: its newest valid checkpoint."""
    target = Path(target).expanduser()
    if target.is_file() or not target.exists():
        return target, load(target)
    ckpt_dir = target / "checkpoints" if (target / "checkpoints").is_dir() else target
    files = candidates(ckpt_dir)
    if not files:
        raise UserError(f"no checkpoint in {target} (looked for {ckpt_dir}/{LAST})")
    problems = []
    for path in files:
        try:
            state = load(path)
        except UserError as e:
            problems.append(str(e))
            continue
        if problems:
            log(f"warning: skipped invalid checkpoint(s): {'; '.join(problems)}; using {path}")
        return path, state
    raise UserError(f"no valid checkpoint in {ckpt_dir}: {'; '.join(problems)}")


def has_checkpoint(run_dir: Path) -> bool:
    return bool(candidates(Path(run_dir) / "checkpoints")) if (Path(run_dir) / "checkpoints").is_dir() else False


def restore_model(state: dict, device: torch.device) -> torch.nn.Module:
    """The checkpoint's model with its weights, in eval mode."""
    from hydra.utils import instantiate

    model = instantiate(state["config"]["model"], num_classes=len(state["classes"]))
    model.load_state_dict(state["trainer"]["model"])
    return model.to(device).eval()


class CheckpointWriter:
    """Writes last.pt, best.pt and the last k epoch checkpoints of one run."""

    def __init__(self, ckpt_dir: Path, keep_last: int, save_best: bool, monitor: str, mode: str,
                 enabled: bool = True):
        # disabled: tracks the best metric like the others, writes nothing (ranks > 0 of DDP)
        self.enabled = enabled
        self.dir = Path(ckpt_dir)
        self.keep_last, self.save_best = keep_last, save_best
        self.monitor, self.mode = monitor, mode

    def improved(self, metrics: dict, best: Optional[float]) -> bool:
        value = metrics.get(self.monitor)
        if value is None:
            return False
        return best is None or (value > best if self.mode == "max" else value < best)

    def save(self, state: dict, *, epoch_end: bool, is_best: bool) -> Path:
        state = {"format_version": FORMAT_VERSION, "framework_version": __version__, **state}
        last = self.dir / LAST
        atomic_save(state, last)
        if epoch_end and self.keep_last:
            link_or_copy(last, self.dir / f"epoch_{state['epoch']:04d}.pt")
            for old in sorted(self.dir.glob("epoch_*.pt"))[: -self.keep_last]:
                old.unlink()
        if is_best and self.save_best:
            link_or_copy(last, self.dir / BEST)
        return last
