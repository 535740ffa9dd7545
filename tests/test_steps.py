"""The run's length, counted once: what the checks plan is what the loader and the
schedules run."""

from __future__ import annotations

import pytest
import torch

from cifar_exp.loader import Normalize, Sampling, Split, TensorLoader
from cifar_exp.steps import batches_per_epoch, optimizer_steps


@pytest.mark.parametrize(
    "images, batch, drop_last, limit, batches",
    [
        (100, 32, False, 0, 4),  # a partial last batch counts
        (100, 32, True, 0, 3),  # ... unless dropped
        (96, 32, True, 0, 3),
        (100, 32, False, 2, 2),  # a limit caps it
        (100, 32, False, 9, 4),  # a limit above the count changes nothing
        (10, 32, True, 0, 0),
    ],
)
def test_batches_per_epoch(images, batch, drop_last, limit, batches):
    assert batches_per_epoch(images, batch, drop_last, limit) == batches
    split = Split(torch.zeros(images, 3, 4, 4, dtype=torch.uint8), torch.zeros(images, dtype=torch.long))
    loader = TensorLoader(
        split, batch, Normalize((0.5,) * 3, (0.5,) * 3, torch.device("cpu")), Sampling(drop_last=drop_last, limit=limit)
    )
    assert len(loader) == batches == sum(1 for _ in loader.epoch(0))


@pytest.mark.parametrize(
    "batches, accumulate, epochs, max_steps, expected",
    [
        (10, 1, 3, 0, (10, 30)),
        (10, 4, 3, 0, (3, 9)),  # an epoch's last group of 2 batches is a step too
        (10, 1, 3, 25, (10, 25)),  # max_steps caps the run
        (10, 1, 3, 40, (10, 30)),  # ... and never lengthens it
    ],
)
def test_optimizer_steps(batches, accumulate, epochs, max_steps, expected):
    assert optimizer_steps(batches, accumulate, epochs, max_steps) == expected
