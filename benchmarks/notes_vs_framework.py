"""The notes' pipeline against the framework, same model and hyper-parameters, full epoch:
torchvision's CIFAR10 dataset class (in-memory uint8 images -> PIL -> ToTensor ->
Normalize) in a DataLoader with 2 workers and batch 128, against the framework's
tensor-resident loader. Target: the framework's epoch at least 2.3x faster.

    python benchmarks/notes_vs_framework.py [--reps 3]
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torchvision
import torchvision.transforms as T
from common import cifar10, fmt, header, stats, timed
from step_overhead import bare_epoch, framework_epoch

from cifar_exp.models import SimpleCNN


def notes_dataset(x: torch.Tensor, y: torch.Tensor) -> torchvision.datasets.CIFAR10:
    """torchvision's own CIFAR10 class, filled with the images instead of reading pickles,
    so __getitem__ is exactly the notes' per-image path."""
    ds = torchvision.datasets.CIFAR10.__new__(torchvision.datasets.CIFAR10)
    ds.data = x.permute(0, 2, 3, 1).contiguous().numpy()
    ds.targets = y.tolist()
    ds.transform = T.Compose([T.ToTensor(), T.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])
    ds.target_transform = None
    return ds


def notes_epoch(loader: torch.utils.data.DataLoader) -> None:
    model = SimpleCNN()
    criterion = torch.nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001)
    running_loss = 0.0
    for inputs, labels in loader:
        optimizer.zero_grad()
        loss = criterion(model(inputs), labels)
        loss.backward()
        optimizer.step()
        running_loss += loss.item()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    data, note = cifar10()
    header("the notes' DataLoader pipeline vs the framework, simple_cnn, one full epoch", note)
    loader = torch.utils.data.DataLoader(
        notes_dataset(data.train.x, data.train.y), batch_size=128, shuffle=True, num_workers=2
    )
    perm = torch.randperm(len(data.train))
    x, y = (data.train.x[perm].float() / 255 - 0.5) / 0.5, data.train.y[perm]
    notes, fw, floor = [], [], []
    for _ in range(args.reps):
        torch.manual_seed(0)
        notes.append(timed(lambda: notes_epoch(loader)))
        torch.manual_seed(0)
        fw.append(timed(lambda: framework_epoch(SimpleCNN(), data.train, 128)))
        torch.manual_seed(0)
        floor.append(timed(lambda: bare_epoch(SimpleCNN(), x, y, 128)))
    speedups = sorted(n / f for n, f in zip(notes, fw))
    speedup = speedups[len(speedups) // 2]
    ceiling = statistics.median(n / b for n, b in zip(notes, floor))
    print("| pipeline | epoch time (median, min-max) |")
    print("| --- | --- |")
    print(f"| notes (PIL -> ToTensor -> Normalize, 2 workers) | {fmt(stats(notes))} |")
    print(f"| framework (uint8 tensors, batch ops) | {fmt(stats(fw))} |")
    print(f"| compute floor (pre-normalized tensors, bare loop) | {fmt(stats(floor))} |")
    print(f"# the floor itself is {ceiling:.2f}x faster than the notes' loop on this machine today")
    ok = "met" if speedup >= 2.3 else "MISSED"
    print(f"summary: framework epoch {speedup:.2f}x faster than the notes' loop (target >= 2.3x: {ok})")


if __name__ == "__main__":
    main()
