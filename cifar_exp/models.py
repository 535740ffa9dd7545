"""The registered classifiers for 32x32 RGB images; each takes num_classes from the dataset."""

from __future__ import annotations

from typing import Optional, Sequence, cast

import torch
from torch import nn

from cifar_exp.config_model import ModelConfig
from cifar_exp.registry import builder, kwargs


def build_model(cfg: ModelConfig, num_classes: int, image_size: int = 32) -> nn.Module:
    """The registered model `cfg.name` (see registry.REGISTRY) for `num_classes` classes and
    square images of `image_size` pixels."""
    return builder("model", cfg)(num_classes=num_classes, image_size=image_size, **kwargs(cfg))


class SimpleCNN(nn.Module):
    """The notes' Classifier, layer for layer (16 * 14 * 14 inputs to fc1 at 32 pixels; the
    head follows the image size)."""

    def __init__(self, num_classes: int = 10, image_size: int = 32):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, kernel_size=5)
        self.pool = nn.MaxPool2d(2)
        side = (image_size - 4) // 2
        self.fc1 = nn.Linear(16 * side * side, 128)
        self.fc2 = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.conv(x)))
        x = torch.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc2(x)


class TutorialNet(nn.Module):
    """The PyTorch CIFAR-10 tutorial's LeNet-style network (16 * 5 * 5 inputs to fc1 at 32
    pixels; the head follows the image size)."""

    def __init__(self, num_classes: int = 10, image_size: int = 32):
        super().__init__()
        side = ((image_size - 4) // 2 - 4) // 2
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(16 * side * side, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)


def resnet18(num_classes: int = 10, image_size: int = 32) -> nn.Module:
    """torchvision's ResNet-18 with the CIFAR stem: 3x3 stride-1 conv, no max-pool (any image
    size: it ends in global average pooling)."""
    from torchvision.models import resnet18 as tv_resnet18

    model = tv_resnet18(num_classes=num_classes)
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU}


def _conv_bn(c_in: int, c_out: int, act: str) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        ACTIVATIONS[act](),
    )


