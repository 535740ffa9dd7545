"""Shared pieces of the benchmarks: the data (real CIFAR-10 JPEGs when present, else a
synthetic set of the same size), median/min/max timing, and table printing."""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from cifar_exp.config_dataset import ImageFolderConfig, SyntheticConfig
from cifar_exp.data import Dataset, load_dataset

REAL = Path(os.environ.get("CIFAR10_JPG", "/tmp/cifar10-jpg"))
SHARED_ARCHIVE = Path(__file__).resolve().parents[2] / "shared/data/cifar10-jpg.tar.gz"


def cifar10(cache_dir: str = "data/cache") -> tuple[Dataset, str]:
    """The shared JPEG copy of CIFAR-10 (extracted on first use), else synthetic data of
    the same shape; says which in its second value."""
    if not REAL.is_dir() and SHARED_ARCHIVE.is_file():
        import tarfile

        with tarfile.open(SHARED_ARCHIVE) as tar:
            tar.extractall(REAL.parent, filter="data")
    if REAL.is_dir():
        cfg = ImageFolderConfig(**{"name": "image_folder", "root": str(REAL), "cache_dir": cache_dir})
        return load_dataset(cfg, torch.device("cpu")), f"CIFAR-10 JPEG copy at {REAL}"
    cfg = SyntheticConfig(**{"train_size": 50000, "test_size": 10000})
    return load_dataset(cfg, torch.device("cpu")), "synthetic data of CIFAR-10's size (no real copy found)"


def preset_command(preset: str, *overrides: str, cache_dir: Path) -> list[str]:
    """`python -m cifar_exp experiment=<preset>` on the JPEG copy, without a progress bar."""
    return [
        sys.executable,
        "-m",
        "cifar_exp",
        f"experiment={preset}",
        "dataset=image_folder",
        f"dataset.root={REAL}",
        f"dataset.cache_dir={cache_dir}",
        "trainer.progress=false",
        *overrides,
    ]


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def stats(samples: list[float]) -> dict:
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples)}


def fmt(s: dict, unit: str = "s") -> str:
    return f"{s['median']:.3f} {unit} ({s['min']:.3f}-{s['max']:.3f})"


def header(title: str, data_note: str) -> None:
    print(f"# {title}")
    print(
        f"# machine: {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, cuda={torch.cuda.is_available()}; data: {data_note}"
    )
