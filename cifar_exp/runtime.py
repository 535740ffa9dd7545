"""The process's compute settings: which device, and the seeds and determinism switches.
Shared by training, evaluate and predict."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from cifar_exp.errors import UserError


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """`auto` takes cuda, then mps, then cpu; a named device must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"device {name!r} is not a device name: use auto, cpu, mps, cuda or cuda:<index>") from None
    if device.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"device {name!r} is not supported: use auto, cpu, mps, cuda or cuda:<index>")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"trainer.device={name} but no CUDA device is available (use trainer.device=auto)")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)  # under torchrun, each process its own GPU
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"trainer.device={name} but MPS is not available (use trainer.device=auto)")
    return device


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    if torch.are_deterministic_algorithms_enabled() != deterministic:
        torch.use_deterministic_algorithms(deterministic)  # slow the first time: only on change
    torch.backends.cudnn.benchmark = not deterministic
