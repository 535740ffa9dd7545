"""The trained network as a client of the logged model calls it, and what the model says
about itself: images in as they are decoded, the normalization inside, the class order."""

from __future__ import annotations

import torch
from torch import nn

from cifar_exp.loader import Normalize


class Served(nn.Module):
    """uint8 RGB images (N, 3, H, W), 0-255 as a PNG or JPEG decodes them, normalized inside
    with the very constants and operations of training; one logit per class out."""

    scale: torch.Tensor
    shift: torch.Tensor

    def __init__(self, net: nn.Module, normalize: Normalize):
        super().__init__()
        self.net = net
        self.register_buffer("scale", normalize.scale.detach().cpu().clone())
        self.register_buffer("shift", normalize.shift.detach().cpu().clone())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images.float().mul(self.scale).add(self.shift))


def describe(classes: list[str], mean: list[float], std: list[float], size: int, trained: str) -> tuple[str, dict]:
    """The model's description and metadata: what goes in, what comes out, in which order."""
    metadata = {
        "classes": list(classes),
        "input": f"uint8 RGB images, shape (N, 3, {size}, {size}), values 0-255 (channels first)",
        "output": f"float32 logits, shape (N, {len(classes)}), one per class in the order of `classes`",
        "normalization": {"mean": list(mean), "std": list(std), "applied": "inside the model"},
    }
    description = "\n".join(
        [
            f"Takes {metadata['input']}: a decoded PNG or JPEG transposed from HWC to CHW. "
            f"Normalizes them inside the model as in training ((x / 255 - mean) / std, mean {list(mean)}, "
            f"std {list(std)}).",
            "",
            f"Returns {metadata['output']}: {', '.join(f'{i} {c}' for i, c in enumerate(classes))}. "
            "The class names are also in the model's metadata (`classes`).",
            "",
            trained,
        ]
    )
    return description, metadata
