"""Test-only models, registered as options of the model group (model=exploding_cnn,
model=slow_cnn) for runs launched through `python -m testing_cli` (tests/ is on PYTHONPATH)."""

from dataclasses import dataclass

import torch

from cifar_exp.config import ModelConfig, Option, register
from cifar_exp.models import SimpleCNN


class ExplodingCNN(SimpleCNN):
    """SimpleCNN that raises on its 5th training forward pass."""

    def __init__(self, num_classes: int = 10, image_size: int = 32):
        super().__init__(num_classes, image_size)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.calls += 1
            if self.calls == 5:
                raise RuntimeError("boom at step 5")
        return super().forward(x)


class SlowCNN(SimpleCNN):
    """SimpleCNN that sleeps in each training step, so a test can signal it mid-epoch."""

    seconds = 0.05

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            import time

            time.sleep(self.seconds)
        return super().forward(x)


class SleepyCNN(SlowCNN):
    """A step of a whole second: two signals sent a moment apart land in the same step."""

    seconds = 1.0


@dataclass
class ExplodingCNNConfig(ModelConfig):
    name: str = "exploding_cnn"


@dataclass
class SlowCNNConfig(ModelConfig):
    name: str = "slow_cnn"


register("model", Option(ExplodingCNNConfig, "helpers:ExplodingCNN"))
@dataclass
class SleepyCNNConfig(ModelConfig):
    name: str = "sleepy_cnn"


register("model", Option(SlowCNNConfig, "helpers:SlowCNN"))
register("model", Option(SleepyCNNConfig, "helpers:SleepyCNN"))
