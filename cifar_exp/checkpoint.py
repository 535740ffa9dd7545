"""The run's state and its checkpoint file: the one owner of both formats.

A checkpoint is RunState + trainer state + the stop policies' state + RNG state + the
resolved config, as one dict of tensors and plain values (loadable with weights_only=True),
written atomically. `load` is the one reader: it checks the file, migrates older formats
and rebuilds the stored config on the registered schemas, so a checkpoint can never choose
code."""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from omegaconf import DictConfig

from cifar_exp import __version__
from cifar_exp.checks import image_size
from cifar_exp.config import Config, plain_config
from cifar_exp.durable import atomic_save, atomic_write, atomic_write_text, digest
from cifar_exp.errors import UserError, reason
from cifar_exp.run_dir import checkpoint_dir
from cifar_exp.runtime import rng_state, to_tuple
from cifar_exp.stored import check_depth, from_stored
from cifar_exp.validation import monitor_mode, validate

FORMAT_VERSION = 3
LAST, BEST = "last.pt", "best.pt"


@dataclass
class RunState:
    """Where a run stands: everything besides weights, RNG and the stop policies' state that a
    resume continues from."""

    classes: list[str]
    epoch: int = 0  # epochs completed
    step: int = 0  # batches completed in the current epoch
    global_step: int = 0  # optimizer steps since the run began
    best: Optional[float] = None
    history: list[dict] = field(default_factory=list)  # one metrics dict per epoch
    run_id: Optional[str] = None
    segment: int = 0  # how many times the run was resumed
    top: list = field(default_factory=list)  # [value, epoch] of the kept top-k checkpoints
    # how far the store's step axis runs ahead of global_step: format 2 counted batches, so
    # a run it migrates logs after the steps its store already holds (see _migrate_v2)
    step_offset: int = 0

    @property
    def logged_step(self) -> int:
        """The step the run's metrics are logged at."""
        return self.global_step + self.step_offset

    def advance(self, stepped: bool) -> None:
        """One batch done; `stepped`: it completed an optimizer step."""
        self.step += 1
        self.global_step += stepped

    def end_epoch(self, metrics: dict, monitor: str, mode: str) -> bool:
        """Record the finished epoch; True when `monitor` improved on the best so far (an
        epoch that was not evaluated, trainer.eval_every_n_epochs, does not)."""
        self.history.append(metrics)
        self.epoch, self.step = self.epoch + 1, 0
        value = metrics.get(monitor)
        if value is None:
            return False
        improved = self.best is None or (value > self.best if mode == "max" else value < self.best)
        if improved:
            self.best = value
        return improved

    @property
    def last_metrics(self) -> dict:
        return self.history[-1] if self.history else {}


@dataclass
class Checkpoint:
    path: Path
    state: RunState
    trainer: dict
    rng: dict
    config: DictConfig
    policies: dict = field(default_factory=dict)  # each stop policy's state, by name


# Format 1 (cifar_exp 0.1.0) named models and optimizers by import path; these are the only
# paths it ever wrote, each mapped to its registered option.
V1_TARGETS = {
    "model": {
        "cifar_exp.models.SimpleCNN": "simple_cnn",
        "cifar_exp.models.TutorialNet": "tutorial_net",
        "cifar_exp.models.resnet18": "resnet18",
        "cifar_exp.models.SpeedNet": "speed_net",
    },
    "optimizer": {"torch.optim.SGD": "sgd", "torch.optim.Adam": "adam", "torch.optim.AdamW": "adamw"},
}


def _migrate_v1(raw: dict, path: Path) -> dict:
    config = dict(raw["config"])
    for group, names in V1_TARGETS.items():
        node = dict(config[group])
        target = node.pop("_target_", None)
        if target not in names:
            raise UserError(
                f"checkpoint {path}: refusing {group}._target_={target!r}: not an option "
                f"this version knows ({', '.join(names)})"
            )
        config[group] = {"name": names[target], **node}
    trainer = dict(raw["trainer"])
    state = {k: raw[k] for k in ("epoch", "step", "best", "history", "run_id", "classes")}
    state["global_step"] = trainer.pop("global_step")
    return {"format_version": 2, "run": state, "trainer": trainer, "rng": raw["rng"], "config": config}


