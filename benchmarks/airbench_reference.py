"""The reference for `experiment=airbench94`: airbench94's own training code (the `airbench`
package's `train94`, unchanged) on the project's data, the CIFAR-10 JPEG copy.

The images are decoded once (through the project's image-folder cache) and written in the
layout airbench reads, `<work>/cifar10/{train,test}.pt`. On a GPU the package runs as
shipped (fp16 weights, channels_last, CUDA events). On a CPU three shims let the same code
run: float32 instead of fp16 (CPU fp16 convolutions are emulated and slow), a wall-clock
stand-in for CUDA events, and loaders that stay on the CPU. Nothing in the recipe changes.

    python benchmarks/airbench_reference.py --data /tmp/cifar10-jpg --seeds 0 1 2

Prints airbench's own per-epoch table and, per seed, one `result:` line with the final
test accuracy (with its flip+translate TTA) and airbench's own training time.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from pathlib import Path
from unittest import mock

import torch
from omegaconf import OmegaConf
from torch import nn

from cifar_exp.data import load_image_folder
from cifar_exp.loader import Split


def load_jpeg_copy(data: Path):
    """The JPEG copy's train and test splits, decoded through the project's image-folder cache."""
    cfg = OmegaConf.create({"root": str(data), "image_size": 32, "cache_dir": str(data.parent / "cache")})
    return load_image_folder(cfg)


def save_airbench_layout(work: Path, train, test, classes: list[str]) -> None:
    """`<work>/cifar10/{train,test}.pt` as airbench's CifarLoader reads them: NHWC uint8 images."""
    (work / "cifar10").mkdir(parents=True, exist_ok=True)
    for name, split in (("train", train), ("test", test)):
        torch.save(
            {"images": split.x.permute(0, 2, 3, 1).contiguous(), "labels": split.y, "classes": classes},
            work / "cifar10" / f"{name}.pt",
        )


def write_airbench_layout(data: Path, work: Path) -> None:
    """The JPEG copy in airbench's layout.

    The image folder comes class by class, but CIFAR-10's own files (which airbench reads) hold
    the classes mixed, and airbench whitens from `images[:5000]`: written class-sorted, that
    would be 5,000 airplanes. So the training images are written in one fixed shuffled order.
    """
    train, test, classes = load_jpeg_copy(data)
    mixed = torch.randperm(len(train.y), generator=torch.Generator().manual_seed(0))
    save_airbench_layout(work, Split(train.x[mixed], train.y[mixed]), test, classes)


class WallClockEvent:
    """torch.cuda.Event's timing interface, on the wall clock (a CPU runs synchronously)."""

    def __init__(self, enable_timing: bool = True):
        self.t = 0.0

    def record(self) -> None:
        self.t = time.perf_counter()

    def elapsed_time(self, end: WallClockEvent) -> float:
        return 1e3 * (end.t - self.t)


@contextlib.contextmanager
def cpu_shims(utils):
    """Run airbench's CUDA-only code path on the CPU (see the module docstring)."""

    class CpuCifarLoader(utils.CifarLoader):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, gpu="cpu", **kwargs)
            self.images = self.images.float()

    def identity(module, *args, **kwargs):
        return module

    with (
        mock.patch.object(utils, "CifarLoader", CpuCifarLoader),
        mock.patch.object(torch.cuda, "Event", WallClockEvent),
        mock.patch.object(torch.cuda, "synchronize", lambda *a: None),
        mock.patch.object(nn.Module, "half", identity),
        mock.patch.object(nn.Module, "cuda", identity),
    ):
        yield CpuCifarLoader


def run_seed(seed: int, epochs: float, warm_up: bool = False, bf16: bool = False) -> tuple[float, float]:
    """One training run (airbench's `run=-1` is its warm-up: one step, nothing reported),
    with `bf16`, under CPU bf16 autocast (training and evaluation)."""
    from airbench import lib_airbench94 as ab
    from airbench import utils

    final: dict = {}
    report = utils.print_training_details

    def recording_report(variables, is_final_entry):
        if is_final_entry:
            final.update(acc=variables["tta_val_acc"], seconds=variables["total_time_seconds"])
        report(variables, is_final_entry)

    torch.manual_seed(seed)
    shims = contextlib.nullcontext(utils.CifarLoader) if torch.cuda.is_available() else cpu_shims(utils)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)
    with shims as loader_class, mock.patch.object(utils, "print_training_details", recording_report), autocast:
        train_loader = loader_class(
            "cifar10", train=True, batch_size=ab.hyp["opt"]["batch_size"], aug=ab.hyp["aug"], altflip=True
        )
        ab.train94(train_loader, epochs=epochs, make_net=ab.make_net94, run=-1 if warm_up else seed)
    return final.get("acc", 0.0), final.get("seconds", 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("CIFAR10_JPG", "/tmp/cifar10-jpg")))
    parser.add_argument("--work", type=Path, default=Path("/tmp/airbench-reference"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--epochs", type=float, default=9.9, help="airbench94's own: 9.9")
    parser.add_argument(
        "--precision", choices=("float32", "bf16"), default="float32", help="on a CPU: bf16 runs under autocast"
    )
    args = parser.parse_args()
    bf16 = args.precision == "bf16"
    precision = "fp16" if torch.cuda.is_available() else args.precision
    if bf16 and torch.cuda.is_available():
        raise SystemExit("--precision bf16 is for CPU runs: on a GPU airbench runs in its own fp16")
    write_airbench_layout(args.data.resolve(), args.work)
    os.chdir(args.work)  # airbench reads ./cifar10/
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU, {torch.get_num_threads()} threads"
    if torch.cuda.is_available():  # airbench's own protocol: a warm-up (cuDNN autotuning) before timing
        run_seed(0, args.epochs, warm_up=True)
    for seed in args.seeds:
        acc, seconds = run_seed(seed, args.epochs, bf16=bf16)
        print(
            f"result: airbench94 reference seed={seed} epochs={args.epochs} test_acc={acc:.4f} "
            f"train_s={seconds:.1f} device={device} precision={precision}",
            flush=True,
        )


if __name__ == "__main__":
    main()
