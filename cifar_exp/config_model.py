"""The model group's schemas: each architecture's keys and the smallest image it takes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, List, Optional

from omegaconf import MISSING

from cifar_exp.checks import require
from cifar_exp.settings import AtLeast, Free, InUnit, OneOf, Positive, setting

if TYPE_CHECKING:
    from cifar_exp.config import Config

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
    widths: List[int] = setting([64, 128, 256], Free())  # even integers >= 2: check()
    act: str = setting("gelu", OneOf(ACTIVATIONS))

    def smallest_image(self) -> int:
        return max(self.min_image_size, 2 ** len(self.widths))  # each width halves the map

    def check(self, at: str, run: Config) -> None:
        _check_widths(self.widths, at)
        super().check(at, run)


WHITEN_BIAS_INITS = ("zeros", "pytorch")


@dataclass
class Airbench94Config(ModelConfig):
    """airbench94's net: whitened 2x2 first conv, three conv-pool-BN-GELU groups, scaled output."""

    name: str = "airbench94"
    min_image_size: ClassVar[int] = 16
    widths: List[int] = setting([64, 256, 256], Free())  # even integers >= 2: check()
    # share of the old running statistics BatchNorm keeps per step (PyTorch's momentum is 1 - it)
    bn_momentum: float = setting(0.6, InUnit())
    output_scale: float = setting(0.1111111111111111, Positive())
    # the whitening conv's bias trains for this many epochs, then stays
    whiten_bias_epochs: int = setting(3, AtLeast(0))
    # its initial value: zeros (airbench94) or pytorch (a conv's default, airbench94_muon)
    whiten_bias_init: str = setting("zeros", OneOf(WHITEN_BIAS_INITS))
    # null: PyTorch's init for the head; a float: its initial weights rescaled to this std
    head_init_std: Optional[float] = setting(None, Positive())

    def smallest_image(self) -> int:
        # the unpadded 2x2 whitening conv takes a pixel, then each group halves the map
        return max(self.min_image_size, 2 ** len(self.widths) + 1)

    def check(self, at: str, run: Config) -> None:
        _check_widths(self.widths, at)
        super().check(at, run)
