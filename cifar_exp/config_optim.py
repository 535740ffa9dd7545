"""The optimizer and scheduler groups' schemas. Every schedule advances once per optimizer
step; a scheduler's floor is checked against the optimizer's lr."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, List, Optional

from omegaconf import MISSING

from cifar_exp.checks import nesterov_needs_momentum, require
from cifar_exp.settings import AtLeast, Free, InUnit, NonNegative, Positive, Within, setting

if TYPE_CHECKING:
    from cifar_exp.config import Config


@dataclass
class OptimizerConfig:
    name: str = MISSING
    lr: float = setting(0.001, Positive(), headline=True)
    weight_decay: float = setting(0.0, Within(0.0))
    # weight decay on normalization weights and biases too (false: only on conv/linear weights)
    decay_norm_and_bias: bool = True
    # learning-rate factor for normalization layers' parameters; their weight decay is divided
    # by it, so the decay per step (lr x weight_decay) stays the same
    norm_lr_scale: float = setting(1.0, Positive())

    def check(self, at: str, run: Config) -> None:
        """The rules between keys (each key's own values: settings.check_values)."""


@dataclass
class SGDConfig(OptimizerConfig):
    name: str = "sgd"
    momentum: float = setting(0.0, InUnit())
    nesterov: bool = False

    def check(self, at: str, run: Config) -> None:
        nesterov_needs_momentum(self, at, "nesterov", "momentum")


@dataclass
class AdamConfig(OptimizerConfig):
    name: str = "adam"
    betas: List[float] = setting([0.9, 0.999], Free())  # two floats in [0, 1): check() says so
    eps: float = setting(1e-8, Positive())

    def check(self, at: str, run: Config) -> None:
        require(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            f"{at}.betas",
            "two floats in [0, 1)",
            self.betas,
        )


@dataclass
class AdamWConfig(AdamConfig):
    name: str = "adamw"
    weight_decay: float = setting(0.01, Within(0.0))


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
    lr: float = setting(0.24, Positive(), headline=True)
    momentum: float = setting(0.6, InUnit())
    nesterov: bool = True
    # Newton-Schulz iterations, the eps added to the update's norm, and bf16 for them
    # (float32 where the CPU has no bf16 units: emulated bf16 matmuls are slow)
    ns_steps: int = setting(3, AtLeast(1))
    ns_eps: float = setting(1e-7, Positive())
    ns_bf16: bool = True
    aux_lr: float = setting(0.01, Positive())
    bias_lr: float = setting(0.01, Positive())
    aux_momentum: float = setting(0.9, InUnit())
    aux_nesterov: bool = True

    def check(self, at: str, run: Config) -> None:
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
    warmup_epochs: float = setting(0.0, NonNegative())

    def check(self, at: str, run: Config) -> None:
        """The rules between keys (each key's own values: settings.check_values)."""


@dataclass
class ConstantConfig(SchedulerConfig):
    name: str = "none"


@dataclass
class CosineConfig(SchedulerConfig):
    name: str = "cosine"
    eta_min: float = setting(0.0, Within(0.0))  # and below optimizer.lr: check()

    def check(self, at: str, run: Config) -> None:
        require(0 <= self.eta_min < run.optimizer.lr, f"{at}.eta_min", "a float in [0, optimizer.lr)", self.eta_min)


@dataclass
class OneCycleConfig(SchedulerConfig):
    name: str = "onecycle"
    # peak learning rate; null takes optimizer.lr
    max_lr: Optional[float] = setting(None, Positive())
    pct_start: float = setting(0.25, Within(0.0, 1.0, low_closed=False))


@dataclass
class TriangleConfig(SchedulerConfig):
    """Piecewise linear per step: start_factor x lr, up to lr at peak_at of the run, down to
    end_factor x lr at its end (airbench's schedule)."""

    name: str = "triangle"
    start_factor: float = setting(0.2, Within(0.0))
    peak_at: float = setting(0.23, Within(0.0, 1.0, high_closed=True))
    end_factor: float = setting(0.07, Within(0.0))


@dataclass
class StepConfig(SchedulerConfig):
    name: str = "step"
    step_epochs: int = setting(30, AtLeast(1))
    gamma: float = setting(0.1, Within(0.0, 1.0, low_closed=False, high_closed=True))
