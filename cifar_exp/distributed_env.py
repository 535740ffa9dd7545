"""Where this process stands in a process group, read from its launcher's environment
(torchrun's variables, or a SLURM job step's) before anything is set up. Free of torch, so
the entry point can ask it before anything heavy is imported."""

from __future__ import annotations

import os
import socket
from typing import Mapping, Optional


def torchrun_world_size() -> int:
    """How many processes torchrun started (1 when not under torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1")) if "LOCAL_RANK" in os.environ else 1


def slurm_world(env: Mapping[str, str]) -> Optional[dict[str, str]]:
    """The torch.distributed variables of a task of a multi-task SLURM job step (srun with
    several tasks, as submitit starts nodes x tasks_per_node), from SLURM's own variables,
    as Lightning's SLURMEnvironment reads them: rank SLURM_PROCID, world size
    SLURM_NTASKS, local rank SLURM_LOCALID; the master is the node that launched the step
    (SLURM_LAUNCH_NODE_IPADDR, the job's first node) on a port derived from the job id, so
    every task computes the same one. MASTER_ADDR and MASTER_PORT set by the user win.
    None outside such a step (and under torchrun, which sets its own)."""
    if "LOCAL_RANK" in env or int(env.get("SLURM_NTASKS", "1")) < 2 or "SLURM_PROCID" not in env:
        return None
    return {
        "RANK": env["SLURM_PROCID"],
        "WORLD_SIZE": env["SLURM_NTASKS"],
        "LOCAL_RANK": env.get("SLURM_LOCALID", "0"),
        "MASTER_ADDR": env.get("MASTER_ADDR") or env.get("SLURM_LAUNCH_NODE_IPADDR") or "127.0.0.1",
        "MASTER_PORT": env.get("MASTER_PORT") or str(20000 + int(env.get("SLURM_JOB_ID", "0")) % 20000),
    }


def process_rank(env: Mapping[str, str]) -> int:
    """This process's rank in a torchrun or SLURM group (0 alone): before any setup, for
    the entry point to keep other ranks from making run dirs of their own."""
    if "LOCAL_RANK" in env:
        return int(env.get("RANK", "0"))
    slurm = slurm_world(env)
    return int(slurm["RANK"]) if slurm else 0


def node_name() -> str:
    """The node this process runs on: SLURM's name for it in a job (several slurmd may share
    one host), else the host's name."""
    return os.environ.get("SLURMD_NODENAME") or socket.gethostname()
