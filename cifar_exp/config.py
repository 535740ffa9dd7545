"""The typed config schemas. Each is a dataclass (its keys, types and defaults; an option's
`name` field names it) with a `check` of its own values: a new option brings its rules in
its own class. `check(at, run)` gets the key prefix it sits under and the whole run's typed
config, for rules that read a neighbour (a scheduler's floor below the optimizer's lr, a
model's smallest image). Rules that tie the run together (metrics, periods, memory) live in
cifar_exp.validation; the registry of options in cifar_exp.registry.

Nothing here imports torch: `--help` and config errors stay fast.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Dict, List, Optional, cast

from omegaconf import MISSING, OmegaConf

from cifar_exp.errors import UserError


def _first(objective: Any) -> Any:
    """checkpoint.monitor's default: the objective, or the first of several (an empty list
    stays one, for the objective's own check to name)."""
    return objective if isinstance(objective, str) or not objective else str(objective[0])


OmegaConf.register_new_resolver("cifar_exp.first", _first, replace=True)


def container(node: Any, resolve: bool = True) -> dict[str, Any]:
    """A config node's keys as plain values, resolved unless told (typed: a mapping, as
    every node this project reads as one is)."""
    values = OmegaConf.to_container(node, resolve=resolve)
    assert isinstance(values, dict), type(values)
    return cast(Dict[str, Any], values)


def require(ok: bool, key: str, allowed: str, value: Any) -> None:
    """The one form of a refused value: the key, the value and what it must be."""
    if not ok:
        shown = list(value) if isinstance(value, (list, tuple)) else value
        raise UserError(f"{key}={shown!r} is invalid: must be {allowed}")


def image_size(dataset: Any) -> int:
    """The square side of a dataset config's images (the CIFAR files are 32 px)."""
    return dataset.get("image_size", 32)


def within_half_side(obj: Any, at: str, pixels: int, *keys: str) -> None:
    """Shifts and squares in pixels: at most half the image side, since more leaves mostly
    border or nothing of the image."""
    half = pixels // 2
    for key in keys:
        value = getattr(obj, key)
        allowed = f"an integer in [0, {half}] (half the {pixels} px image side; 0: off)"
        require(0 <= value <= half, f"{at}.{key}", allowed, value)


def at_least(obj: Any, at: str, minimum: int, *keys: str) -> None:
    """Counts and periods: each key an integer >= minimum (0 meaning off, where allowed)."""
    off = " (0: off)" if minimum == 0 else ""
    for key in keys:
        require(getattr(obj, key) >= minimum, f"{at}.{key}", f"an integer >= {minimum}{off}", getattr(obj, key))


def in_unit(obj: Any, at: str, *keys: str) -> None:
    """Shares and decays: each key a float in [0, 1)."""
    for key in keys:
        require(0 <= getattr(obj, key) < 1, f"{at}.{key}", "a float in [0, 1)", getattr(obj, key))


def nesterov_needs_momentum(obj: Any, at: str, nesterov: str, momentum: str) -> None:
    on = getattr(obj, nesterov)
    require(not on or getattr(obj, momentum) > 0, f"{at}.{nesterov}", f"false unless {at}.{momentum} > 0", on)


# --- dataset -------------------------------------------------------------------------------
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
FLIPS, PAD_MODES = ("random", "alternate"), ("zeros", "reflect")


@dataclass
class DatasetConfig:
    name: str = MISSING
    root: str = "data"
    batch_size: int = 128
    eval_batch_size: int = 1000
    # images held out of the training split (deterministically) as a validation set: a count,
    # or val_fraction, a share of the training images (one or the other), so a preset that
    # holds out data works on every dataset
    val_size: int = 0
    val_fraction: float = 0.0
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

    # the square side of the images (the CIFAR files are 32 px)
    @property
    def pixels(self) -> int:
        return 32

    def sizes(self) -> Optional[tuple[int, int]]:
        """(train, test) image counts, known before loading; None where only loading tells."""
        return 50_000, 10_000

    def class_names(self) -> Optional[list[str]]:
        """The class names, where known before loading (None: checked once loaded)."""
        return None

    def check_paths(self, at: str) -> None:
        """Rules about files on this machine, left out for a stored config read elsewhere."""

    def val_count(self, train_images: int) -> int:
        return self.val_size or round(self.val_fraction * train_images)

    def check(self, at: str, run: Config) -> None:
        at_least(self, at, 1, "batch_size", "eval_batch_size")
        at_least(self, at, 0, "val_size", "cutout")
        require(0 <= self.val_fraction < 1, f"{at}.val_fraction", "a float in [0, 1) (0: off)", self.val_fraction)
        require(
            not (self.val_size and self.val_fraction),
            f"{at}.val_fraction",
            f"0 when {at}.val_size is set (one or the other)",
            self.val_fraction,
        )
        require(len(self.mean) == 3, f"{at}.mean", "a list of 3 floats", self.mean)
        require(len(self.std) == 3 and all(s > 0 for s in self.std), f"{at}.std", "3 floats > 0", self.std)
        for key in ("mixup_alpha", "cutmix_alpha"):
            require(getattr(self, key) >= 0, f"{at}.{key}", "a float >= 0 (0: off)", getattr(self, key))
        require(self.flip in FLIPS, f"{at}.flip", " or ".join(FLIPS), self.flip)
        require(self.pad_mode in PAD_MODES, f"{at}.pad_mode", " or ".join(PAD_MODES), self.pad_mode)
        within_half_side(self, at, self.pixels, "crop_padding", "cutout")


