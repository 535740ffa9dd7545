"""Typed config schema (registered in Hydra's ConfigStore) and range validation.

The YAML files in conf/ pick a schema from the `schema/<group>` options below, so every
key has a type and an unknown key is an error. Ranges are checked by `validate`, which
runs before anything heavy is imported or created.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from cifar_exp.errors import UserError


# --- dataset -------------------------------------------------------------------------------
@dataclass
class DatasetConfig:
    name: str = MISSING
    root: str = "data"
    batch_size: int = 128
    eval_batch_size: int = 1000
    # images held out of the training split (deterministically) as a validation set
    val_size: int = 0
    augment: bool = False
    crop_padding: int = 4
    mean: List[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    std: List[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    # decoded uint8 tensors are cached here (relative to the launch directory); null disables
    cache_dir: Optional[str] = "data/cache"


@dataclass
class TorchvisionDatasetConfig(DatasetConfig):
    download: bool = True


@dataclass
class ImageFolderConfig(DatasetConfig):
    root: str = MISSING
    # images of another size are resized to this square size
    image_size: int = 32


@dataclass
class SyntheticConfig(DatasetConfig):
    name: str = "synthetic"
    train_size: int = 2000
    test_size: int = 500
    num_classes: int = 10
    image_size: int = 32
    noise: float = 0.25
    data_seed: int = 0
    cache_dir: Optional[str] = None


# --- model / optimizer / scheduler -----------------------------------------------------------
@dataclass
class ModelConfig:
    _target_: str = MISSING


@dataclass
class SpeedNetConfig(ModelConfig):
    _target_: str = "cifar_exp.models.SpeedNet"
    widths: List[int] = field(default_factory=lambda: [64, 128, 256])
    act: str = "gelu"


@dataclass
class SGDConfig:
    _target_: str = "torch.optim.SGD"
    lr: float = 0.001
    momentum: float = 0.0
    weight_decay: float = 0.0
    nesterov: bool = False


@dataclass
class AdamConfig:
    _target_: str = "torch.optim.Adam"
    lr: float = 0.001
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.0


@dataclass
class AdamWConfig(AdamConfig):
    _target_: str = "torch.optim.AdamW"
    weight_decay: float = 0.01


@dataclass
class SchedulerConfig:
    name: str = "none"


@dataclass
class CosineConfig(SchedulerConfig):
    name: str = "cosine"
    eta_min: float = 0.0


@dataclass
class OneCycleConfig(SchedulerConfig):
    name: str = "onecycle"
    # peak learning rate; null takes optimizer.lr
    max_lr: Optional[float] = None
    pct_start: float = 0.25


@dataclass
class StepConfig(SchedulerConfig):
    name: str = "step"
    step_epochs: int = 30
    gamma: float = 0.1


# --- trainer, tracking, checkpoints -------------------------------------------------------------
@dataclass
class TrainerConfig:
    # auto picks cuda, then mps, then cpu
    device: str = "auto"
    # bf16/fp16 autocast on CUDA; ignored on CPU and MPS
    amp: bool = True
    log_every_n_steps: int = 50
    deterministic: bool = False
    compile: bool = False
    # NHWC layout for model and batches: faster for conv nets with BatchNorm on CPU and GPU
    channels_last: bool = False
    progress: bool = True
    label_smoothing: float = 0.0
    # evaluate on each image and its mirror image, averaging the logits
    eval_flip: bool = False
    # single process, or ddp under torchrun
    strategy: str = "single"


@dataclass
class MlflowConfig:
    enabled: bool = True
    # null: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the launch directory
    tracking_uri: Optional[str] = None
    experiment_name: str = "cifar_exp"
    # null: derived from the command-line overrides
    run_name: Optional[str] = None
    log_model: bool = True
    # buffered metrics are written at least this often (and at every epoch end and checkpoint)
    flush_every_s: float = 30.0
    tags: Dict[str, str] = field(default_factory=dict)


@dataclass
class CheckpointConfig:
    enabled: bool = True
    every_n_epochs: int = 1
    # 0 disables mid-epoch checkpoints
    every_n_steps: int = 0
    # epoch checkpoints kept beside last.pt and best.pt; 0 keeps none
    keep_last: int = 0
    save_best: bool = True
    monitor: str = "test/acc"
    mode: str = "max"


@dataclass
class Config:
    dataset: Any = MISSING
    model: Any = MISSING
    optimizer: Any = MISSING
    scheduler: Any = MISSING
    trainer: TrainerConfig = MISSING
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    epochs: int = 1
    seed: int = 0
    # a checkpoint file, a run output dir, or "auto" (this run's dir if it holds one)
    resume: Optional[str] = None
    # the metric @hydra.main returns to a sweeper
    objective: str = "test/acc"


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=Config)
    schemas = {
        "dataset": {
            "torchvision": TorchvisionDatasetConfig,
            "image_folder": ImageFolderConfig,
            "synthetic": SyntheticConfig,
        },
        "model": {"model": ModelConfig, "speed_net": SpeedNetConfig},
        "optimizer": {"sgd": SGDConfig, "adam": AdamConfig, "adamw": AdamWConfig},
        "scheduler": {
            "none": SchedulerConfig,
            "cosine": CosineConfig,
            "onecycle": OneCycleConfig,
            "step": StepConfig,
        },
        "trainer": {"trainer": TrainerConfig},
    }
    for group, nodes in schemas.items():
        for name, node in nodes.items():
            cs.store(group=f"schema/{group}", name=name, node=node)


def run_tool(action, defaults: dict, usage: str, prog: str, argv: list[str] | None = None) -> None:
    """Entry point of a small key=value tool: --help prints `usage`, a UserError one line."""
    import sys

    from cifar_exp.errors import exit_with

    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(usage)
        return
    try:
        action(parse_cli(argv, defaults))
    except UserError as e:
        exit_with(str(e), prog=prog)


def parse_cli(argv: list[str], defaults: dict) -> DictConfig:
    """key=value arguments (Hydra's style) for the small tools, checked against `defaults`:
    an unknown key or a missing required (None) value is a UserError."""
    try:
        given = OmegaConf.from_dotlist(argv)
    except Exception as e:
        raise UserError(f"cannot parse arguments {argv}: {e}") from None
    for key in given:
        if key not in defaults:
            raise UserError(f"unknown argument {key}=...; expected {', '.join(f'{k}=' for k in defaults)}")
    cfg = OmegaConf.merge(OmegaConf.create(defaults), given)
    for key, value in cfg.items():
        if value is None:
            raise UserError(f"{key}=... is required")
    return cfg


# --- validation ---------------------------------------------------------------------------------
def _check(ok: bool, key: str, allowed: str, value: Any) -> None:
    if not ok:
        raise UserError(f"{key}={value!r} is invalid: must be {allowed}")


DATASETS = ("cifar10", "cifar100", "image_folder", "synthetic")
SCHEDULERS = ("none", "cosine", "onecycle", "step")
DEVICES = ("auto", "cpu", "cuda", "mps")
STRATEGIES = ("single", "ddp")


def validate(cfg: DictConfig) -> None:
    """Raise UserError naming the first key whose value is out of range."""
    d, o, t, c = cfg.dataset, cfg.optimizer, cfg.trainer, cfg.checkpoint
    if OmegaConf.is_missing(d, "root"):
        raise UserError(f"dataset.root is required for dataset={d.name} (a directory with train/ and test/)")
    _check(cfg.epochs >= 1, "epochs", "an integer >= 1", cfg.epochs)
    _check(d.name in DATASETS, "dataset.name", f"one of {', '.join(DATASETS)}", d.name)
    _check(d.batch_size >= 1, "dataset.batch_size", "an integer >= 1", d.batch_size)
    _check(d.eval_batch_size >= 1, "dataset.eval_batch_size", "an integer >= 1", d.eval_batch_size)
    _check(d.val_size >= 0, "dataset.val_size", "an integer >= 0", d.val_size)
    _check(d.crop_padding >= 0, "dataset.crop_padding", "an integer >= 0", d.crop_padding)
    _check(len(d.mean) == 3, "dataset.mean", "a list of 3 floats", list(d.mean))
    _check(len(d.std) == 3 and all(s > 0 for s in d.std), "dataset.std", "3 floats > 0", list(d.std))
    if d.name == "image_folder":
        root = Path(d.root).expanduser()
        _check(root.is_dir(), "dataset.root", "an existing directory with train/ and test/", d.root)
        for split in ("train", "test"):
            _check((root / split).is_dir(), "dataset.root",
                   f"a directory holding {split}/<class>/<images> (no {root / split})", d.root)
    if d.name == "synthetic":
        _check(d.train_size > d.val_size, "dataset.train_size", "> dataset.val_size", d.train_size)
        _check(d.test_size >= 1, "dataset.test_size", "an integer >= 1", d.test_size)
        _check(d.num_classes >= 2, "dataset.num_classes", "an integer >= 2", d.num_classes)
        _check(d.image_size >= 8, "dataset.image_size", "an integer >= 8", d.image_size)
    if "act" in cfg.model:
        _check(cfg.model.act in ("gelu", "relu"), "model.act", "gelu or relu", cfg.model.act)
    _check(o.lr > 0, "optimizer.lr", "a float > 0", o.lr)
    _check(o.weight_decay >= 0, "optimizer.weight_decay", "a float >= 0", o.weight_decay)
    if "momentum" in o:
        _check(0 <= o.momentum < 1, "optimizer.momentum", "a float in [0, 1)", o.momentum)
    s = cfg.scheduler
    _check(s.name in SCHEDULERS, "scheduler.name", f"one of {', '.join(SCHEDULERS)}", s.name)
    if s.name == "step":
        _check(s.step_epochs >= 1, "scheduler.step_epochs", "an integer >= 1", s.step_epochs)
    if s.name == "onecycle":
        _check(0 < s.pct_start < 1, "scheduler.pct_start", "a float in (0, 1)", s.pct_start)
    _check(t.device.split(":")[0] in DEVICES, "trainer.device", f"one of {', '.join(DEVICES)}", t.device)
    _check(t.log_every_n_steps >= 1, "trainer.log_every_n_steps", "an integer >= 1", t.log_every_n_steps)
    _check(0 <= t.label_smoothing < 1, "trainer.label_smoothing", "a float in [0, 1)", t.label_smoothing)
    _check(t.strategy in STRATEGIES, "trainer.strategy", f"one of {', '.join(STRATEGIES)}", t.strategy)
    _check(c.every_n_epochs >= 1, "checkpoint.every_n_epochs", "an integer >= 1", c.every_n_epochs)
    _check(c.every_n_steps >= 0, "checkpoint.every_n_steps", "an integer >= 0", c.every_n_steps)
    _check(c.keep_last >= 0, "checkpoint.keep_last", "an integer >= 0", c.keep_last)
    _check(c.mode in ("min", "max"), "checkpoint.mode", "min or max", c.mode)
