"""Batches of a device-resident split: normalized and augmented as whole-batch tensor ops.
An epoch's order and every augmentation draw come from (seed, epoch) alone, so any step of
any epoch can be replayed exactly."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F

from cifar_exp.config_dataset import DatasetConfig
from cifar_exp.steps import batches_per_epoch

log = logging.getLogger("cifar_exp")

CACHE_VERSION = 2  # 2: each cache says what it was built from
CIFAR_ARCHIVES = {"cifar10": "cifar-10-python.tar.gz", "cifar100": "cifar-100-python.tar.gz"}


@dataclass
class Split:
    x: torch.Tensor  # uint8 [N, 3, H, W]
    y: torch.Tensor  # int64 [N]

    def __len__(self) -> int:
        return len(self.y)

    def to(self, device: torch.device) -> Split:
        return Split(self.x.to(device), self.y.to(device))


class Normalize:
    """uint8 images -> float model inputs: (x / 255 - mean) / std, in the batch layout the
    model expects. Its constants live on one device, the one its images come from."""

    def __init__(self, mean, std, device: torch.device, channels_last: bool = False):
        std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self.scale, self.shift = 1.0 / (255.0 * std_t), -mean_t / std_t
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # in place on the fresh float copy: about twice as fast as a broadcasting addcmul on CPU
        x = x.float().mul_(self.scale).add_(self.shift)
        return x.contiguous(memory_format=self.memory_format)


@dataclass(frozen=True)
class Sampling:
    """Which images each batch of an epoch holds: the order (shuffled from (seed, epoch)),
    whether a partial last batch is dropped, this process's share, the debugging limits."""

    shuffle: bool = False
    seed: int = 0
    drop_last: bool = False
    # with several processes each takes every world_size-th image of each (global) batch
    rank: int = 0
    world_size: int = 1
    # debugging: only the first `limit` batches; `same_batches` repeats epoch 0's every epoch
    limit: int = 0
    same_batches: bool = False


@dataclass(frozen=True)
class Augmentation:
    """What training does to a batch: a random crop of the padded image and a flip (`crop`;
    `alternate`: one flip per image for the run, all mirrored on odd epochs), cutout, and
    MixUp/CutMix with soft targets over `num_classes`. The default does nothing."""

    crop: bool = False
    padding: int = 4
    pad_mode: str = "zeros"
    flip: str = "random"
    cutout: int = 0
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    num_classes: int = 0

    @classmethod
    def of(cls, dataset: DatasetConfig, num_classes: int) -> Augmentation:
        """The training augmentation the dataset schema's keys ask for."""
        return cls(
            crop=dataset.augment,
            padding=dataset.crop_padding,
            pad_mode=dataset.pad_mode,
            flip=dataset.flip,
            cutout=dataset.cutout,
            mixup_alpha=dataset.mixup_alpha,
            cutmix_alpha=dataset.cutmix_alpha,
            num_classes=num_classes,
        )

    @property
    def mixing(self) -> bool:
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0


def pad_images(x: torch.Tensor, p: int, mode: str) -> torch.Tensor:
    """`x` with a border of p pixels: zeros, or its edge mirrored (by indexing, so any dtype
    on any device)."""
    if mode == "zeros":
        return F.pad(x, (p, p, p, p))
    h, w = x.shape[2:]
    rows = (h - 1) - ((h - 1) - torch.arange(-p, h + p, device=x.device).abs()).abs()
    cols = (w - 1) - ((w - 1) - torch.arange(-p, w + p, device=x.device).abs()).abs()
    return x.index_select(2, rows).index_select(3, cols)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


