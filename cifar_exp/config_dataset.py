"""The dataset group's schemas: where the images come from, how they are split, normalized
and augmented. A dataset whose files say its image counts and class names before loading
(an image folder) tells the checks here, so a bad split is refused before any training."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional

from omegaconf import MISSING

from cifar_exp.checks import at_least, require, within_half_side
from cifar_exp.settings import setting

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
    root: str = setting("data", resume_safe=True)
    batch_size: int = setting(128, headline=True)
    eval_batch_size: int = setting(1000, resume_safe=True)
    # images held out of the training split (deterministically) as a validation set: a count,
    # or val_fraction, a share of the training images (one or the other), so a preset that
    # holds out data works on every dataset
    val_size: int = 0
    val_fraction: float = 0.0
    augment: bool = False
    crop_padding: int = 4
    mean: List[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    std: List[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    # decoded uint8 tensors are cached here (relative to the launch directory); null disables
    cache_dir: Optional[str] = setting("data/cache", resume_safe=True)
    # batch augmentations of the training split: a zeroed square of this side (0 = off) ...
    cutout: int = 0
    # ... and mixing pairs of images, with Beta(alpha, alpha) weights (0 = off; both on:
    # each batch picks one of the two)
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    # training batches: drop the last, partial one of each epoch
    drop_last: bool = False
    # training flips: "random" per image each epoch, or "alternate": a random flip per image
    # drawn once, then every image flipped on odd epochs (each sees both sides equally often)
    flip: str = "random"
    # the crop's border: "zeros" or "reflect" (mirrored edge pixels)
    pad_mode: str = "zeros"

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
        at_least(self, at, 1, "batch_size", "eval_batch_size")
        at_least(self, at, 0, "val_size", "cutout")
        require(0 <= self.val_fraction < 1, f"{at}.val_fraction", "a float in [0, 1) (0: off)", self.val_fraction)
        require(
            not (self.val_size and self.val_fraction),
            f"{at}.val_fraction",
            f"0 when {at}.val_size is set (one or the other)",
            self.val_fraction,
        )
        require(len(self.mean) == 3, f"{at}.mean", "a list of 3 floats", self.mean)
        require(len(self.std) == 3 and all(s > 0 for s in self.std), f"{at}.std", "3 floats > 0", self.std)
        for key in ("mixup_alpha", "cutmix_alpha"):
            require(getattr(self, key) >= 0, f"{at}.{key}", "a float >= 0 (0: off)", getattr(self, key))
        require(self.flip in FLIPS, f"{at}.flip", " or ".join(FLIPS), self.flip)
        require(self.pad_mode in PAD_MODES, f"{at}.pad_mode", " or ".join(PAD_MODES), self.pad_mode)
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
    mean: List[float] = field(default_factory=lambda: [0.5071, 0.4865, 0.4409])
    std: List[float] = field(default_factory=lambda: [0.2673, 0.2564, 0.2762])

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
    root: str = setting(MISSING, resume_safe=True)
    # images of another size are resized to this square size
    image_size: int = 32

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

    def check(self, at: str, run: Config) -> None:
        require(8 <= self.image_size <= 1024, f"{at}.image_size", "an integer in [8, 1024]", self.image_size)
        super().check(at, run)

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
    train_size: int = 2000
    test_size: int = 500
    num_classes: int = 10
    image_size: int = 32
    noise: float = 0.25
    data_seed: int = 0
    cache_dir: Optional[str] = setting(None, resume_safe=True)

    @property
    def pixels(self) -> int:
        return self.image_size

    def sizes(self) -> Optional[tuple[int, int]]:
        return self.train_size, self.test_size

    def class_names(self) -> Optional[list[str]]:
        return [f"class{i}" for i in range(self.num_classes)]

    def check(self, at: str, run: Config) -> None:
        require(8 <= self.image_size <= 1024, f"{at}.image_size", "an integer in [8, 1024]", self.image_size)
        super().check(at, run)
        at_least(self, at, 1, "train_size", "test_size")
        at_least(self, at, 2, "num_classes")
        at_least(self, at, 0, "data_seed")
        require(self.noise >= 0, f"{at}.noise", "a float >= 0", self.noise)
