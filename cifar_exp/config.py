"""Typed config schema, the registry of options per group, and range validation.

Each option of the groups dataset, model, optimizer and scheduler is one registry entry: a
dataclass schema (its keys, types and defaults; its `name` field names the option) and the
project function that builds it. `register_configs` stores every entry as a Hydra group
option, typed by its group's base schema, so `model=speed_net model.widths=[32,64,128]` is
checked key by key and an unknown key is an error. The same registry rebuilds a config read
from a checkpoint, so a file can only ever name one of these options, never code.

Nothing here imports torch: `--help` and config errors stay fast.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
import re
from typing import Any, Callable, ClassVar, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

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
    # batch augmentations of the training split: a zeroed square of this side (0 = off) ...
    cutout: int = 0
    # ... and mixing pairs of images, with Beta(alpha, alpha) weights (0 = off; both on:
    # each batch picks one of the two)
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    # training batches: drop the last, partial one of each epoch
    drop_last: bool = False
    # training flips: "random" per image each epoch, or "alternate": a random flip per image
    # drawn once, then every image flipped on odd epochs (each sees both sides equally often)
    flip: str = "random"
    # the crop's border: "zeros" or "reflect" (mirrored edge pixels)
    pad_mode: str = "zeros"


@dataclass
class Cifar10Config(DatasetConfig):
    """torchvision's CIFAR-10, downloaded into root when missing and download=true."""
    name: str = "cifar10"
    download: bool = True


@dataclass
class Cifar100Config(Cifar10Config):
    """torchvision's CIFAR-100 (fine labels)."""
    name: str = "cifar100"
    mean: List[float] = field(default_factory=lambda: [0.5071, 0.4865, 0.4409])
    std: List[float] = field(default_factory=lambda: [0.2673, 0.2564, 0.2762])


@dataclass
class ImageFolderConfig(DatasetConfig):
    """Any root/train/<class>/* + root/test/<class>/* tree of images."""
    name: str = "image_folder"
    root: str = MISSING
    # images of another size are resized to this square size
    image_size: int = 32


@dataclass
class SyntheticConfig(DatasetConfig):
    """Learnable class-dependent images generated in memory from a seed."""
    name: str = "synthetic"
    train_size: int = 2000
    test_size: int = 500
    num_classes: int = 10
    image_size: int = 32
    noise: float = 0.25
    data_seed: int = 0
    cache_dir: Optional[str] = None


# --- model ---------------------------------------------------------------------------------
@dataclass
class ModelConfig:
    name: str = MISSING
    # the smallest square image the architecture accepts
    min_image_size: ClassVar[int] = 8


@dataclass
class SimpleCNNConfig(ModelConfig):
    """The notes' Classifier: conv 3->16 k5, ReLU, max-pool 2, fc 3136->128, ReLU, fc."""
    name: str = "simple_cnn"
    min_image_size: ClassVar[int] = 6


@dataclass
class TutorialNetConfig(ModelConfig):
    """The PyTorch CIFAR-10 tutorial's LeNet."""
    name: str = "tutorial_net"
    min_image_size: ClassVar[int] = 16


@dataclass
class ResNet18Config(ModelConfig):
    """torchvision's ResNet-18 with the CIFAR stem (3x3 stride-1 conv, no max-pool)."""
    name: str = "resnet18"


@dataclass
class SpeedNetConfig(ModelConfig):
    """A small fast-converging conv net (airbench-style)."""
    name: str = "speed_net"
    widths: List[int] = field(default_factory=lambda: [64, 128, 256])
    act: str = "gelu"


@dataclass
class Airbench94Config(ModelConfig):
    """airbench94's net: whitened 2x2 first conv, three conv-pool-BN-GELU groups, scaled output."""
    name: str = "airbench94"
    min_image_size: ClassVar[int] = 16
    widths: List[int] = field(default_factory=lambda: [64, 256, 256])
    # share of the old running statistics BatchNorm keeps per step (PyTorch's momentum is 1 - it)
    bn_momentum: float = 0.6
    output_scale: float = 0.1111111111111111
    # the whitening conv's bias trains for this many epochs, then stays
    whiten_bias_epochs: int = 3


