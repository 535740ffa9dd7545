"""Data-parallel training under torchrun or SLURM: the process group, this process's place
in it, and the few collective operations the run needs. Single-process runs see world_size
1 and every function here is then a no-op."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from cifar_exp.distributed_env import slurm_world, torchrun_world_size
from cifar_exp.errors import UserError


@dataclass(frozen=True)
class World:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def setup(strategy: str) -> World:
    """Join the process group torchrun or a SLURM job step prepared (NCCL on GPUs, gloo on
    CPU)."""
    slurm = slurm_world(os.environ)
    if slurm is not None and strategy != "ddp":  # every task would train the same run in the same dir
        raise UserError(
            f"SLURM started {slurm['WORLD_SIZE']} tasks of this job but trainer.strategy={strategy}; "
            "add trainer.strategy=ddp, or run one task per job (hydra.launcher.nodes=1 tasks_per_node=1)"
        )
    if slurm is not None:
        os.environ.update(slurm)  # env:// initialization reads them, as under torchrun
    launched = torchrun_world_size()
    if strategy != "ddp":
        if launched > 1:
            raise UserError(
                f"torchrun started {launched} processes but trainer.strategy={strategy}; add trainer.strategy=ddp"
            )
        return World()
    if "LOCAL_RANK" not in os.environ:
        raise UserError(
            "trainer.strategy=ddp needs torchrun (torchrun --nproc_per_node=N -m cifar_exp trainer.strategy=ddp ...) "
            "or a SLURM job with several tasks (hydra/launcher=slurm hydra.launcher.nodes=N)"
        )
    local_rank = int(os.environ["LOCAL_RANK"])
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return World(dist.get_rank(), dist.get_world_size(), local_rank)


def teardown(world: World) -> None:
    if world.active and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when it is true on any rank (a stop request, say)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return flag
    return bool(all_reduce_sum(torch.tensor([int(flag)], device=device)).item())


def from_main(value: Any) -> Any:
    """Rank 0's value of `value`, on every rank."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def min_rank(value: int, device: torch.device) -> int:
    """The smallest of every rank's `value`, on every rank (the first policy that stops, say)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return value
    t = torch.tensor([value], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())
