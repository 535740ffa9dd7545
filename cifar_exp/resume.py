"""Resume rules: which checkpoint a run continues, which keys may differ from the config it
was trained with, and where the continued run writes."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from omegaconf import DictConfig, OmegaConf

from cifar_exp import checkpoint
from cifar_exp.checkpoint import Checkpoint
from cifar_exp.config import Config
from cifar_exp.errors import UserError, reason
from cifar_exp.job import Job, parse_override
from cifar_exp.registry import flatten, resume_safe_keys, schema
from cifar_exp.run_dir import run_dir_of
from cifar_exp.runtime import set_rng_state
from cifar_exp.validation import monitor_mode, validate

log = logging.getLogger("cifar_exp")

# Keys that may differ from the checkpoint's config when resuming (they change how the run
# is observed or how long it lasts, not what it computes): each schema field says so itself.
RESUME_SAFE = resume_safe_keys()


@dataclass
class Start:
    """How a run starts: its typed config (a resume's: the checkpoint's with this command's
    safe changes), the dir its checkpoints go to, and the checkpoint it continues (None for
    a fresh run)."""

    config: Config
    run_dir: Path
    checkpoint: Optional[Checkpoint] = None


def plan(cfg: DictConfig, config: Config, job: Job, run_dir: Path) -> Start:
    """`cfg` as composed and `config`, its validated form."""
    ck = _find(cfg, run_dir)
    if ck is None:
        return Start(config, run_dir)
    merged = resume_config(cfg, ck.config, job.overrides)
    resumed = validate(merged, origin=f"resuming {ck.path}")
    _start_monitor_afresh(ck, merged)
    # a checkpoint inside a run's checkpoints/ continues that run's dir; a loose copy of
    # one continues in this job's dir, never in whatever folder holds the file
    home = run_dir_of(ck.path) or run_dir
    log.info("resuming from %s (epoch %d, step %d)", ck.path, ck.state.epoch, ck.state.step)
    return Start(resumed, home, ck)


def _find(cfg: DictConfig, run_dir: Path) -> Optional[Checkpoint]:
    if cfg.resume is None:
        return None
    if cfg.resume == "auto":
        if not checkpoint.has_checkpoint(run_dir):
            log.info("resume=auto: no checkpoint in %s, starting fresh", run_dir)
            return None
        return checkpoint.find(run_dir, log=log.warning)
    return checkpoint.find(cfg.resume, log=log.warning)


def continued_overrides(first: list[str], now: list[str]) -> list[str]:
    """The overrides a resumed run stands for: the first segment's, with the keys this
    resume sets replaced or added (its `resume=` aside)."""
    new = {parse_override(o)[0]: o for o in now}
    new.pop("resume", None)
    kept = [new.pop(parse_override(o)[0], o) for o in first]
    return kept + list(new.values())


def key_touched(key: str, overrides: Optional[list[str]]) -> bool:
    if overrides is None:
        return True
    for o in overrides:
        name = parse_override(o)[0]
        if key == name or key.startswith(name + "."):
            return True
    return False


def is_safe(key: str) -> bool:
    return any(key == s or key.startswith(s + ".") for s in RESUME_SAFE)


def resume_config(cfg: DictConfig, saved: DictConfig, overrides: Optional[list[str]]) -> DictConfig:
    """The checkpoint's config with the safe keys taken from `cfg`. A key the user set that
    would change what the run computes is refused. `overrides` None means every key of cfg
    counts as set by the user."""
    merged = copy.deepcopy(saved)
    current, old = flatten(cfg), flatten(saved)
    # a changed option (model.name) is named before the keys that come with it
    for key in sorted(set(current) | set(old), key=lambda k: (not k.endswith(".name"), k)):
        if current.get(key) == old.get(key) or not key_touched(key, overrides):
            continue
        if is_safe(key):
            OmegaConf.update(merged, key, current.get(key), force_add=True)
        else:
            raise UserError(
                f"cannot change {key} when resuming (checkpoint: {old.get(key)!r}, now: "
                f"{current.get(key)!r}); only {', '.join(k for k in RESUME_SAFE if k.count('.') < 2)} may "
                f"change. Start a new run instead"
            )
    own_choices(merged, cfg)
    spanning = spans_the_run(merged)
    if merged.epochs != saved.epochs and spanning:
        raise UserError(
            f"epochs cannot change when resuming with {' and '.join(spanning)}: "
            f"its schedule spans the original {saved.epochs} epochs"
        )
    return merged


def spans_the_run(cfg: DictConfig) -> list[str]:
    """The settings whose schedule is laid over the run's whole length: a learning-rate
    schedule, and lookahead's (its slow copy's weight grows with the run's progress)."""
    spanning = [f"scheduler={cfg.scheduler.name}"] if cfg.scheduler.name != "none" else []
    if cfg.trainer.lookahead_every:
        spanning.append(f"trainer.lookahead_every={cfg.trainer.lookahead_every}")
    return spanning


def _start_monitor_afresh(ck: Checkpoint, cfg: DictConfig) -> None:
    """A resume that monitors another metric, or the same one the other way, does not judge
    it against the old one's record: the best value, the top-k ranking and early stopping's
    count start again (an accuracy's best would otherwise stop a loss-monitored run)."""
    was = (ck.config.checkpoint.monitor, monitor_mode(ck.config))
    now = (cfg.checkpoint.monitor, monitor_mode(cfg))
    if was == now:
        return
    ck.state.best, ck.state.top = None, []
    ck.policies.pop("early_stopping", None)
    log.info(
        "checkpoint.monitor is now %s (%s), was %s (%s): its best value, top-k ranking and early stopping's "
        "count start afresh (best.pt is replaced at the next evaluated epoch; earlier top_epoch_*.pt files stay)",
        *now,
        *was,
    )


def own_choices(stored: DictConfig, cfg: Optional[DictConfig] = None) -> None:
    """Where a job sends or writes anything is its own choice (its command, environment and
    defaults), never a stored config's: the tracking store, the decoded-image cache, and a
    download, which goes only into a dataset root this job names. `cfg` None: a tool's job,
    which has the dataset option's defaults."""
    name = stored.dataset.name
    own = cfg.dataset if cfg is not None and cfg.dataset.name == name else schema("dataset", name)()
    if cfg is not None:
        stored.mlflow.tracking_uri = cfg.mlflow.tracking_uri
    stored.dataset.cache_dir = own.cache_dir
    if "download" in stored.dataset:
        stored.dataset.download = bool(own.download) and stored.dataset.root == own.root


def restore(trainer, policies, ck: Checkpoint) -> None:
    """The checkpoint's weights, optimizer and schedule state into the run's trainer, its stop
    policies' state, and the RNG states; a state that does not fit (other shapes, missing
    entries) is a UserError, not a traceback."""
    policies.load_state_dict(ck.policies)
    checkpoint.check_fits(ck.trainer, trainer.state_dict(), f"checkpoint {ck.path}")
    try:
        trainer.load_state_dict(ck.trainer)
    except UserError:
        raise
    except (KeyError, RuntimeError, ValueError, TypeError, IndexError, AttributeError) as e:
        raise UserError(f"checkpoint {ck.path}: its trainer state does not fit this run ({reason(e)})") from None
    set_rng_state(ck.rng)