# --- optimizer -----------------------------------------------------------------------------
@dataclass
class OptimizerConfig:
    name: str = MISSING
    lr: float = 0.001
    weight_decay: float = 0.0
    # weight decay on normalization weights and biases too (false: only on conv/linear weights)
    decay_norm_and_bias: bool = True
    # learning-rate factor for normalization layers' parameters; their weight decay is divided
    # by it, so the decay per step (lr x weight_decay) stays the same
    norm_lr_scale: float = 1.0


@dataclass
class SGDConfig(OptimizerConfig):
    name: str = "sgd"
    momentum: float = 0.0
    nesterov: bool = False


@dataclass
class AdamConfig(OptimizerConfig):
    name: str = "adam"
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8


@dataclass
class AdamWConfig(AdamConfig):
    name: str = "adamw"
    weight_decay: float = 0.01


# --- scheduler (all advance once per optimizer step) ----------------------------------------
@dataclass
class SchedulerConfig:
    name: str = MISSING
    # linear warmup from 1% of the learning rate over this many epochs, then the schedule
    warmup_epochs: float = 0.0


@dataclass
class ConstantConfig(SchedulerConfig):
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
class TriangleConfig(SchedulerConfig):
    """Piecewise linear per step: start_factor x lr, up to lr at peak_at of the run, down to
    end_factor x lr at its end (airbench's schedule)."""
    name: str = "triangle"
    start_factor: float = 0.2
    peak_at: float = 0.23
    end_factor: float = 0.07


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
    # evaluate (val, test) after every n-th epoch and after the last; early stopping, best
    # checkpoints and Optuna's pruning see only the evaluated epochs
    eval_every_n_epochs: int = 1
    deterministic: bool = False
    compile: bool = False
    # NHWC layout for model and batches: faster for conv nets with BatchNorm on CPU and GPU
    channels_last: bool = False
    # a progress bar on a terminal; a line per quarter epoch otherwise
    progress: bool = True
    label_smoothing: float = 0.0
    # evaluate on each image and its mirror image, averaging the logits
    eval_flip: bool = False
    # test-time augmentation: also average over the images shifted by this many pixels
    # (up-left and down-right, reflected edges); with eval_flip, each shift is flip-averaged too
    eval_translate: int = 0
    # lookahead: every n optimizer steps the weights move to an average of themselves and
    # their slow copy (weight lookahead_decay x (progress)^3 on the slow copy); 0 = off
    lookahead_every: int = 0
    lookahead_decay: float = 0.7737809375
    # stop after this many optimizer steps in all (the last epoch may be partial); 0 = off
    max_steps: int = 0
    # single process, or ddp under torchrun
    strategy: str = "single"
    # BatchNorm statistics over all processes under DDP
    sync_batchnorm: bool = False
    # sum the gradients of this many batches into one optimizer step
    accumulate_grad_batches: int = 1
    # clip the gradient norm to this (0 = off); the norm before clipping is logged
    gradient_clip_val: float = 0.0
    # exponential moving average of the weights, evaluated and saved (0 = off; e.g. 0.999)
    ema_decay: float = 0.0
    # stop after this many epochs without improvement of checkpoint.monitor (0 = off); with
    # eval_every_n_epochs > 1 and a val/test monitor, this many evaluations
    early_stopping_patience: int = 0
    # debugging: train/evaluate on only this many batches per epoch (0 = all) ...
    limit_train_batches: int = 0
    limit_eval_batches: int = 0
    # ... or train on the same first N batches every epoch, to see the loss reach ~0
    overfit_batches: int = 0
    # trace this many training steps with torch.profiler (0 = off)
    profile_steps: int = 0


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
    # CPU, memory (and GPU) use, sampled by MLflow's own monitor this often; 0 turns it off
    system_metrics_every_s: float = 10.0
    # also register the logged model under this name in the Model Registry
    registered_model_name: Optional[str] = None