@dataclass
class Cifar10Config(DatasetConfig):
    """torchvision's CIFAR-10, downloaded into root when missing and download=true."""

    name: str = "cifar10"
    download: bool = True

    def class_names(self) -> Optional[list[str]]:
        return CIFAR10_CLASSES


@dataclass
class Cifar100Config(Cifar10Config):
    """torchvision's CIFAR-100 (fine labels)."""

    name: str = "cifar100"
    mean: List[float] = field(default_factory=lambda: [0.5071, 0.4865, 0.4409])
    std: List[float] = field(default_factory=lambda: [0.2673, 0.2564, 0.2762])

    def class_names(self) -> Optional[list[str]]:
        return None  # read from the dataset's files, which only loading opens


def _image_count(root: Path) -> int:
    return sum(
        1
        for d in root.iterdir()
        if d.is_dir()
        for f in os.scandir(d)
        if os.path.splitext(f.name)[1].lower() in IMAGE_SUFFIXES
    )


@dataclass
class ImageFolderConfig(DatasetConfig):
    """Any root/train/<class>/* + root/test/<class>/* tree of images."""

    name: str = "image_folder"
    root: str = MISSING
    # images of another size are resized to this square size
    image_size: int = 32

    @property
    def pixels(self) -> int:
        return self.image_size

    def _split(self, split: str) -> Path:
        return Path(self.root).expanduser() / split

    def sizes(self) -> Optional[tuple[int, int]]:
        if not (self._split("train").is_dir() and self._split("test").is_dir()):
            return None
        return _image_count(self._split("train")), _image_count(self._split("test"))

    def class_names(self) -> Optional[list[str]]:
        train = self._split("train")
        return sorted(p.name for p in train.iterdir() if p.is_dir()) if train.is_dir() else None

    def check(self, at: str, run: Config) -> None:
        require(8 <= self.image_size <= 1024, f"{at}.image_size", "an integer in [8, 1024]", self.image_size)
        super().check(at, run)

    def check_paths(self, at: str) -> None:
        root = Path(self.root).expanduser()
        require(root.is_dir(), f"{at}.root", "an existing directory with train/ and test/", self.root)
        for split in ("train", "test"):
            require(
                self._split(split).is_dir(),
                f"{at}.root",
                f"a directory holding {split}/<class>/<images> (no {self._split(split)})",
                self.root,
            )


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

    @property
    def pixels(self) -> int:
        return self.image_size

    def sizes(self) -> Optional[tuple[int, int]]:
        return self.train_size, self.test_size

    def class_names(self) -> Optional[list[str]]:
        return [f"class{i}" for i in range(self.num_classes)]

    def check(self, at: str, run: Config) -> None:
        require(8 <= self.image_size <= 1024, f"{at}.image_size", "an integer in [8, 1024]", self.image_size)
        super().check(at, run)
        at_least(self, at, 1, "train_size", "test_size")
        at_least(self, at, 2, "num_classes")
        at_least(self, at, 0, "data_seed")
        require(self.noise >= 0, f"{at}.noise", "a float >= 0", self.noise)


# --- model ---------------------------------------------------------------------------------
ACTIVATIONS = ("gelu", "relu")


@dataclass
class ModelConfig:
    name: str = MISSING
    # the smallest square image the architecture accepts
    min_image_size: ClassVar[int] = 8

    def smallest_image(self) -> int:
        return self.min_image_size

    def check(self, at: str, run: Config) -> None:
        smallest, size = self.smallest_image(), run.dataset.pixels
        require(size >= smallest, "dataset.image_size", f">= {smallest} for model={self.name}", size)


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


