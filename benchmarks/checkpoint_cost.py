"""Checkpoint cost: save time and file size of a full checkpoint (model, SGD momentum state,
RNG, loop state) for simple_cnn and resnet18, as a share of one epoch on this machine.
Target: an every-epoch checkpoint costs < 1% of epoch time.

    python benchmarks/checkpoint_cost.py [--reps 7]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from common import fmt, header, stats, timed

from cifar_exp import checkpoint
from cifar_exp.config import CheckpointConfig, Config
from cifar_exp.loop import Trainer
from cifar_exp.models import SimpleCNN, resnet18

STEPS_PER_EPOCH = 391  # 50,000 images, batch 128


def trained_state(make_model) -> tuple[Trainer, float]:
    """A trainer in a realistic state (momentum buffers filled) and the measured time of one step."""
    model = make_model()
    trainer = Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9),
        None,
        torch.nn.CrossEntropyLoss(),
        torch.device("cpu"),
    )
    x, y = torch.randn(128, 3, 32, 32), torch.randint(0, 10, (128,))
    trainer.step(x, y)
    step = min(timed(lambda: trainer.step(x, y)) for _ in range(3))
    return trainer, step * STEPS_PER_EPOCH


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=7)
    args = parser.parse_args()
    header("checkpoint cost: atomic save (write, fsync, rename) of last.pt + best.pt link", "random tensors")
    d = Path(tempfile.mkdtemp())
    cfg = Config(checkpoint=CheckpointConfig(keep_last=0, save_best=True, save_top_k=0, mode="max"))
    writer = checkpoint.Checkpointer(d, cfg, enabled=True)
    state = checkpoint.RunState(classes=["c"] * 10, epoch=1, best=0.5, run_id="x" * 32)
    print("| model | file size | save time (median, min-max) | epoch time (391 steps, est.) | share of epoch |")
    print("| --- | --- | --- | --- | --- |")
    shares = {}
    for name, make in (("simple_cnn", SimpleCNN), ("resnet18", resnet18)):
        trainer, epoch_s = trained_state(make)
        saves = [timed(lambda t=trainer: writer.save(state, t, epoch_end=True, is_best=True)) for _ in range(args.reps)]
        size = (d / "checkpoints/last.pt").stat().st_size
        load = timed(lambda: checkpoint._read(d / "checkpoints/last.pt"))
        s = stats(saves)
        shares[name] = 100 * s["median"] / epoch_s
        print(
            f"| {name} | {size / 2**20:.2f} MiB | {fmt(s)} (load {load:.3f} s) | {epoch_s:.1f} s | "
            f"{shares[name]:.3f}% |"
        )
    ok = "met" if max(shares.values()) < 1 else "MISSED"
    print(
        f"summary: every-epoch checkpoint costs {shares['simple_cnn']:.3f}% (simple_cnn), "
        f"{shares['resnet18']:.3f}% (resnet18) of an epoch (target < 1%: {ok})"
    )


if __name__ == "__main__":
    main()
