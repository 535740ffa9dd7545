"""Step-loop overhead: the framework's training epoch (tensor-resident loader, Trainer,
running-loss bookkeeping) against the same optimizer steps of the same model on pre-built
normalized tensors in a bare loop. Target: ratio <= 1.05.

    python benchmarks/step_overhead.py [--reps 5] [--resnet-images 2048]
"""

from __future__ import annotations

import argparse

import torch
from common import cifar10, fmt, header, stats, timed

from cifar_exp.checkpoint import RunState
from cifar_exp.loader import Normalize, Sampling, Split, TensorLoader
from cifar_exp.loop import Trainer
from cifar_exp.models import SimpleCNN, resnet18


def framework_epoch(model, split: Split, batch: int, log_every: int = 50) -> None:
    """The inner loop of run.py: step, advance the run's position, log every n steps."""
    cpu = torch.device("cpu")
    loader = TensorLoader(split, batch, Normalize([0.5] * 3, [0.5] * 3, cpu), Sampling(shuffle=True))
    opt = torch.optim.SGD(model.parameters(), lr=0.001)
    trainer = Trainer(model, opt, None, torch.nn.CrossEntropyLoss(), cpu)
    state = RunState(classes=[])
    trainer.begin_epoch(0, 0)
    for x, y in loader.epoch(0):
        trainer.step(x, y)
        state.advance()
        if state.global_step % log_every == 0:
            trainer.meter.pop_window()
    trainer.meter.summary()


def bare_epoch(model, x: torch.Tensor, y: torch.Tensor, batch: int) -> None:
    """The floor: the same steps over tensors that are already normalized and shuffled."""
    opt = torch.optim.SGD(model.parameters(), lr=0.001)
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    for i in range(0, len(y), batch):
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x[i : i + batch]), y[i : i + batch]).backward()
        opt.step()


def compare(name: str, make_model, split: Split, batch: int, reps: int) -> float:
    perm = torch.randperm(len(split))
    x = (split.x[perm].float() / 255 - 0.5) / 0.5
    y = split.y[perm]

    def framework() -> float:
        torch.manual_seed(0)
        return timed(lambda: framework_epoch(make_model(), split, batch))

    def floor() -> float:
        torch.manual_seed(0)
        return timed(lambda: bare_epoch(make_model(), x, y, batch))

    framework(), floor()  # warm-up: the first epoch of a process pays for allocations
    fw, bare = [], []
    for rep in range(reps):  # alternating order, so drifts in machine load hit both sides alike
        if rep % 2:
            bare.append(floor())
            fw.append(framework())
        else:
            fw.append(framework())
            bare.append(floor())
    ratios = sorted(f / b for f, b in zip(fw, bare))
    ratio = ratios[len(ratios) // 2]
    print(f"| {name} | {len(split)} | {fmt(stats(fw))} | {fmt(stats(bare))} | {ratio:.3f} |")
    return ratio


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--resnet-images", type=int, default=2048)
    args = parser.parse_args()
    data, note = cifar10()
    header("step-loop overhead: framework epoch vs bare loop on pre-built tensors", note)
    print("| model | images | framework epoch (median, min-max) | bare loop | ratio (median) |")
    print("| --- | --- | --- | --- | --- |")
    r1 = compare("simple_cnn", SimpleCNN, data.train, 128, args.reps)
    sub = Split(data.train.x[: args.resnet_images], data.train.y[: args.resnet_images])
    r2 = compare("resnet18 (subset)", resnet18, sub, 128, max(2, args.reps // 2))
    ok = "met" if max(r1, r2) <= 1.05 else "MISSED"
    print(f"summary: framework/bare ratio simple_cnn {r1:.3f}, resnet18 {r2:.3f} (target <= 1.05: {ok})")


if __name__ == "__main__":
    main()
