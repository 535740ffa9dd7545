"""How close experiment=airbench94's training step comes to the machine: its achieved FLOP/s
against the bf16 (and float32) matmul peak measured on the same threads, side by side in one
process (the two steps alternated).

    python benchmarks/flops.py [--reps 5] [--batch 1024]

The step's FLOPs are counted by torch's FlopCounterMode (matmuls and convolutions, forward
and backward); the peak is the best of square matmuls of a few sizes. The ratio says how
much of the physical limit the step leaves unused (memory-bound layers, BatchNorm, the
optimizer and the framework's own work are all in the step's time).
"""

from __future__ import annotations

import argparse
import functools

import torch
from common import header, stats, timed
from hydra import compose, initialize_config_module
from torch.utils.flop_counter import FlopCounterMode

from cifar_exp.data import Dataset
from cifar_exp.distributed import World
from cifar_exp.loader import Normalize, Split
from cifar_exp.registry import register_configs
from cifar_exp.run import build_trainer

SIZES = (1024, 2048, 4096)


def matmul_peak(dtype: torch.dtype, reps: int) -> tuple[float, int]:
    """The best FLOP/s of an n x n matmul over SIZES, and the n that reached it."""
    best = (0.0, 0)
    for n in SIZES:
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        torch.mm(a, b)  # warm-up: the kernel choice and the first touch of the pages
        seconds = min(timed(functools.partial(torch.mm, a, b)) for _ in range(reps))
        best = max(best, (2 * n**3 / seconds, n))
    return best


def airbench_trainer(amp: str, batch: int):
    register_configs()
    with initialize_config_module("cifar_exp.conf", version_base="1.3"):
        cfg = compose(
            "config",
            ["experiment=airbench94", "dataset=synthetic", f"trainer.amp={amp}", "trainer.compile=false"],
        )
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch * 2, 3, 32, 32), dtype=torch.uint8, generator=g)
    split = Split(images, torch.randint(0, 10, (batch * 2,), generator=g))
    normalize = Normalize([0.5] * 3, [0.25] * 3, torch.device("cpu"))
    data = Dataset(split, split, None, [str(i) for i in range(10)], normalize)
    trainer = build_trainer(cfg, data, 100, torch.device("cpu"), World())
    x = normalize(images[:batch]).contiguous(memory_format=torch.channels_last)
    return trainer, x, split.y[:batch]


def one_step(trainer, x, y) -> None:
    trainer.step(x, y)
    trainer.meter.pop_window()  # the loss read back, as logging does


def step_flops(trainer, x, y) -> int:
    """The FLOPs of one step (it is also the warm-up)."""
    with FlopCounterMode(display=False) as counter:
        trainer.step(x, y)
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=1024)
    args = parser.parse_args()
    header(f"airbench94 training step (batch {args.batch}) against the matmul peak", "random images")
    sides = {"bf16 autocast": ("true", torch.bfloat16), "float32": ("false", torch.float32)}
    steps, times, rows = {}, {name: [] for name in sides}, []
    for name, (amp, _) in sides.items():
        trainer, x, y = airbench_trainer(amp, args.batch)
        trainer.begin_epoch(0, 0)
        steps[name] = (step_flops(trainer, x, y), functools.partial(one_step, trainer, x, y))
    for _ in range(args.reps):  # alternated, so a busy moment costs both sides
        for name, (_, step) in steps.items():
            times[name].append(timed(step))
    for name, (_, dtype) in sides.items():
        peak, n = matmul_peak(dtype, args.reps)
        seconds = stats(times[name])["median"]
        rows.append((name, peak, n, steps[name][0], seconds, steps[name][0] / seconds))
    print("| precision | matmul peak | step FLOPs | step time | achieved | of peak |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, peak, n, flops, seconds, achieved in rows:
        print(
            f"| {name} | {peak / 1e9:.0f} GFLOP/s (n={n}) | {flops / 1e9:.1f} G | {seconds:.3f} s "
            f"| {achieved / 1e9:.0f} GFLOP/s | {100 * achieved / peak:.0f} % |"
        )
    print(f"# bf16 step speed-up over float32: {rows[1][4] / rows[0][4]:.2f}x")


if __name__ == "__main__":
    main()
