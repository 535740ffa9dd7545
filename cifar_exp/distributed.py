"""Data-parallel training under torchrun or SLURM: the process group, this process's place
in it, the few collective operations the run needs, and the checks that its processes run
one run (the same config, the same data, a run dir they all see). Single-process runs see
world_size 1 and every function here is then a no-op. A collective that fails (a rank that
died, or one that stopped answering within trainer.ddp_timeout_s) ends the other ranks in
one line each, not in a traceback from inside gloo or NCCL."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch
import torch.distributed as dist

from cifar_exp.distributed_env import node_name, slurm_world, torchrun_world_size
from cifar_exp.errors import UserError, reason


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


def setup(strategy: str, timeout_s: int = 300) -> World:
    """Join the process group torchrun or a SLURM job step prepared (NCCL on GPUs, gloo on
    CPU); forming it, and each collective after, waits at most timeout_s."""
    slurm = slurm_world(os.environ)
    if slurm is not None and strategy != "ddp":  # every task would train the same run in the same dir
        raise UserError(
            f"SLURM started {slurm['WORLD_SIZE']} tasks of this job but trainer.strategy={strategy}; "
            "add trainer.strategy=ddp, or run one task per job (hydra.launcher.nodes=1 tasks_per_node=1)"
        )
    if slurm is not None:
        os.environ.update(slurm)  # as under torchrun, for whatever reads them
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
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        timeout = timedelta(seconds=timeout_s)
        rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        deadline = _Deadline(timeout_s, time.monotonic() + timeout_s)
        if slurm is not None:
            store = _join(_reach(slurm["MASTER_ADDR"], int(slurm["MASTER_PORT"]), rank, deadline), rank, size, deadline)
        elif os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
            store = _join(_round_store(rank, deadline), rank, size, deadline)
        else:  # torchrun's static rendezvous: each round has a store of its own at MASTER_ADDR:MASTER_PORT
            store = None
        dist.init_process_group(backend, store=store, rank=rank, world_size=size, timeout=timeout)
    return World(dist.get_rank(), dist.get_world_size(), local_rank)


@dataclass(frozen=True)
class _Deadline:
    """When forming the group must have ended (trainer.ddp_timeout_s from the start)."""

    timeout_s: int
    at: float

    @property
    def passed(self) -> bool:
        return time.monotonic() > self.at


def _store(addr: str, port: int, host: bool, deadline: _Deadline) -> dist.TCPStore:
    wait = timedelta(seconds=max(deadline.at - time.monotonic(), 1))
    return dist.TCPStore(addr, port, None, host, timeout=wait, wait_for_workers=False)


def _reach(addr: str, port: int, rank: int, deadline: _Deadline) -> dist.TCPStore:
    """The store at addr:port: rank 0 hosts it, the others connect once it listens.
    TCPStore's own client, failing to connect, prints pages of C++ frames; this says it in
    one line."""
    while rank > 0 and not _listening(addr, port):
        if deadline.passed:
            raise UserError(
                f"rank {rank} on {node_name()} could not reach rank 0's group store at {addr}:{port} within "
                f"trainer.ddp_timeout_s={deadline.timeout_s}: rank 0 did not start, or its node is unreachable"
            )
        time.sleep(0.2)
    return _store(addr, port, rank == 0, deadline)


def _round_store(rank: int, deadline: _Deadline) -> dist.TCPStore:
    """A store for this round of torchrun's restarts alone. torchrun's agents keep one store
    through every round, so the keys an earlier round's workers left there (their gloo
    addresses) would be read as this round's, and the new group would wait on workers that
    are gone; no round count tells them apart, since an agent that restarts for another
    node's failure does not count it. Rank 0 hosts a store of its own on a fresh port and
    posts the port in the agents' store; the others read the post until the port it names
    answers, since a post an earlier round left names a port nobody listens on now."""
    addr = os.environ["MASTER_ADDR"]
    agents = _store(addr, int(os.environ["MASTER_PORT"]), False, deadline)
    key = "cifar_exp/group_store_port"
    if rank == 0:
        own = _store(addr, 0, True, deadline)
        agents.set(key, str(own.port))
        return own
    while not (agents.check([key]) and _listening(addr, port := int(agents.get(key)))):
        if deadline.passed:
            raise UserError(
                f"rank {rank} on {node_name()} found no group store of rank 0's within "
                f"trainer.ddp_timeout_s={deadline.timeout_s}: rank 0 did not start, or stopped before the group formed"
            )
        time.sleep(0.2)
    return _store(addr, port, False, deadline)


def _listening(addr: str, port: int) -> bool:
    try:
        socket.create_connection((addr, port), timeout=2).close()
        return True
    except OSError:
        return False


def _join(store: dist.TCPStore, rank: int, size: int, deadline: _Deadline) -> dist.TCPStore:
    """Every rank joins the group's store under its node's name and waits (until the
    deadline) for all to have, so that who is missing is known by name where torch's own
    rendezvous says only how many came."""
    keys = [f"cifar_exp/joined/{r}" for r in range(size)]
    store.set(keys[rank], node_name())
    while not store.check(keys):
        if deadline.passed:
            joined = {r: store.get(k).decode() for r, k in enumerate(keys) if store.check([k])}
            missing = [str(r) for r in range(size) if r not in joined]
            absent = [n for n in _job_nodes() if n not in joined.values()]
            raise UserError(
                f"the process group did not form within trainer.ddp_timeout_s={deadline.timeout_s}: rank "
                f"{', '.join(missing)} of {size} never joined"
                + (f" (nothing came from node {', '.join(absent)})" if absent else "")
                + f"; joined: {', '.join(f'rank {r} on {n}' for r, n in sorted(joined.items()))}"
            )
        time.sleep(0.1)
    return store


def _job_nodes() -> list[str]:
    """The SLURM job's nodes by name (SLURM_JOB_NODELIST, expanded by scontrol); none where
    that cannot be had."""
    nodelist = os.environ.get("SLURM_JOB_NODELIST", "")
    if not nodelist:
        return []
    try:
        done = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return done.stdout.split() if done.returncode == 0 else []


def teardown(world: World) -> None:
    if world.active and dist.is_initialized():
        dist.destroy_process_group()


# --- collectives ------------------------------------------------------------------------------
def _active() -> bool:
    return dist.is_initialized() and dist.get_world_size() > 1


@contextlib.contextmanager
def collective(what: str) -> Iterator[None]:
    """A step in which every rank takes part (`what`, for the message). gloo and NCCL raise a
    RuntimeError when a peer's connection closes or the group's timeout passes: the group
    has failed, and this rank says so in one line; the rank that failed first says why in
    its own log."""
    if not _active():
        yield
        return
    rank = dist.get_rank()
    try:
        yield
    except RuntimeError as e:
        raise UserError(
            f"rank {rank} on {node_name()} lost the process group in {what} ({reason(e, 120)}): "
            "another rank stopped or stopped answering; its own log says why"
        ) from None


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if _active():
        with collective("an all-reduce"):
            dist.all_reduce(t)
    return t


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when it is true on any rank (a stop request, say)."""
    if not _active():
        return flag
    return bool(all_reduce_sum(torch.tensor([int(flag)], device=device)).item())


