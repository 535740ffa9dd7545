"""Datasets as tensors: each split is decoded once to uint8 [N,3,H,W] + int64 [N] and moved
to the training device once. The sources (torchvision's archives, an image folder with its
decoded cache, generated images) and the held-out split; batching is loader.py's."""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

from cifar_exp.config_dataset import IMAGE_SUFFIXES, Cifar10Config, DatasetConfig, ImageFolderConfig, SyntheticConfig
from cifar_exp.errors import UserError, reason
from cifar_exp.loader import Augmentation, Normalize, Sampling, Split, TensorLoader
from cifar_exp.registry import builder

log = logging.getLogger("cifar_exp")

CACHE_VERSION = 2  # 2: each cache says what it was built from
CIFAR_ARCHIVES = {"cifar10": "cifar-10-python.tar.gz", "cifar100": "cifar-100-python.tar.gz"}


@dataclass
class Dataset:
    """All splits of a run on one device, with the one normalization of its images.
    Training, evaluation and plots all read these tensors; nothing keeps a second copy."""

    train: Split
    test: Split
    val: Optional[Split]
    classes: list[str]
    normalize: Normalize

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def device(self) -> torch.device:
        return self.train.x.device

    def loader(
        self, split: str, batch_size: int, sampling: Sampling = Sampling(), augmentation: Augmentation = Augmentation()
    ) -> TensorLoader:
        return TensorLoader(getattr(self, split), batch_size, self.normalize, sampling, augmentation)

    @functools.cached_property
    def digests(self) -> dict[str, str]:
        """Each split's content digest, of the decoded tensors themselves (computed once)."""
        out = {}
        for context in ("train", "val", "test"):
            split = getattr(self, context)
            if split is not None:
                digest = hashlib.blake2b(digest_size=8)
                for t in (split.x, split.y):
                    digest.update(t.cpu().contiguous().numpy())
                out[context] = digest.hexdigest()
        return out

    def lineage(self, cfg: DatasetConfig) -> list[dict]:
        """Each split's name, source, content digest and size: what the tracker records as
        the run's inputs."""
        generated = cfg.name == "synthetic"
        source = (
            f"generated (data_seed={getattr(cfg, 'data_seed', None)})"
            if generated
            else str(Path(cfg.root).expanduser().resolve())
        )
        kind = "generated" if generated else "local" if cfg.name == "image_folder" else "torchvision"
        out = []
        for context, digest in self.digests.items():
            split = getattr(self, context)
            out.append(
                {
                    "context": context,
                    "name": f"{cfg.name}/{context}",
                    "digest": digest,
                    "source": source,
                    "source_type": kind,
                    "profile": {
                        "num_images": len(split),
                        "num_classes": self.num_classes,
                        "image_shape": list(split.x.shape[1:]),
                    },
                }
            )
        return out


# --- sources ------------------------------------------------------------------------------
def _torchvision_split(cfg: Cifar10Config, train: bool):
    import torchvision

    cls = {"cifar10": torchvision.datasets.CIFAR10, "cifar100": torchvision.datasets.CIFAR100}[cfg.name]
    try:
        return cls(root=cfg.root, train=train, download=cfg.download)
    except (OSError, RuntimeError) as e:
        archive = Path(cfg.root) / CIFAR_ARCHIVES[cfg.name]
        why = reason(e)
        raise UserError(
            f"cannot load {cfg.name} from {cfg.root}/ ({why}). Offline? Put "
            f"{CIFAR_ARCHIVES[cfg.name]} at {archive}, or use dataset=image_folder "
            f"dataset.root=<dir with train/ and test/>, or dataset=synthetic"
        ) from None


def load_torchvision(cfg: Cifar10Config) -> tuple[Split, Split, list[str]]:
    splits = []
    for train in (True, False):
        ds = _torchvision_split(cfg, train)
        x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
        splits.append(Split(x, torch.tensor(ds.targets, dtype=torch.int64)))
    return splits[0], splits[1], list(ds.classes)


def _image_files(root: Path) -> dict[str, list[Path]]:
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise UserError(f"dataset.root: {root} has no class folders (expected {root}/<class>/<images>)")
    return {c: sorted(p for p in (root / c).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) for c in classes}


def decode_image(path: Path, size: int):
    import numpy as np
    from PIL import Image

    try:
        with Image.open(path) as f:
            im = f.convert("RGB")
            if im.size != (size, size):
                im = im.resize((size, size), Image.Resampling.BILINEAR)
            return np.asarray(im)
    except Exception as e:  # OSError, PIL's DecompressionBombError, a broken decoder
        raise UserError(f"cannot read image {path}: {e}") from None


def _decode_folder(root: Path, classes: list[str], size: int) -> Split:
    import numpy as np

    files = _image_files(root)
    unknown = sorted(set(files) - set(classes))
    if unknown:
        raise UserError(f"dataset.root: {root} has classes not in train/: {', '.join(unknown)}")
    paths = [p for c in classes for p in files.get(c, [])]
    labels = [i for i, c in enumerate(classes) for _ in files.get(c, [])]
    if not paths:
        raise UserError(f"dataset.root: no images under {root}")
    # PIL releases the GIL while decoding, so threads use every core.
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        arrays = list(pool.map(lambda p: decode_image(p, size), paths, chunksize=256))
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return Split(x, torch.tensor(labels, dtype=torch.int64))