class TensorLoader:
    """Batches of a device-resident uint8 split, normalized and (for training) augmented as
    whole-batch tensor ops: a random crop of a zero-padded image plus a horizontal flip,
    cutout, and MixUp/CutMix with soft targets. Every random draw of an epoch is made up
    front from (seed, epoch), so any step of any epoch replays exactly."""

    def __init__(
        self,
        split: Split,
        batch_size: int,
        normalize: Normalize,
        sampling: Sampling = Sampling(),
        augmentation: Augmentation = Augmentation(),
    ):
        self.split, self.batch_size, self.normalize = split, batch_size, normalize
        self.sampling, self.aug = sampling, augmentation
        p = augmentation.padding if augmentation.crop else 0
        self.padded = pad_images(split.x, p, augmentation.pad_mode) if p else split.x

    def __len__(self) -> int:
        return batches_per_epoch(len(self.split), self.batch_size, self.sampling.drop_last, self.sampling.limit)

    def _crop_flip(self, idx: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
        h, w = self.split.x.shape[2:]
        dev = idx.device
        rows = offsets[:, :1] + torch.arange(h, device=dev)
        cols = offsets[:, 1:] + torch.arange(w, device=dev)
        x = self.padded[
            idx[:, None, None, None],
            torch.arange(3, device=dev)[None, :, None, None],
            rows[:, None, :, None],
            cols[:, None, None, :],
        ]
        return torch.where(flips[:, None, None, None], x.flip(3), x)

    def _cutout(self, x: torch.Tensor, corners: torch.Tensor) -> torch.Tensor:
        """Zero (the mean colour, after normalization) a size x size square per image; the
        square may hang over the edge, as in the original cutout."""
        h, w = x.shape[2:]
        dev = x.device
        r = torch.arange(h, device=dev)[None, :, None] - corners[:, 0, None, None]
        c = torch.arange(w, device=dev)[None, None, :] - corners[:, 1, None, None]
        size = self.aug.cutout
        inside = (r >= 0) & (r < size) & (c >= 0) & (c < size)
        return x.masked_fill(inside[:, None], 0.0)

    def _mix_plan(self, g: torch.Generator, n: int) -> dict:
        """Per batch: CutMix or MixUp, its Beta(alpha, alpha) weight and the box's centre;
        per image a key that picks its partner within the batch."""
        import numpy as np

        rng = np.random.default_rng(int(torch.randint(2**62, (1,), generator=g)))
        steps = batches_per_epoch(n, self.batch_size, drop_last=False)  # every batch a plan, the last partial one too
        mixup_alpha, cutmix_alpha = self.aug.mixup_alpha, self.aug.cutmix_alpha
        share = 0.5 if mixup_alpha and cutmix_alpha else (1.0 if cutmix_alpha else 0.0)
        cutmix = rng.random(steps) < share
        lam = np.where(
            cutmix,
            rng.beta(max(cutmix_alpha, 1e-9), max(cutmix_alpha, 1e-9), steps),
            rng.beta(max(mixup_alpha, 1e-9), max(mixup_alpha, 1e-9), steps),
        )
        return {"cutmix": cutmix, "lam": lam, "centre": rng.random((steps, 2)), "keys": torch.rand(n, generator=g)}

    def _mix(self, x: torch.Tensor, y: torch.Tensor, plan: dict, step: int, sl: slice):
        """The batch mixed with a permutation of itself, and its soft targets."""
        partner = torch.argsort(plan["keys"][sl]).to(x.device)
        lam = float(plan["lam"][step])
        if plan["cutmix"][step]:
            h, w = x.shape[2:]
            cut_h, cut_w = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
            cy, cx = (int(v) for v in plan["centre"][step] * (h, w))
            y1, y2 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, h)
            x1, x2 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, w)
            x = x.clone()
            x[:, :, y1:y2, x1:x2] = x[partner, :, y1:y2, x1:x2]
            lam = 1 - (y2 - y1) * (x2 - x1) / (h * w)  # the share of the image that is its own
        else:
            x = x * lam + x[partner] * (1 - lam)
        one_hot = F.one_hot(y, self.aug.num_classes).float()
        return x, one_hot * lam + one_hot[partner] * (1 - lam)

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of `epoch` from `start_step` on; the same every time it is called.
        Targets are class indices, or class weights [B, classes] when batches are mixed."""
        n, dev, s, aug = len(self.split), self.split.x.device, self.sampling, self.aug
        g = epoch_generator(s.seed, 0 if s.same_batches else epoch)
        order = torch.randperm(n, generator=g) if s.shuffle else torch.arange(n)
        if aug.crop:
            # offsets and flips are drawn per position in this epoch's order
            offsets = torch.randint(0, 2 * aug.padding + 1, (n, 2), generator=g).to(dev)
            flips = torch.rand(n, generator=g) < 0.5
            if aug.flip == "alternate":  # one draw per image for the whole run, all mirrored on odd epochs
                once = torch.rand(n, generator=epoch_generator(s.seed, -1)) < 0.5
                flips = once[order] ^ (epoch % 2 == 1)  # looked up by image, not by position
            flips = flips.to(dev)
        order = order.to(dev)
        if aug.cutout:
            h, w = self.split.x.shape[2:]
            corners = (torch.rand(n, 2, generator=g) * torch.tensor([h, w]) - aug.cutout / 2).floor().long().to(dev)
        plan = self._mix_plan(g, n) if aug.mixing else None
        for step in range(start_step, len(self)):
            sl = slice(step * self.batch_size, (step + 1) * self.batch_size)
            idx = order[sl][s.rank :: s.world_size]
            sl = slice(sl.start + s.rank, sl.stop, s.world_size)
            # index_select, not x[idx]: several times faster on CPU for a batch of rows
            x = self._crop_flip(idx, offsets[sl], flips[sl]) if aug.crop else self.split.x.index_select(0, idx)
            x, y = self.normalize(x), self.split.y.index_select(0, idx)
            if aug.cutout:
                x = self._cutout(x, corners[sl])
            if plan is not None:
                x, y = self._mix(x, y, plan, step, sl)
            yield x, y