@dataclass
class CheckpointConfig:
    enabled: bool = True
    every_n_epochs: int = 1
    # 0 disables mid-epoch checkpoints
    every_n_steps: int = 0
    # epoch checkpoints kept beside last.pt and best.pt; 0 keeps none
    keep_last: int = 0
    save_best: bool = True
    # also keep the k best epoch checkpoints by monitor (0 = off)
    save_top_k: int = 0
    # follows the run's objective unless set
    monitor: str = "${objective}"
    mode: str = "max"


@dataclass
class Config:
    dataset: DatasetConfig = MISSING
    model: ModelConfig = MISSING
    optimizer: OptimizerConfig = MISSING
    scheduler: SchedulerConfig = MISSING
    trainer: TrainerConfig = MISSING
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    epochs: int = 1
    seed: int = 0
    # a checkpoint file, a run output dir, or "auto" (this run's dir if it holds one)
    resume: Optional[str] = None
    # the metric @hydra.main returns to a sweeper
    objective: str = "test/acc"


# --- the registry: one entry per option ------------------------------------------------------
@dataclass(frozen=True)
class Option:
    schema: type
    # "module:attribute" of the project function that builds it; None builds nothing
    build: Optional[str]

    @property
    def name(self) -> str:
        return self.schema.name


def _options(*options: Option) -> dict[str, Option]:
    return {o.name: o for o in options}


REGISTRY: dict[str, dict[str, Option]] = {
    "dataset": _options(
        Option(Cifar10Config, "cifar_exp.data:load_torchvision"),
        Option(Cifar100Config, "cifar_exp.data:load_torchvision"),
        Option(ImageFolderConfig, "cifar_exp.data:load_image_folder"),
        Option(SyntheticConfig, "cifar_exp.data:load_synthetic"),
    ),
    "model": _options(
        Option(SimpleCNNConfig, "cifar_exp.models:SimpleCNN"),
        Option(TutorialNetConfig, "cifar_exp.models:TutorialNet"),
        Option(ResNet18Config, "cifar_exp.models:resnet18"),
        Option(SpeedNetConfig, "cifar_exp.models:SpeedNet"),
        Option(Airbench94Config, "cifar_exp.models:Airbench94Net"),
    ),
    "optimizer": _options(
        Option(SGDConfig, "cifar_exp.optim:sgd"),
        Option(AdamConfig, "cifar_exp.optim:adam"),
        Option(AdamWConfig, "cifar_exp.optim:adamw"),
    ),
    "scheduler": _options(
        Option(ConstantConfig, None),
        Option(CosineConfig, "cifar_exp.optim:cosine"),
        Option(OneCycleConfig, "cifar_exp.optim:onecycle"),
        Option(StepConfig, "cifar_exp.optim:step"),
        Option(TriangleConfig, "cifar_exp.optim:triangle"),
    ),
}
BASES = {"dataset": DatasetConfig, "model": ModelConfig, "optimizer": OptimizerConfig,
         "scheduler": SchedulerConfig}
# trainer options share one schema and differ in their defaults
TRAINERS = {"default": TrainerConfig(), "deterministic": TrainerConfig(deterministic=True, amp=False)}


def register(group: str, option: Option) -> None:
    """Add an option to a group: the registry entry and its Hydra group option."""
    if not issubclass(option.schema, BASES[group]):
        raise TypeError(f"{option.schema.__name__} must extend {BASES[group].__name__}")
    REGISTRY[group][option.name] = option
    ConfigStore.instance().store(group=group, name=option.name, node=option.schema)


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=Config)
    for group, options in REGISTRY.items():
        for option in options.values():
            register(group, option)
    for name, node in TRAINERS.items():
        cs.store(group="trainer", name=name, node=node)


def option(group: str, name: str) -> Option:
    try:
        return REGISTRY[group][name]
    except KeyError:
        raise UserError(f"{group}.name={name!r} is not a registered option; expected one of "
                        f"{', '.join(REGISTRY[group])}") from None


def builder(group: str, node: DictConfig) -> Optional[Callable[..., Any]]:
    """The project function that builds the option `node` names (None: nothing to build)."""
    target = option(group, node.name).build
    if target is None:
        return None
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)


