"""Test-only models, importable by runs launched from the tests (tests/ is on PYTHONPATH)."""

import torch

from cifar_exp.models import SimpleCNN


class ExplodingCNN(SimpleCNN):
    """SimpleCNN that raises on its 5th training forward pass."""

    def __init__(self, num_classes: int = 10):
        super().__init__(num_classes)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.calls += 1
            if self.calls == 5:
                raise RuntimeError("boom at step 5")
        return super().forward(x)


class SlowCNN(SimpleCNN):
    """SimpleCNN that sleeps in each training step, so a test can signal it mid-epoch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            import time

            time.sleep(0.05)
        return super().forward(x)