def _folder_signature(root: Path) -> str:
    """Changes when any image file under root is added, removed, resized or touched."""
    h = hashlib.sha256(f"{CACHE_VERSION}:{root.resolve()}".encode())
    for dirpath, dirnames, filenames in sorted(os.walk(root)):
        dirnames.sort()
        for name in sorted(filenames):
            st = os.stat(os.path.join(dirpath, name))
            h.update(f"{dirpath}/{name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def _read_cache(path: Path, built_from: dict) -> Optional[tuple[Split, Split, list[str]]]:
    """The cached splits, or None (with a line) when the file is not a sound cache of what
    `built_from` says (source, image size, class list): a cache is data, checked on read."""
    from cifar_exp.durable import digest

    try:
        blob = torch.load(path, weights_only=True)
        if blob.get("sha256") != digest({k: v for k, v in blob.items() if k != "sha256"}):
            raise ValueError("its contents do not match its checksum (changed in place, or built before checksums)")
        train, test, classes = Split(*blob["train"]), Split(*blob["test"]), list(blob["classes"])
        if blob.get("built_from") != built_from:
            raise ValueError(f"it was built from {blob.get('built_from')}, not {built_from}")
        size = built_from["image_size"]
        for split in (train, test):
            ok = (
                split.x.dtype == torch.uint8
                and split.x.dim() == 4
                and split.x.shape[1:] == (3, size, size)
                and split.y.dtype == torch.int64
                and len(split.x) == len(split.y)
                and 0 <= int(split.y.min())
                and int(split.y.max()) < len(classes)
            )
            if not ok:
                raise ValueError("unexpected tensors")
        if classes != built_from["classes"]:
            raise ValueError("other class names")
        return train, test, classes
    except Exception as e:  # truncated, garbage, foreign or stale: rebuilt below
        log.warning("warning: decoded-image cache %s is unusable (%s); decoding the images again", path, reason(e, 160))
        return None


def _write_cache(splits: tuple[Split, Split, list[str]], built_from: dict, path: Path) -> None:
    """The cache saves the next run's decoding; a run goes on without it, saying why."""
    from cifar_exp.durable import atomic_save, digest

    train, test, classes = splits
    blob = {"train": [train.x, train.y], "test": [test.x, test.y], "classes": classes, "built_from": built_from}
    try:
        atomic_save({**blob, "sha256": digest(blob)}, path)
    except OSError as e:
        log.warning(
            "warning: cannot write the decoded-image cache %s (%s); the run goes on without it (set "
            "dataset.cache_dir elsewhere, or null)",
            path,
            e.strerror or e,
        )


def load_image_folder(cfg: ImageFolderConfig) -> tuple[Split, Split, list[str]]:
    root = Path(cfg.root).expanduser()
    classes = list(_image_files(root / "train"))
    built_from = {
        "source": str(root.resolve()),
        "image_size": cfg.image_size,
        "classes": classes,
        "version": CACHE_VERSION,
    }
    cache = None
    if cfg.cache_dir:
        key = f"image_folder-{_folder_signature(root)}-{cfg.image_size}px.pt"
        cache = Path(cfg.cache_dir) / key
        cached = _read_cache(cache, built_from) if cache.exists() else None
        if cached is not None:
            return cached
    splits = (
        _decode_folder(root / "train", classes, cfg.image_size),
        _decode_folder(root / "test", classes, cfg.image_size),
        classes,
    )
    if cache is not None:
        _write_cache(splits, built_from, cache)
    return splits


def _synthetic_split(cfg: SyntheticConfig, n: int, g: torch.Generator, prototypes: torch.Tensor) -> Split:
    """Each image is its class's smooth colour pattern, shifted, rescaled and noisy."""
    size = cfg.image_size
    y = torch.randint(0, cfg.num_classes, (n,), generator=g)
    shifts = torch.randint(-3, 4, (n, 2), generator=g)
    brightness = 0.7 + 0.6 * torch.rand(n, 1, 1, 1, generator=g)
    x = prototypes[y]
    rows = (torch.arange(size)[None, :] + shifts[:, :1]) % size
    cols = (torch.arange(size)[None, :] + shifts[:, 1:]) % size
    x = x[
        torch.arange(n)[:, None, None, None],
        torch.arange(3)[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]
    x = x * brightness + cfg.noise * torch.randn(x.shape, generator=g)
    return Split((x.clamp(0, 1) * 255).round().to(torch.uint8), y)


def load_synthetic(cfg: SyntheticConfig) -> tuple[Split, Split, list[str]]:
    g = torch.Generator().manual_seed(cfg.data_seed)
    coarse = torch.rand(cfg.num_classes, 3, 4, 4, generator=g)
    prototypes = F.interpolate(coarse, size=(cfg.image_size,) * 2, mode="bicubic", align_corners=False)
    prototypes = prototypes.clamp(0, 1)
    train = _synthetic_split(cfg, cfg.train_size, g, prototypes)
    test = _synthetic_split(cfg, cfg.test_size, g, prototypes)
    return train, test, [f"class{i}" for i in range(cfg.num_classes)]


def _hold_out(train: Split, val_size: int) -> tuple[Split, Optional[Split]]:
    """A fixed validation split, the same for every seed so runs compare on equal terms."""
    if val_size == 0:
        return train, None
    if val_size >= len(train):
        raise UserError(f"dataset.val_size={val_size} must be smaller than the {len(train)} training images")
    perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
    keep, held = perm[:-val_size].sort().values, perm[-val_size:].sort().values
    return Split(train.x[keep], train.y[keep]), Split(train.x[held], train.y[held])


def load_dataset(cfg: DatasetConfig, device: torch.device, channels_last: bool = False) -> Dataset:
    """The configured dataset (a registered source, see config.REGISTRY), moved to `device`
    once: the CPU copy is not kept."""
    train, test, classes = builder("dataset", cfg)(cfg)
    train, val = _hold_out(train, cfg.val_count(len(train)))
    return Dataset(
        train.to(device),
        test.to(device),
        val.to(device) if val is not None else None,
        classes,
        Normalize(cfg.mean, cfg.std, device, channels_last),
    )