def flatten(cfg: DictConfig | dict, prefix: str = "") -> dict[str, Any]:
    """{'optimizer': {'lr': 0.1}} -> {'optimizer.lr': 0.1}; lists stay whole values."""
    items = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    out: dict[str, Any] = {}
    for key, value in items.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def kwargs(node: DictConfig) -> dict[str, Any]:
    """An option's keys as plain keyword arguments (its `name` excluded)."""
    return {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if k != "name"}


def from_stored(stored: dict, origin: str) -> DictConfig:
    """A config read from a file, rebuilt on the registered schemas: every group must name a
    registered option and every key must belong to it, so a file can only describe a run,
    never pick code. Anything else is a UserError naming the key."""
    if not isinstance(stored, dict):
        raise UserError(f"{origin}: the stored config is not a mapping")
    _refuse_targets(stored, origin)
    base = OmegaConf.structured(Config)
    for group in REGISTRY:
        node = stored.get(group)
        name = node.get("name") if isinstance(node, dict) else None
        if name not in REGISTRY[group]:
            raise UserError(f"{origin}: {group}.name={name!r} is not a registered option "
                            f"({', '.join(REGISTRY[group])})")
        base[group] = OmegaConf.structured(REGISTRY[group][name].schema)
    base.trainer = OmegaConf.structured(TrainerConfig)
    try:
        return OmegaConf.merge(base, stored)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        raise UserError(f"{origin}: stored config key {key} is invalid "
                        f"({str(e).splitlines()[0]})") from None


def _refuse_targets(tree: Any, origin: str, path: str = "") -> None:
    if isinstance(tree, dict):
        for key, value in tree.items():
            where = f"{path}{key}"
            if key in ("_target_", "_partial_", "_args_"):
                raise UserError(f"{origin}: refusing {where}={value!r}: a stored config may name "
                                f"registered options only, never code")
            _refuse_targets(value, origin, f"{where}.")
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            _refuse_targets(value, origin, f"{path}{i}.")
    elif isinstance(tree, str) and "${" in tree:  # a resolver would run on reading
        raise UserError(f"{origin}: refusing {path.rstrip('.')}={tree!r}: a stored config holds plain values only")


# --- small key=value tools (evaluate, predict) ---------------------------------------------------
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


DEVICE = re.compile(r"(auto|cpu|mps|cuda(:\d+)?)")
STRATEGIES = ("single", "ddp")
SEED_LIMIT = 2 ** 32  # NumPy's seeds are 32-bit
EPOCH_METRICS = ("train/loss_epoch", "train/acc", "test/loss", "test/acc", "epoch")


def image_size(dataset: DictConfig) -> int:
    """The square size of the dataset's images (CIFAR's are 32)."""
    return dataset.get("image_size", 32)


def logged_metrics(cfg: DictConfig) -> list[str]:
    """The per-epoch metrics a run with this config logs (plus test/acc_class/<class>)."""
    return [*EPOCH_METRICS, *(("val/loss", "val/acc") if cfg.dataset.val_size > 0 else ())]


def _check_metric(cfg: DictConfig, key: str) -> None:
    name = OmegaConf.select(cfg, key)
    known = logged_metrics(cfg)
    ok = name in known or name.startswith("test/acc_class/")
    hint = " (val/* needs dataset.val_size > 0)" if name.startswith("val/") else ""
    _check(ok, key, f"a metric the run logs: {', '.join(known)} or test/acc_class/<class>{hint}", name)


