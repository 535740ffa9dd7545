"""The optimizer and scheduler groups' schemas. Every schedule advances once per optimizer
step; a scheduler's floor is checked against the optimizer's lr."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, List, Optional

from omegaconf import MISSING

from cifar_exp.checks import at_least, in_unit, nesterov_needs_momentum, require
from cifar_exp.settings import InUnit, Positive, setting

if TYPE_CHECKING:
    from cifar_exp.config import Config


@dataclass
class OptimizerConfig:
    name: str = MISSING
    lr: float = setting(0.001, headline=True)
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
class RMSpropConfig(OptimizerConfig):
    """torch's RMSprop: each gradient divided by a running root mean square of its past."""

    name: str = "rmsprop"
    # the running average's decay, and the momentum on top of the scaled step
    alpha: float = setting(0.99, InUnit())
    momentum: float = setting(0.0, InUnit())
    eps: float = setting(1e-8, Positive())
    # scale by the variance (the mean squared gradient less its mean squared) instead
    centered: bool = False


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