def from_main(value: Any) -> Any:
    """Rank 0's value of `value`, on every rank."""
    if not _active():
        return value
    box = [value]
    with collective("a broadcast from rank 0"):
        dist.broadcast_object_list(box, src=0)
    return box[0]


def gathered(value: Any) -> list[Any]:
    """Every rank's `value`, in rank order, on every rank."""
    if not _active():
        return [value]
    out: list[Any] = [None] * dist.get_world_size()
    with collective("a gather"):
        dist.all_gather_object(out, value)
    return out


def min_rank(value: int, device: torch.device) -> int:
    """The smallest of every rank's `value`, on every rank (the first policy that stops, say)."""
    if not _active():
        return value
    t = torch.tensor([value], device=device)
    with collective("an all-reduce"):
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())


# --- one run, not several: checked once, at the start ---------------------------------------------
def agree(what: str, facts: Callable[[], Mapping[str, str]]) -> None:
    """Refuses, on every rank, a run whose ranks disagree on `what` (the config's keys, the
    data's digests): each would train something else while their gradients are averaged.
    The refusal names the first keys that differ. `facts` is asked only with several ranks."""
    if not _active():
        return
    main, *others = gathered(dict(facts()))
    for rank, theirs in enumerate(others, start=1):
        differ = [k for k in sorted(set(theirs) | set(main)) if theirs.get(k) != main.get(k)]
        if differ:
            shown = "; ".join(f"{k} {main.get(k)!r} on rank 0, {theirs.get(k)!r} on rank {rank}" for k in differ[:3])
            raise UserError(
                f"rank {rank}'s {what} differs from rank 0's ({shown}{'; ...' if len(differ) > 3 else ''}): "
                "every process of a DDP run must run the same command on the same data"
            )


def check_shared(run_dir: Path) -> None:
    """Refuses a run dir that some rank cannot see: rank 0 writes the checkpoints every rank
    resumes from, so on several nodes the dir must lie on a filesystem they all share."""
    if not _active():
        return
    probe = run_dir / ".cifar_exp_ranks_see_this"
    token = uuid.uuid4().hex
    if dist.get_rank() == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe.write_text(token)
    token = from_main(token)
    try:
        sees = probe.read_text() == token
    except OSError:
        sees = False
    seen = gathered((sees, node_name()))
    if dist.get_rank() == 0:
        probe.unlink()
    blind = [f"rank {r} on {node}" for r, (ok, node) in enumerate(seen) if not ok]
    if blind:
        raise UserError(
            f"{', '.join(blind)} cannot see the run dir {run_dir} that rank 0 on {seen[0][1]} writes: "
            "with several nodes, put it on a filesystem they all share (hydra.run.dir=..., hydra.sweep.dir=...)"
        )
