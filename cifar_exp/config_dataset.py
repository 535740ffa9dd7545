"""The dataset group's schemas: where the images come from, how they are split, normalized
and augmented. A dataset whose files say its image counts and class names before loading
(an image folder) tells the checks here, so a bad split is refused before any training."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional

from omegaconf import MISSING

from cifar_exp.checks import require, within_half_side
from cifar_exp.settings import AtLeast, Free, InRange, InUnit, NonNegative, OneOf, Within, setting

if TYPE_CHECKING:
    from cifar_exp.config import Config

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
FLIPS, PAD_MODES = ("random", "alternate"), ("zeros", "reflect")


@dataclass
class DatasetConfig:
    name: str = MISSING
    # where the files are, how big an evaluation batch is, where the cache lives: a resume
    # may change these (settings.setting), they do not change what the run computes
    root: str = setting("data", Free(), resume_safe=True)
    batch_size: int = setting(128, AtLeast(1), headline=True)
    eval_batch_size: int = setting(1000, AtLeast(1), resume_safe=True)
    # images held out of the training split (deterministically) as a validation set: a count,
    # or val_fraction, a share of the training images (one or the other), so a preset that
    # holds out data works on every dataset
    val_size: int = setting(0, AtLeast(0))
    val_fraction: float = setting(0.0, InUnit())
    augment: bool = False
    crop_padding: int = setting(4, AtLeast(0))  # and at most half the image side: check()
    # the normalization: 3 floats each (check() says so)
    mean: List[float] = setting([0.5, 0.5, 0.5], Free())
    std: List[float] = setting([0.5, 0.5, 0.5], Free())
    # decoded uint8 tensors are cached here (relative to the launch directory); null disables
    cache_dir: Optional[str] = setting("data/cache", Free(), resume_safe=True)
    # batch augmentations of the training split: a zeroed square of this side (0 = off) ...
    cutout: int = setting(0, AtLeast(0))
    # ... and mixing pairs of images, with Beta(alpha, alpha) weights (0 = off; both on:
    # each batch picks one of the two)
    mixup_alpha: float = setting(0.0, NonNegative())
    cutmix_alpha: float = setting(0.0, NonNegative())
    # training batches: drop the last, partial one of each epoch
    drop_last: bool = False
    # training flips: "random" per image each epoch, or "alternate": a random flip per image
    # drawn once, then every image flipped on odd epochs (each sees both sides equally often)
    flip: str = setting("random", OneOf(FLIPS))
    # the crop's border: "zeros" or "reflect" (mirrored edge pixels)
    pad_mode: str = setting("zeros", OneOf(PAD_MODES))

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
        """The rules between keys (each key's own values: settings.check_values)."""
        require(
            not (self.val_size and self.val_fraction),
            f"{at}.val_fraction",
            f"0 when {at}.val_size is set (one or the other)",
            self.val_fraction,
        )
        require(len(self.mean) == 3, f"{at}.mean", "a list of 3 floats", self.mean)
        require(len(self.std) == 3 and all(s > 0 for s in self.std), f"{at}.std", "3 floats > 0", self.std)
        within_half_side(self, at, self.pixels, "crop_padding", "cutout")


@dataclass
class Cifar10Config(DatasetConfig):
    """torchvision's CIFAR-10, downloaded into root when missing and download=true."""

    name: str = "cifar10"
    download: bool = setting(True, resume_safe=True)

    def class_names(self) -> Optional[list[str]]:
        return CIFAR10_CLASSES


@dataclass
class Cifar100Config(Cifar10Config):
    """torchvision's CIFAR-100 (fine labels)."""

    name: str = "cifar100"
    mean: List[float] = setting([0.5071, 0.4865, 0.4409], Free())
    std: List[float] = setting([0.2673, 0.2564, 0.2762], Free())

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
    root: str = setting(MISSING, Free(), resume_safe=True)
    # images of another size are resized to this square size
    image_size: int = setting(32, InRange(8, 1025))

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
    train_size: int = setting(2000, AtLeast(1))
    test_size: int = setting(500, AtLeast(1))
    num_classes: int = setting(10, AtLeast(2))
    image_size: int = setting(32, InRange(8, 1025))
    noise: float = setting(0.25, Within(0.0))
    data_seed: int = setting(0, AtLeast(0))
    cache_dir: Optional[str] = setting(None, Free(), resume_safe=True)

    @property
    def pixels(self) -> int:
        return self.image_size

    def sizes(self) -> Optional[tuple[int, int]]:
        return self.train_size, self.test_size

    def class_names(self) -> Optional[list[str]]:
        return [f"class{i}" for i in range(self.num_classes)]
