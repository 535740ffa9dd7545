"""The process's compute settings: which device, and the seeds and determinism switches.
Shared by training, evaluate and predict."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Optional, cast

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


# CPU flags of native bf16 matrix units (Intel AMX, AVX-512 BF16): where autocast pays
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


@cache
def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (Linux's /proc/cpuinfo flags)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return any(flag in flags for flag in BF16_CPU_FLAGS)


@dataclass(frozen=True)
class Precision:
    """The autocast dtype of a run's forward passes (None: float32 throughout), and why."""

    dtype: Optional[torch.dtype]
    reason: str

    @property
    def name(self) -> str:
        names = {torch.bfloat16: "bf16", torch.float16: "fp16"}
        return names.get(self.dtype, "float32") if self.dtype is not None else "float32"


def pick_precision(amp: str, device: torch.device, deterministic: bool = False) -> Precision:
    """trainer.amp: `auto` autocasts where the hardware has the units for it (CUDA: bf16, or
    fp16 with a scaler where bf16 is missing; a CPU with native bf16) and not under
    trainer.deterministic; `true` forces it and is refused where it cannot pay; `false` keeps
    float32."""
    setting = str(amp).lower()
    if setting == "false":
        return Precision(None, "trainer.amp=false")
    if setting == "auto" and deterministic:
        return Precision(None, "trainer.deterministic keeps float32")
    if device.type == "cuda":
        bf16 = torch.cuda.is_bf16_supported()
        return Precision(torch.bfloat16 if bf16 else torch.float16, f"CUDA{'' if bf16 else ' without bf16'}")
    if device.type == "cpu" and cpu_has_bf16():
        return Precision(torch.bfloat16, "a CPU with native bf16 (" + ", ".join(BF16_CPU_FLAGS) + ")")
    if setting == "true":
        where = (
            "this CPU has no native bf16 units (no amx_bf16 or avx512_bf16 flag)"
            if device.type == "cpu"
            else f"{device.type} has no autocast here"
        )
        raise UserError(f"trainer.amp=true is invalid on {device}: {where}; use trainer.amp=auto or false")
    return Precision(None, f"{device.type} without native bf16")


def compiles(setting: str, device: torch.device) -> tuple[bool, str]:
    """trainer.compile: `auto` compiles on CUDA only. On CPU inductor's first step costs
    ~30 s, and later steps were no faster (speed_net_cpu) or slower (airbench94 in bf16,
    8 s per epoch); benchmarks/README.md has the figures."""
    setting = str(setting).lower()
    if setting != "auto":
        return setting == "true", f"trainer.compile={setting}"
    return device.type == "cuda", f"auto on {device.type}"


# --- the random number generators' state, as a checkpoint keeps it -----------------------------
def rng_state() -> dict:
    np_state = cast(tuple, np.random.get_state())  # the legacy form: a tuple
    return {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    random.setstate(to_tuple(state["python"]))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy(), *rest))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"][: torch.cuda.device_count()])


def to_tuple(x):
    return tuple(to_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x