def validate(cfg: DictConfig) -> None:
    """Raise UserError naming the first key whose value is out of range."""
    for group in REGISTRY:
        chosen = option(group, cfg[group].name)
        schema = OmegaConf.get_type(cfg[group])
        if schema not in (dict, None) and schema is not chosen.schema:
            raise UserError(f"{group}.name={chosen.name} does not match the {group} option's keys; "
                            f"choose the option with {group}={chosen.name}")
    _check_dataset(cfg.dataset)
    _check_model(cfg)
    _check_optimizer(cfg.optimizer, cfg.scheduler)
    t, c, m = cfg.trainer, cfg.checkpoint, cfg.mlflow
    _check(cfg.epochs >= 1, "epochs", "an integer >= 1", cfg.epochs)
    _check(0 <= cfg.seed < SEED_LIMIT, "seed", f"an integer in [0, {SEED_LIMIT})", cfg.seed)
    _check_metric(cfg, "objective")
    _check(DEVICE.fullmatch(t.device) is not None, "trainer.device", "auto, cpu, mps, cuda or cuda:<index>",
           t.device)
    _check(t.log_every_n_steps >= 1, "trainer.log_every_n_steps", "an integer >= 1", t.log_every_n_steps)
    _check(t.eval_every_n_epochs >= 1, "trainer.eval_every_n_epochs", "an integer >= 1", t.eval_every_n_epochs)
    _check(0 <= t.label_smoothing < 1, "trainer.label_smoothing", "a float in [0, 1)", t.label_smoothing)
    _check(t.strategy in STRATEGIES, "trainer.strategy", f"one of {', '.join(STRATEGIES)}", t.strategy)
    _check(c.every_n_epochs >= 1, "checkpoint.every_n_epochs", "an integer >= 1", c.every_n_epochs)
    _check(c.every_n_steps >= 0, "checkpoint.every_n_steps", "an integer >= 0", c.every_n_steps)
    _check(c.keep_last >= 0, "checkpoint.keep_last", "an integer >= 0", c.keep_last)
    _check(c.mode in ("min", "max"), "checkpoint.mode", "min or max", c.mode)
    _check(c.save_top_k >= 0, "checkpoint.save_top_k", "an integer >= 0", c.save_top_k)
    _check_metric(cfg, "checkpoint.monitor")
    _check(t.accumulate_grad_batches >= 1, "trainer.accumulate_grad_batches", "an integer >= 1",
           t.accumulate_grad_batches)
    _check(t.gradient_clip_val >= 0, "trainer.gradient_clip_val", "a float >= 0 (0: off)", t.gradient_clip_val)
    _check(0 <= t.ema_decay < 1, "trainer.ema_decay", "a float in [0, 1) (0: off)", t.ema_decay)
    _check(t.eval_translate >= 0, "trainer.eval_translate", "an integer >= 0 (0: off)", t.eval_translate)
    _check(t.lookahead_every >= 0, "trainer.lookahead_every", "an integer >= 0 (0: off)", t.lookahead_every)
    _check(0 <= t.lookahead_decay < 1, "trainer.lookahead_decay", "a float in [0, 1)", t.lookahead_decay)
    for key in ("max_steps", "early_stopping_patience", "limit_train_batches", "limit_eval_batches", "overfit_batches",
                "profile_steps"):
        _check(t[key] >= 0, f"trainer.{key}", "an integer >= 0 (0: off)", t[key])
    _check(not (t.overfit_batches and t.limit_train_batches), "trainer.overfit_batches",
           "0 when trainer.limit_train_batches is set (one or the other)", t.overfit_batches)
    _check(bool(m.experiment_name.strip()), "mlflow.experiment_name", "a non-empty name", m.experiment_name)
    _check(m.flush_every_s > 0, "mlflow.flush_every_s", "a float > 0", m.flush_every_s)
    _check(m.system_metrics_every_s >= 0, "mlflow.system_metrics_every_s", "a float >= 0 (0: off)",
           m.system_metrics_every_s)
    _check(m.registered_model_name is None or bool(m.registered_model_name.strip()),
           "mlflow.registered_model_name", "a non-empty name or null", m.registered_model_name)