def _check_widths(widths: List[int], at: str) -> None:
    require(
        len(widths) >= 1 and all(w >= 2 and w % 2 == 0 for w in widths),
        f"{at}.widths",
        "a non-empty list of even integers >= 2",
        widths,
    )


@dataclass
class SpeedNetConfig(ModelConfig):
    """A small fast-converging conv net (airbench-style)."""

    name: str = "speed_net"
    widths: List[int] = field(default_factory=lambda: [64, 128, 256])
    act: str = "gelu"

    def smallest_image(self) -> int:
        return max(self.min_image_size, 2 ** len(self.widths))  # each width halves the map

    def check(self, at: str, run: Config) -> None:
        _check_widths(self.widths, at)
        require(self.act in ACTIVATIONS, f"{at}.act", " or ".join(ACTIVATIONS), self.act)
        super().check(at, run)


WHITEN_BIAS_INITS = ("zeros", "pytorch")


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
    # its initial value: zeros (airbench94) or pytorch (a conv's default, airbench94_muon)
    whiten_bias_init: str = "zeros"
    # null: PyTorch's init for the head; a float: its initial weights rescaled to this std
    head_init_std: Optional[float] = None

    def smallest_image(self) -> int:
        # the unpadded 2x2 whitening conv takes a pixel, then each group halves the map
        return max(self.min_image_size, 2 ** len(self.widths) + 1)

    def check(self, at: str, run: Config) -> None:
        _check_widths(self.widths, at)
        in_unit(self, at, "bn_momentum")
        require(self.output_scale > 0, f"{at}.output_scale", "a float > 0", self.output_scale)
        at_least(self, at, 0, "whiten_bias_epochs")
        require(
            self.whiten_bias_init in WHITEN_BIAS_INITS,
            f"{at}.whiten_bias_init",
            " or ".join(WHITEN_BIAS_INITS),
            self.whiten_bias_init,
        )
        require(
            self.head_init_std is None or self.head_init_std > 0,
            f"{at}.head_init_std",
            "a float > 0 (or null: PyTorch's init)",
            self.head_init_std,
        )
        super().check(at, run)


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

    def check(self, at: str, run: Config) -> None:
        require(self.lr > 0, f"{at}.lr", "a float > 0", self.lr)
        require(self.weight_decay >= 0, f"{at}.weight_decay", "a float >= 0", self.weight_decay)
        require(self.norm_lr_scale > 0, f"{at}.norm_lr_scale", "a float > 0", self.norm_lr_scale)


@dataclass
class SGDConfig(OptimizerConfig):
    name: str = "sgd"
    momentum: float = 0.0
    nesterov: bool = False

    def check(self, at: str, run: Config) -> None:
        super().check(at, run)
        in_unit(self, at, "momentum")
        nesterov_needs_momentum(self, at, "nesterov", "momentum")


@dataclass
class AdamConfig(OptimizerConfig):
    name: str = "adam"
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8

    def check(self, at: str, run: Config) -> None:
        super().check(at, run)
        require(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            f"{at}.betas",
            "two floats in [0, 1)",
            self.betas,
        )
        require(self.eps > 0, f"{at}.eps", "a float > 0", self.eps)


@dataclass
class AdamWConfig(AdamConfig):
    name: str = "adamw"
    weight_decay: float = 0.01


@dataclass
class MuonConfig(OptimizerConfig):
    """Muon (orthogonalized momentum, weight-normalized filters) on conv filters, Nesterov SGD
    on the rest (airbench94_muon's split). lr and momentum are Muon's; the SGD side has its
    own: aux_lr for the other weights (a head), bias_lr for biases and norm shifts, whose
    weight decay is scaled so that lr x weight_decay is the same on the whole SGD side. The
    filters take no weight decay: their norm is reset before every step."""

    name: str = "muon"
    lr: float = 0.24
    momentum: float = 0.6
    nesterov: bool = True
    # Newton-Schulz iterations, the eps added to the update's norm, and bf16 for them
    # (float32 where the CPU has no bf16 units: emulated bf16 matmuls are slow)
    ns_steps: int = 3
    ns_eps: float = 1e-7
    ns_bf16: bool = True
    aux_lr: float = 0.01
    bias_lr: float = 0.01
    aux_momentum: float = 0.9
    aux_nesterov: bool = True

    def check(self, at: str, run: Config) -> None:
        super().check(at, run)
        in_unit(self, at, "momentum", "aux_momentum")
        at_least(self, at, 1, "ns_steps")
        for key in ("ns_eps", "aux_lr", "bias_lr"):
            require(getattr(self, key) > 0, f"{at}.{key}", "a float > 0", getattr(self, key))
        require(
            self.norm_lr_scale == 1.0,
            f"{at}.norm_lr_scale",
            f"1.0 ({at}.bias_lr sets norm shifts' rate)",
            self.norm_lr_scale,
        )
        nesterov_needs_momentum(self, at, "nesterov", "momentum")
        nesterov_needs_momentum(self, at, "aux_nesterov", "aux_momentum")