def _migrate_v2(raw: dict) -> dict:
    """Format 2 counted batches as global_step and kept early stopping's count in the run
    state. Every epoch has the same number of batches B, and a mid-epoch checkpoint falls on
    an optimizer step, so the optimizer steps are epoch x ceil(B / k) + step / k."""
    run = dict(raw["run"])
    trainer = raw["config"].get("trainer", {}) if isinstance(raw["config"], dict) else {}
    k = trainer.get("accumulate_grad_batches", 1) if isinstance(trainer, dict) else 1
    epoch, step, batches = run.get("epoch", 0), run.get("step", 0), run.get("global_step", 0)
    # malformed values are left for the checks after the migration to name
    if type(k) is int and k > 1 and all(type(n) is int and n >= 0 for n in (epoch, step, batches)):
        per_epoch = (batches - step) // epoch if epoch else 0
        run["global_step"] = epoch * -(-per_epoch // k) + step // k
        # its metrics were logged at batch counts: what the run logs next goes after them
        run["step_offset"] = batches - run["global_step"]
    policies = {"early_stopping": {"bad_epochs": run.pop("bad_epochs", 0)}}
    return {**raw, "format_version": FORMAT_VERSION, "run": run, "policies": policies}


def _read(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated, foreign or pickled files
        why = reason(e, 160)
        raise UserError(
            f"checkpoint {path} is unreadable (truncated, corrupt, or not a tensor file): {why.rstrip('. ')}"
        ) from None
    if not isinstance(raw, dict) or "format_version" not in raw:
        raise UserError(f"{path} is not a cifar_exp checkpoint")
    check_depth(raw, f"checkpoint {path}")
    # files written before checksums have none: torch's own checks are all they get
    if "sha256" in raw and raw["sha256"] != digest({k: v for k, v in raw.items() if k != "sha256"}):
        raise UserError(f"checkpoint {path} is damaged: its contents do not match its checksum")
    return raw


COUNTS = ("epoch", "step", "global_step", "segment", "step_offset")


def _check_state(run: dict, origin: str) -> None:
    """The stored run state's types and ranges, as RunState declares them."""

    def bad(key: str, allowed: str) -> UserError:
        return UserError(f"{origin}: run.{key}={run.get(key)!r} is invalid: must be {allowed}")

    for key in COUNTS:
        value = run.get(key, 0)
        if type(value) is not int or value < 0:
            raise bad(key, "an integer >= 0")
    classes = run.get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise bad("classes", "a non-empty list of class names")
    best = run.get("best")
    if best is not None and (type(best) not in (int, float) or not np.isfinite(best)):
        raise bad("best", "a finite number or null")
    history = run.get("history", [])
    if not isinstance(history, list) or not all(_metrics(h) for h in history):
        raise bad("history", "a list of per-epoch mappings of metric names to numbers")
    if run.get("run_id") is not None and not isinstance(run["run_id"], str):
        raise bad("run_id", "a run id or null")
    top = run.get("top", [])
    epochs = [t[1] for t in top if isinstance(t, list) and len(t) == 2]
    if (
        not isinstance(top, list)
        or len(epochs) != len(top)
        or not all(_number(t[0]) and np.isfinite(t[0]) for t in top)
        or not all(type(e) is int and 1 <= e <= run.get("epoch", 0) for e in epochs)
        or len(set(epochs)) != len(epochs)
    ):
        raise bad("top", "a list of [score, epoch] pairs, one per finished epoch")


def _number(value: Any) -> bool:
    return type(value) in (int, float)


def _metrics(entry: Any) -> bool:
    return isinstance(entry, dict) and all(isinstance(k, str) and _number(v) for k, v in entry.items())


def check_fits(stored: Any, fresh: Any, origin: str, where: str = "trainer") -> None:
    """A stored trainer state has the kinds of values this run's own trainer state has, key
    by key (a number where a number is, a tensor where a tensor is): a type-confused file is
    refused before training, not partway through it. Keys only one side has are left to
    load_state_dict, which names them."""
    kinds = (torch.Tensor, bool, str, dict, (list, tuple))
    if fresh is None:  # an unset option (foreach=None) may be stored as anything plain
        return
    if _number(fresh):
        ok = _number(stored)
    else:
        kind = next((k for k in kinds if isinstance(fresh, k)), None)
        ok = kind is None or isinstance(stored, kind)
    if not ok:
        raise UserError(f"{origin}: {where} is a {type(stored).__name__} where this run has a {type(fresh).__name__}")
    if isinstance(fresh, dict):
        for key in fresh.keys() & stored.keys():
            check_fits(stored[key], fresh[key], origin, f"{where}.{key}")
    elif isinstance(fresh, (list, tuple)):
        for i, (a, b) in enumerate(zip(stored, fresh)):
            check_fits(a, b, origin, f"{where}.{i}")


def _check_rng(rng: Any, origin: str) -> None:
    """The RNG states must load into generators of their kind (tried on throwaway ones)."""
    try:
        random.Random().setstate(to_tuple(rng["python"]))
        kind, keys, *rest = rng["numpy"]
        np.random.RandomState().set_state((kind, keys.numpy(), *rest))
        torch.Generator().set_state(rng["torch"])
        if not isinstance(rng["cuda"], list) or not all(isinstance(t, torch.Tensor) for t in rng["cuda"]):
            raise TypeError("cuda states are not tensors")
    except Exception as e:  # a wrong type, size or value from any of the four
        raise UserError(f"{origin}: its RNG state is malformed ({type(e).__name__}: {reason(e)})") from None


def _check_trainer(trainer: Any, origin: str) -> None:
    weights = trainer.get("model") if isinstance(trainer, dict) else None
    if (
        not isinstance(weights, dict)
        or not weights
        or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in weights.items())
    ):
        raise UserError(f"{origin}: its trainer state has no model weights (trainer.model)")


def load(path: Path) -> Checkpoint:
    """Load and check one checkpoint file: its run state, RNG state, weights and config, the
    config through the same checks as the command line's (files on this machine aside). Any
    problem is a UserError naming the file."""
    path = Path(path)
    origin = f"checkpoint {path}"
    raw = _read(path)
    version = raw["format_version"]
    if version not in (1, 2, FORMAT_VERSION):
        raise UserError(
            f"{origin} has format version {version!r}; "
            f"this cifar_exp {__version__} reads versions 1 to {FORMAT_VERSION}"
        )
    try:
        if version == 1:
            raw = _migrate_v1(raw, path)
        if raw["format_version"] == 2:
            raw = _migrate_v2(raw)
        run, trainer, rng, stored = raw["run"], raw["trainer"], raw["rng"], raw["config"]
        if not isinstance(run, dict):
            raise TypeError("run is not a mapping")
        _check_state(run, origin)
        policies = _checked_policies(raw["policies"], origin)
        state = RunState(**run)
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        raise UserError(f"{origin} is incomplete or malformed ({type(e).__name__}: {e})") from None
    _check_trainer(trainer, origin)
    _check_rng(rng, origin)
    config = from_stored(stored, origin)
    validate(config, paths=False, origin=origin)
    return Checkpoint(path, state, trainer, rng, config, policies)


def _checked_policies(policies: Any, origin: str) -> dict:
    """The stop policies' states (policies.py): counts by policy name and key."""
    if not isinstance(policies, dict) or not all(isinstance(v, dict) for v in policies.values()):
        raise UserError(f"{origin}: its policies are not a mapping of policy states")
    for name, state in policies.items():
        for key, value in state.items():
            if type(value) is not int or value < 0:
                raise UserError(f"{origin}: policies.{name}.{key}={value!r} is invalid: must be an integer >= 0")
    return policies


def candidates(ckpt_dir: Path, log=None) -> list[Path]:
    """Checkpoint files of a run, last.pt first, then newest first. An entry that is not a
    readable file (a dangling link, a folder) is passed over, said to `log` if given."""
    files = []
    for p in ckpt_dir.glob("*.pt"):
        if p.is_file():
            files.append(p)
        elif log is not None:
            log(f"warning: {p} is not a checkpoint file (a dangling link or a folder): skipped")
    rest = sorted((p for p in files if p.name != LAST), key=lambda p: p.stat().st_mtime_ns, reverse=True)
    return [p for p in files if p.name == LAST] + rest


def find(target: str | Path, log=print) -> Checkpoint:
    """A checkpoint file, or a run output dir: its newest valid checkpoint."""
    target = Path(target).expanduser()
    if target.is_file() or not target.exists():
        return load(target)
    ckpt_dir = checkpoint_dir(target) if checkpoint_dir(target).is_dir() else target
    files = candidates(ckpt_dir, log)
    if not files:
        raise UserError(f"no checkpoint in {target} (looked for {ckpt_dir}/{LAST})")
    problems = []
    for path in files:
        try:
            ck = load(path)
        except UserError as e:
            problems.append(str(e))
            continue
        if problems:
            log(f"warning: skipped invalid checkpoint(s): {'; '.join(problems)}; using {path}, the newest valid one")
        return ck
    raise UserError(f"no valid checkpoint in {ckpt_dir}: {'; '.join(problems)}")


def has_checkpoint(run_dir: Path) -> bool:
    ckpt_dir = checkpoint_dir(run_dir)
    return ckpt_dir.is_dir() and bool(candidates(ckpt_dir))


def restore_model(ck: Checkpoint, device: torch.device) -> torch.nn.Module:
    """The checkpoint's model (a registered option) with its weights, in eval mode."""
    from cifar_exp.models import build_model

    model = build_model(ck.config.model, len(ck.state.classes), image_size(ck.config.dataset))
    ema = ck.trainer.get("ema")
    # a run that keeps an EMA of its weights is evaluated and used with it
    weights = (
        {k[len("module.") :]: v for k, v in ema.items() if k.startswith("module.")} if ema else ck.trainer["model"]
    )
    try:
        model.load_state_dict(weights)
    except (RuntimeError, KeyError, TypeError, AttributeError) as e:
        raise UserError(
            f"checkpoint {ck.path}: its weights do not fit model={ck.config.model.name} ({reason(e)})"
        ) from None
    return model.to(device).eval()


class Checkpointer:
    """Writes a run's last.pt, best.pt and the last k epoch checkpoints. Each write is a commit
    point: `before_write` (the tracker's flush) runs first, so the metrics a checkpoint
    covers are in the store before the file exists."""

    def __init__(self, run_dir: Path, cfg: Config, *, enabled: bool, before_write: Callable[[], None] = lambda: None):
        # disabled: writes nothing (tracking off for checkpoints, or ranks > 0 of DDP)
        self.enabled, self.before_write = enabled, before_write
        self.dir = checkpoint_dir(run_dir)
        self.keep_last, self.save_best = cfg.checkpoint.keep_last, cfg.checkpoint.save_best
        self.top_k, self.mode = cfg.checkpoint.save_top_k, monitor_mode(cfg)
        self.config = plain_config(cfg)
        self.last_good: Optional[tuple[Path, int]] = None  # (file, global step) of the newest write

    def describe_last_good(self) -> str:
        if self.last_good is None:
            return "no checkpoint of this run holds finite weights"
        path, step = self.last_good
        return f"last good checkpoint: {path} (step {step})"

    def check_writable(self) -> None:
        """Fail before training, not after an epoch, when checkpoints cannot be written."""
        if not self.enabled:
            return
        last = self.dir / LAST
        if last.exists() and not last.is_file() or last.is_symlink() and not last.exists():
            raise UserError(f"cannot write checkpoints in {self.dir}: {last} is not a file (move it away)")
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text("", self.dir / ".write_test")
            (self.dir / ".write_test").unlink()
        except OSError as e:
            raise UserError(
                f"cannot write checkpoints in {self.dir}: {e.strerror or e} (set hydra.run.dir to a writable place)"
            ) from None

    def _rank(self, state: RunState, score: Optional[float]) -> list:
        """The top-k list with this epoch's score in it, if it makes the cut."""
        if not self.top_k or score is None:
            return state.top
        ranked = sorted([*state.top, [score, state.epoch]], key=lambda t: t[0], reverse=self.mode == "max")
        return ranked[: self.top_k]

    def save(
        self,
        state: RunState,
        trainer,
        policies,
        *,
        epoch_end: bool,
        is_best: bool,
        score: Optional[float] = None,
    ) -> Optional[Path]:
        """Write last.pt (and epoch_N.pt, best.pt, top_epoch_N.pt as configured); `score`
        is the epoch's monitored value, which ranks it for the top k."""
        if not self.enabled:
            return None
        self.before_write()
        last = self.dir / LAST
        dropped = []
        if epoch_end:
            top = self._rank(state, score)
            dropped, state.top = [t for t in state.top if t not in top], top
        payload = {
            "format_version": FORMAT_VERSION,
            "framework_version": __version__,
            "run": asdict(state),
            "trainer": trainer.state_dict(),
            "policies": policies.state_dict(),
            "rng": rng_state(),
            "config": self.config,
        }
        payload["sha256"] = digest(payload)
        try:
            data = atomic_save(payload, last)
            self.last_good = (last, state.global_step)
            # copies, never links: damage to one file must leave the others whole
            if epoch_end and self.keep_last:
                atomic_write(data, self.dir / f"epoch_{state.epoch:04d}.pt")
                for old in sorted(self.dir.glob("epoch_*.pt"))[: -self.keep_last]:
                    old.unlink()
            if is_best and self.save_best:
                atomic_write(data, self.dir / BEST)
            if epoch_end and [score, state.epoch] in state.top:
                atomic_write(data, self.dir / f"top_epoch_{state.epoch:04d}.pt")
            for _, epoch in dropped:
                (self.dir / f"top_epoch_{epoch:04d}.pt").unlink(missing_ok=True)
        except OSError as e:
            raise UserError(
                f"cannot write checkpoint {last}: {e.strerror or e}; nothing was replaced ({self.describe_last_good()})"
            ) from None
        return last
