"""trainer.compile=true on CPU for experiment=speed_net_cpu's model and step: torch.compile's
warm-up cost (its first steps, compilation included) and the steady-state step time against
eager, measured side by side in one process (blocks of steps, alternated).

    python benchmarks/compile_cpu.py [--reps 5] [--steps 5]

The epoch-time ratio is the step-time ratio: an epoch is 98 such steps (50,000 images,
batch 512) and the loader adds the same to both.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from common import header
from omegaconf import OmegaConf

from cifar_exp.config_model import SpeedNetConfig
from cifar_exp.config_optim import SGDConfig
from cifar_exp.loop import Trainer
from cifar_exp.models import build_model
from cifar_exp.optim import build_optimizer

PRESET = {"widths": [32, 64, 128]}  # experiment=speed_net_cpu
OPTIMIZER = {"lr": 0.4, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4, "decay_norm_and_bias": False}
BATCH = 512
STEPS_PER_EPOCH = 98


def trainer(compiled: bool) -> Trainer:
    torch.manual_seed(0)
    model = build_model(OmegaConf.merge(OmegaConf.structured(SpeedNetConfig), PRESET), 10)
    model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(OmegaConf.merge(OmegaConf.structured(SGDConfig), OPTIMIZER), model)
    if compiled:
        model = torch.compile(model)
    t = Trainer(model, optimizer, None, torch.nn.CrossEntropyLoss(label_smoothing=0.2), torch.device("cpu"))
    t.begin_epoch(0, 0)
    return t


def steps(t: Trainer, x: torch.Tensor, y: torch.Tensor, n: int) -> float:
    """Seconds per step over n steps (the loss is read back each time, as logging does)."""
    t0 = time.perf_counter()
    for _ in range(n):
        t.step(x, y)
    t.meter.pop_window()
    return (time.perf_counter() - t0) / n


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    header("torch.compile on CPU: speed_net_cpu's training step, eager vs compiled", "random batches")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, 3, 32, 32, generator=g).to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (BATCH,), generator=g)
    eager, compiled = trainer(False), trainer(True)
    t0 = time.perf_counter()
    compiled.step(x, y)
    first = time.perf_counter() - t0
    steps(eager, x, y, 2)  # eager's own first steps (allocations)
    steps(compiled, x, y, 2)  # later recompiles, if any, land here
    e, c = [], []
    for _ in range(args.reps):
        e.append(steps(eager, x, y, args.steps))
        c.append(steps(compiled, x, y, args.steps))
    em, cm = statistics.median(e), statistics.median(c)
    warmup = first - cm
    print(f"eager    step {em:.3f} s (min {min(e):.3f}, max {max(e):.3f})")
    print(f"compiled step {cm:.3f} s (min {min(c):.3f}, max {max(c):.3f}); first step {first:.1f} s")
    print(
        f"summary: compiled/eager steady-state step (and epoch) time {cm / em:.3f}; warm-up {warmup:.1f} s "
        f"= {warmup / (em * STEPS_PER_EPOCH):.2f} eager epochs; pays off after "
        f"{warmup / max(em - cm, 1e-9):.0f} steps"
        if cm < em
        else f"summary: compiled/eager steady-state step (and epoch) time {cm / em:.3f} (no gain); "
        f"warm-up {warmup:.1f} s"
    )


if __name__ == "__main__":
    main()