# --- scheduler (all advance once per optimizer step) ----------------------------------------
@dataclass
class SchedulerConfig:
    name: str = MISSING
    # linear warmup from 1% of the learning rate over this many epochs, then the schedule
    warmup_epochs: float = 0.0

    def check(self, at: str, run: Config) -> None:
        require(self.warmup_epochs >= 0, f"{at}.warmup_epochs", "a float >= 0 (0: off)", self.warmup_epochs)


@dataclass
class ConstantConfig(SchedulerConfig):
    name: str = "none"


@dataclass
class CosineConfig(SchedulerConfig):
    name: str = "cosine"
    eta_min: float = 0.0

    def check(self, at: str, run: Config) -> None:
        super().check(at, run)
        require(0 <= self.eta_min < run.optimizer.lr, f"{at}.eta_min", "a float in [0, optimizer.lr)", self.eta_min)


@dataclass
class OneCycleConfig(SchedulerConfig):
    name: str = "onecycle"
    # peak learning rate; null takes optimizer.lr
    max_lr: Optional[float] = None
    pct_start: float = 0.25

    def check(self, at: str, run: Config) -> None:
        super().check(at, run)
        require(
            self.max_lr is None or self.max_lr > 0, f"{at}.max_lr", "a float > 0 (or null: optimizer.lr)", self.max_lr
        )
        require(0 < self.pct_start < 1, f"{at}.pct_start", "a float in (0, 1)", self.pct_start)


@dataclass
class TriangleConfig(SchedulerConfig):
    """Piecewise linear per step: start_factor x lr, up to lr at peak_at of the run, down to
    end_factor x lr at its end (airbench's schedule)."""

    name: str = "triangle"
    start_factor: float = 0.2
    peak_at: float = 0.23
    end_factor: float = 0.07

    def check(self, at: str, run: Config) -> None:
        super().check(at, run)
        require(0 <= self.peak_at <= 1, f"{at}.peak_at", "a float in [0, 1]", self.peak_at)
        for key in ("start_factor", "end_factor"):
            require(getattr(self, key) >= 0, f"{at}.{key}", "a float >= 0", getattr(self, key))


@dataclass
class StepConfig(SchedulerConfig):
    name: str = "step"
    step_epochs: int = 30
    gamma: float = 0.1

    def check(self, at: str, run: Config) -> None:
        super().check(at, run)
        at_least(self, at, 1, "step_epochs")
        require(0 < self.gamma <= 1, f"{at}.gamma", "a float in (0, 1]", self.gamma)


# --- trainer, tracking, checkpoints -------------------------------------------------------------
DEVICE = re.compile(r"(auto|cpu|mps|cuda(:\d+)?)")
STRATEGIES = ("single", "ddp")


@dataclass
class TrainerConfig:
    name: str = "default"
    # auto picks cuda, then mps, then cpu
    device: str = "auto"
    # autocast: auto (on for CUDA and for CPUs with native bf16, off elsewhere and under
    # deterministic), true (forced; refused where the device has no such units), false
    amp: str = "auto"
    log_every_n_steps: int = 50
    # evaluate (val, test) after every n-th epoch and after the last; early stopping, best
    # checkpoints and Optuna's pruning see only the evaluated epochs
    eval_every_n_epochs: int = 1
    deterministic: bool = False
    # torch.compile: auto (on CUDA; off on CPU, where inductor measured slower here), true, false
    compile: str = "false"
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
    # the test-time views (eval_flip, eval_translate) in every evaluation; false: only in the
    # last epoch's and the run-end evaluation, since they multiply evaluation's cost by up to 6
    tta_every_eval: bool = False
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

    def check(self, at: str, run: Config) -> None:
        require(
            DEVICE.fullmatch(self.device) is not None,
            f"{at}.device",
            "auto, cpu, mps, cuda or cuda:<index>",
            self.device,
        )
        at_least(self, at, 1, "log_every_n_steps", "eval_every_n_epochs", "accumulate_grad_batches")
        at_least(
            self,
            at,
            0,
            "eval_translate",
            "lookahead_every",
            "max_steps",
            "early_stopping_patience",
            "limit_train_batches",
            "limit_eval_batches",
            "overfit_batches",
            "profile_steps",
        )
        in_unit(self, at, "label_smoothing", "ema_decay", "lookahead_decay")
        for key in ("amp", "compile"):
            value = getattr(self, key)
            require(str(value).lower() in ("auto", "true", "false"), f"{at}.{key}", "auto, true or false", value)
        require(self.strategy in STRATEGIES, f"{at}.strategy", f"one of {', '.join(STRATEGIES)}", self.strategy)
        require(
            not self.sync_batchnorm or self.strategy == "ddp",
            f"{at}.sync_batchnorm",
            f"false unless {at}.strategy=ddp (it syncs statistics across processes)",
            self.sync_batchnorm,
        )
        require(self.gradient_clip_val >= 0, f"{at}.gradient_clip_val", "a float >= 0 (0: off)", self.gradient_clip_val)
        require(
            not (self.overfit_batches and self.limit_train_batches),
            f"{at}.overfit_batches",
            f"0 when {at}.limit_train_batches is set (one or the other)",
            self.overfit_batches,
        )
        within_half_side(self, at, run.dataset.pixels, "eval_translate")