class SpeedNet(nn.Module):
    """A small fast-converging VGG-style net (after the airbench family): three blocks of
    two conv-BN-activation layers with a max-pool each, then global max-pool and a linear
    head. ReLU is cheaper than GELU on CPU (GELU and its gradient take ~16% of a step)."""

    def __init__(
        self, num_classes: int = 10, widths: Sequence[int] = (64, 128, 256), act: str = "gelu", image_size: int = 32
    ):  # any size >= 8: it ends in global max pooling
        super().__init__()
        layers: list[nn.Module] = [_conv_bn(3, widths[0] // 2, act)]
        c_in = widths[0] // 2
        for w in widths:
            layers += [_conv_bn(c_in, w, act), nn.MaxPool2d(2), _conv_bn(w, w, act)]
            c_in = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, num_classes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return self.head(torch.amax(x, dim=(2, 3)))


class _FrozenScaleBatchNorm(nn.BatchNorm2d):
    """airbench's BatchNorm: a learned shift only (the scale stays 1: the next conv can
    absorb it), a tiny eps, and `momentum` in airbench's sense (the running statistics keep
    this share of their old value: PyTorch's momentum is 1 - it)."""

    def __init__(self, channels: int, momentum: float):
        super().__init__(channels, eps=1e-12, momentum=1 - momentum)
        self.weight.requires_grad = False


def _dirac_conv(c_in: int, c_out: int) -> nn.Conv2d:
    """A 3x3 conv whose first c_in filters start as the identity, so each block starts close
    to passing its input on (airbench's initialization)."""
    conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
    nn.init.dirac_(conv.weight.data[:c_in])
    return conv


class _ConvGroup(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, bn_momentum: float):
        super().__init__(
            _dirac_conv(c_in, c_out),
            nn.MaxPool2d(2),
            _FrozenScaleBatchNorm(c_out, bn_momentum),
            nn.GELU(),
            _dirac_conv(c_out, c_out),
            _FrozenScaleBatchNorm(c_out, bn_momentum),
            nn.GELU(),
        )


class Airbench94Net(nn.Module):
    """airbench94's network: a 2x2 conv that whitens image patches (its weights computed
    from the training images, then frozen; its bias trained for `whiten_bias_epochs`),
    three conv groups, a 3x3 max-pool, a linear head and a fixed output scale.

    The whitening conv maps each 2x2x3 patch onto the eigenvectors of the patches'
    covariance, divided by the square root of their eigenvalues, and keeps both signs of
    each (24 channels): the first layer's inputs start decorrelated and of unit variance,
    which is what lets the rest train at a high learning rate from the first step."""

    WHITEN_KERNEL = 2

    def __init__(
        self,
        num_classes: int = 10,
        widths: Sequence[int] = (64, 256, 256),
        bn_momentum: float = 0.6,
        output_scale: float = 1 / 9,
        whiten_bias_epochs: int = 3,
        whiten_bias_init: str = "zeros",
        head_init_std: Optional[float] = None,
        image_size: int = 32,
    ):
        super().__init__()
        k = self.WHITEN_KERNEL
        self.whiten = nn.Conv2d(3, 2 * 3 * k * k, k, padding=0, bias=True)
        self.whiten.weight.requires_grad = False
        if whiten_bias_init == "zeros":  # else PyTorch's conv init, uniform in +-1/sqrt(12)
            nn.init.zeros_(self.whiten_bias)
        c_in, groups = self.whiten.out_channels, []
        for w in widths:
            groups.append(_ConvGroup(c_in, w, bn_momentum))
            c_in = w
        self.features = nn.Sequential(nn.GELU(), *groups)
        self.head = nn.Linear(c_in, num_classes, bias=False)
        if head_init_std is not None:
            with torch.no_grad():
                self.head.weight.mul_(head_init_std / self.head.weight.std())
        self.output_scale, self.whiten_bias_epochs = output_scale, whiten_bias_epochs

    def init_from_data(self, images: torch.Tensor, eps: float = 5e-4) -> None:
        """Whitening weights from the 2x2 patches of `images` (normalized, N x 3 x H x W)."""
        k = self.WHITEN_KERNEL
        patches = images.float().unfold(2, k, 1).unfold(3, k, 1).transpose(1, 3).reshape(-1, 3 * k * k)
        covariance = patches.T @ patches / len(patches)
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance, UPLO="U")
        # largest eigenvalue first; rows are the filters, shaped as conv kernels
        filters = (eigenvectors.T.flip(0) / torch.sqrt(eigenvalues.flip(0) + eps)[:, None]).reshape(-1, 3, k, k)
        with torch.no_grad():
            self.whiten.weight.copy_(torch.cat([filters, -filters]).to(self.whiten.weight))

    def begin_epoch(self, epoch: int) -> None:
        """The whitening bias trains for the first epochs only (a parameter without a
        gradient is skipped by the optimizer, momentum and weight decay included)."""
        self.whiten_bias.requires_grad = epoch < self.whiten_bias_epochs

    def limited_params(self) -> list[tuple[nn.Parameter, int]]:
        """The parameters that train for fewer epochs than the run, with their epochs."""
        return [(self.whiten_bias, self.whiten_bias_epochs)]

    @property
    def whiten_bias(self) -> nn.Parameter:
        return cast(nn.Parameter, self.whiten.bias)  # built with bias=True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(self.whiten(x))
        # 32 px: a 3x3 map here, so this is airbench's 3x3 max-pool. A max-pool, not amax: at a
        # tie (flat image regions through the near-identity convs make some) a max-pool's
        # gradient goes to one position and amax's is split; on real images that alone moved
        # the convs' gradients 0.5 %
        return self.head(nn.functional.adaptive_max_pool2d(x, 1).flatten(1)) * self.output_scale
