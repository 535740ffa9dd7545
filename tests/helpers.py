"""Shared test helpers: composing the real config in process (as a run or as a sweep), and
test-only models, registered as options of the model group (model=exploding_cnn,
model=slow_cnn) for runs launched through `python -m testing_cli` (tests/ is on PYTHONPATH)."""

from dataclasses import dataclass
from unittest import mock

import torch
from hydra import compose, initialize_config_module
from torch import nn

from cifar_exp.config import ModelConfig
from cifar_exp.models import SimpleCNN
from cifar_exp.registry import Option, register, register_configs


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


def compose_cfg(*overrides: str):
    """The project's config composed as `python -m cifar_exp overrides` would."""
    register_configs()
    with initialize_config_module("cifar_exp.conf", version_base="1.3"):
        return compose("config", overrides=list(overrides))


def check_sweep_of(*overrides: str) -> None:
    """The checks `python -m cifar_exp --multirun overrides` runs before its first job."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    import cifar_exp.__main__  # noqa: F401  (the project's sweeper plugin on the path)
    from cifar_exp.sweep_check import check_sweep

    register_configs()
    with initialize_config_module("cifar_exp.conf", version_base="1.3"):
        cfg = GlobalHydra.instance().hydra.compose_config(
            "config", list(overrides), run_mode=RunMode.MULTIRUN, with_log_configuration=False
        )
        check_sweep(cfg, "config")


def smooth_images(n: int = 64, seed: int = 1) -> torch.Tensor:
    """Smooth random images: neighbouring pixels and channels correlate, as in photographs."""
    noise = torch.randn(n, 3, 34, 34, generator=torch.Generator().manual_seed(seed))
    mixed = torch.einsum("ij,njhw->nihw", torch.tensor([[1.0, 0.5, 0.2], [0.5, 1.0, 0.5], [0.2, 0.5, 1.0]]), noise)
    return nn.functional.avg_pool2d(mixed, 3, stride=1)


def airbench_net(widths: tuple[int, int, int] = (64, 256, 256)) -> nn.Module:
    """The `airbench` package's make_net94 on the CPU in float32 and NCHW (it calls
    .half().cuda() and makes channels_last)."""
    from airbench import lib_airbench94 as ab

    def identity(module, *args, **kwargs):
        return module

    with mock.patch.object(nn.Module, "half", identity), mock.patch.object(nn.Module, "cuda", identity):
        net = ab.make_net94(widths=dict(zip(("block1", "block2", "block3"), widths)))
    return net.to(memory_format=torch.contiguous_format)
