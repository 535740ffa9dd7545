"""Tracking cost: a simple_cnn epoch with tracking off against the same epoch logging
train/loss and lr at every step (log_every_n_steps=1) to a SQLite MLflow store, flushed at
the epoch's end as a run does. Target: < 1% slower.

    python benchmarks/tracking_overhead.py [--reps 5]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from common import cifar10, fmt, header, stats, timed
from omegaconf import OmegaConf

from cifar_exp.config import Config, MlflowConfig
from cifar_exp.loader import Normalize, Sampling, TensorLoader
from cifar_exp.loop import Trainer
from cifar_exp.models import SimpleCNN
from cifar_exp.tracking import MlflowTracker, NullTracker


def epoch(split, tracker) -> None:
    cpu = torch.device("cpu")
    model = SimpleCNN()
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.001), None, torch.nn.CrossEntropyLoss(), cpu)
    trainer.begin_epoch(0, 0)
    loader = TensorLoader(split, 128, Normalize([0.5] * 3, [0.5] * 3, cpu), Sampling(shuffle=True))
    for step, (x, y) in enumerate(loader.epoch(0), start=1):
        trainer.step(x, y)
        tracker.log_metrics({"train/loss": trainer.meter.pop_window(), "lr": trainer.lr()}, step)
    tracker.flush()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    data, note = cifar10()
    header("tracking overhead: log_every_n_steps=1 to SQLite vs tracking off", note)
    store = Path(tempfile.mkdtemp()) / "mlflow.db"
    cfg = OmegaConf.structured(Config)
    cfg.mlflow = OmegaConf.structured(MlflowConfig(tracking_uri=f"sqlite:///{store}"))
    tracker = MlflowTracker(cfg, None, "tracking-overhead", {})
    off, on = [], []
    for _ in range(args.reps):
        torch.manual_seed(0)
        off.append(timed(lambda: epoch(data.train, NullTracker())))
        torch.manual_seed(0)
        on.append(timed(lambda: epoch(data.train, tracker)))
    tracker.finish("FINISHED")
    overheads = sorted(100 * (b / a - 1) for a, b in zip(off, on))
    overhead = overheads[len(overheads) // 2]
    points = len(tracker.client.get_metric_history(tracker.run_id, "train/loss"))
    print("| tracking | epoch time (median, min-max) |")
    print("| --- | --- |")
    print(f"| off | {fmt(stats(off))} |")
    print(f"| on, every step ({points} train/loss points stored) | {fmt(stats(on))} |")
    ok = "met" if overhead < 1 else "MISSED"
    print(f"summary: tracking every step costs {overhead:+.2f}% of epoch time (target < 1%: {ok})")


if __name__ == "__main__":
    main()