def _check_dataset(d: DictConfig) -> None:
    if OmegaConf.is_missing(d, "root"):
        raise UserError(f"dataset.root is required for dataset={d.name} (a directory with train/ and test/)")
    _check(d.batch_size >= 1, "dataset.batch_size", "an integer >= 1", d.batch_size)
    _check(d.eval_batch_size >= 1, "dataset.eval_batch_size", "an integer >= 1", d.eval_batch_size)
    _check(d.val_size >= 0, "dataset.val_size", "an integer >= 0", d.val_size)
    _check(d.crop_padding >= 0, "dataset.crop_padding", "an integer >= 0", d.crop_padding)
    _check(len(d.mean) == 3, "dataset.mean", "a list of 3 floats", list(d.mean))
    _check(len(d.std) == 3 and all(s > 0 for s in d.std), "dataset.std", "3 floats > 0", list(d.std))
    _check(d.cutout >= 0, "dataset.cutout", "an integer >= 0 (0: off)", d.cutout)
    _check(d.mixup_alpha >= 0, "dataset.mixup_alpha", "a float >= 0 (0: off)", d.mixup_alpha)
    _check(d.cutmix_alpha >= 0, "dataset.cutmix_alpha", "a float >= 0 (0: off)", d.cutmix_alpha)
    _check(d.flip in ("random", "alternate"), "dataset.flip", "random or alternate", d.flip)
    _check(d.pad_mode in ("zeros", "reflect"), "dataset.pad_mode", "zeros or reflect", d.pad_mode)
    if "image_size" in d:
        _check(8 <= d.image_size <= 1024, "dataset.image_size", "an integer in [8, 1024]", d.image_size)
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
        _check(d.noise >= 0, "dataset.noise", "a float >= 0", d.noise)
        _check(d.data_seed >= 0, "dataset.data_seed", "an integer >= 0", d.data_seed)


def _check_model(cfg: DictConfig) -> None:
    model, size = cfg.model, image_size(cfg.dataset)
    smallest = option("model", model.name).schema.min_image_size
    _check(size >= smallest, "dataset.image_size", f">= {smallest} for model={model.name}", size)
    if "act" in model:
        _check(model.act in ("gelu", "relu"), "model.act", "gelu or relu", model.act)
    if "widths" in model:
        _check(len(model.widths) >= 1 and all(w >= 2 and w % 2 == 0 for w in model.widths), "model.widths",
               "a non-empty list of even integers >= 2", list(model.widths))
    if "bn_momentum" in model:
        _check(0 <= model.bn_momentum < 1, "model.bn_momentum", "a float in [0, 1)", model.bn_momentum)
        _check(model.output_scale > 0, "model.output_scale", "a float > 0", model.output_scale)
        _check(model.whiten_bias_epochs >= 0, "model.whiten_bias_epochs", "an integer >= 0",
               model.whiten_bias_epochs)


def _check_optimizer(o: DictConfig, s: DictConfig) -> None:
    _check(o.lr > 0, "optimizer.lr", "a float > 0", o.lr)
    _check(o.weight_decay >= 0, "optimizer.weight_decay", "a float >= 0", o.weight_decay)
    if "momentum" in o:
        _check(0 <= o.momentum < 1, "optimizer.momentum", "a float in [0, 1)", o.momentum)
        _check(not o.nesterov or o.momentum > 0, "optimizer.nesterov", "false unless optimizer.momentum > 0",
               o.nesterov)
    if "betas" in o:
        _check(len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas), "optimizer.betas",
               "two floats in [0, 1)", list(o.betas))
        _check(o.eps > 0, "optimizer.eps", "a float > 0", o.eps)
    _check(o.norm_lr_scale > 0, "optimizer.norm_lr_scale", "a float > 0", o.norm_lr_scale)
    _check(s.warmup_epochs >= 0, "scheduler.warmup_epochs", "a float >= 0 (0: off)", s.warmup_epochs)
    if "eta_min" in s:
        _check(0 <= s.eta_min < o.lr, "scheduler.eta_min", "a float in [0, optimizer.lr)", s.eta_min)
    if "max_lr" in s:
        _check(s.max_lr is None or s.max_lr > 0, "scheduler.max_lr", "a float > 0 (or null: optimizer.lr)",
               s.max_lr)
        _check(0 < s.pct_start < 1, "scheduler.pct_start", "a float in (0, 1)", s.pct_start)
    if "peak_at" in s:
        _check(0 <= s.peak_at <= 1, "scheduler.peak_at", "a float in [0, 1]", s.peak_at)
        for key in ("start_factor", "end_factor"):
            _check(s[key] >= 0, f"scheduler.{key}", "a float >= 0", s[key])
    if "gamma" in s:
        _check(s.step_epochs >= 1, "scheduler.step_epochs", "an integer >= 1", s.step_epochs)
        _check(0 < s.gamma <= 1, "scheduler.gamma", "a float in (0, 1]", s.gamma)