@dataclass
class DeterministicTrainerConfig(TrainerConfig):
    """Bit-reproducible runs: deterministic kernels and float32 (no autocast)."""

    name: str = "deterministic"
    deterministic: bool = True
    amp: str = "false"


# MLflow's registered-model names: no '/' or ':', and a name that stays itself as a path
MODEL_NAME_FORBIDDEN = ("/", ":")


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

    def check(self, at: str, run: Config) -> None:
        from cifar_exp.tracking.keys import MAX_KEY

        require(bool(self.experiment_name.strip()), f"{at}.experiment_name", "a non-empty name", self.experiment_name)
        for key in self.tags:
            require(
                not key.startswith("mlflow."),
                f"{at}.tags.{key}",
                f"a tag of your own: MLflow's mlflow.* tags are the run's (the name is {at}.run_name)",
                self.tags[key],
            )
            require(
                len(key) <= MAX_KEY,
                f"{at}.tags",
                f"keys of at most {MAX_KEY} characters (MLflow's limit)",
                key[:57] + "...",
            )
        require(self.flush_every_s > 0, f"{at}.flush_every_s", "a float > 0", self.flush_every_s)
        require(
            self.system_metrics_every_s >= 0,
            f"{at}.system_metrics_every_s",
            "a float >= 0 (0: off)",
            self.system_metrics_every_s,
        )
        name = self.registered_model_name
        if name is not None:
            plain = name.strip() and not any(c in name for c in MODEL_NAME_FORBIDDEN)
            require(
                bool(plain) and os.path.normpath(name) == name and not name.startswith("."),
                f"{at}.registered_model_name",
                "a non-empty name without '/', ':' or a leading '.' (or null)",
                name,
            )
            require(
                self.log_model,
                f"{at}.registered_model_name",
                f"null when {at}.log_model=false (only a logged model can be registered)",
                name,
            )


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
    # follows the run's objective (the first of several) unless set
    monitor: str = "${cifar_exp.first:${objective}}"
    # null: derived from the monitored metric (a loss is minimized, an accuracy maximized);
    # set, it must agree
    mode: Optional[str] = None

    def check(self, at: str, run: Config) -> None:
        at_least(self, at, 1, "every_n_epochs")
        at_least(self, at, 0, "every_n_steps", "keep_last", "save_top_k")
        require(
            self.mode in (None, "min", "max"), f"{at}.mode", "min, max or null (derived from the metric)", self.mode
        )


SEED_LIMIT = 2**32  # NumPy's seeds are 32-bit


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
    # the metric @hydra.main returns to a sweeper, or a list of them for a multi-objective
    # search: objective=[val/acc,model/params]
    objective: Any = "test/acc"

    GROUPS: ClassVar[tuple[str, ...]] = (
        "dataset",
        "model",
        "optimizer",
        "scheduler",
        "trainer",
        "mlflow",
        "checkpoint",
    )

    def check(self) -> None:
        """Every group's own rules, in the order a reader meets them, then the run's keys."""
        for group in self.GROUPS:
            getattr(self, group).check(group, self)
        require(self.epochs >= 1, "epochs", "an integer >= 1", self.epochs)
        require(0 <= self.seed < SEED_LIMIT, "seed", f"an integer in [0, {SEED_LIMIT})", self.seed)


def trainer_settings(node: Any) -> TrainerConfig:
    """The trainer group's node as its schema's dataclass: typed, and read at every step
    without OmegaConf's per-access cost."""
    return TrainerConfig(**container(node))
