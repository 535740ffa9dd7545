"""The registered optimizers and learning-rate schedules (see registry.REGISTRY). Every
schedule advances once per optimizer step, so its horizon is the run's step count."""

from __future__ import annotations

from typing import Optional

import torch
from omegaconf import DictConfig

from cifar_exp.registry import builder, kwargs

sched = torch.optim.lr_scheduler


def sgd(params, **kw) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, **kw)


def adam(params, betas, **kw) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, betas=tuple(betas), **kw)


def adamw(params, betas, **kw) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, betas=tuple(betas), **kw)


def cosine(optimizer, total_steps: int, steps_per_epoch: int, eta_min: float) -> sched.LRScheduler:
    return sched.CosineAnnealingLR(optimizer, T_max=total_steps, eta_min=eta_min)


def onecycle(
    optimizer, total_steps: int, steps_per_epoch: int, max_lr: Optional[float], pct_start: float
) -> sched.LRScheduler:
    peak = max_lr if max_lr is not None else optimizer.param_groups[0]["lr"]
    return sched.OneCycleLR(optimizer, max_lr=peak, total_steps=total_steps, pct_start=pct_start)


def step(optimizer, total_steps: int, steps_per_epoch: int, step_epochs: int, gamma: float) -> sched.LRScheduler:
    return sched.StepLR(optimizer, step_size=step_epochs * steps_per_epoch, gamma=gamma)


def triangle(
    optimizer, total_steps: int, steps_per_epoch: int, start_factor: float, peak_at: float, end_factor: float
) -> sched.LRScheduler:
    peak = int(peak_at * total_steps)

    def factor(i: int) -> float:
        if i < peak:
            return start_factor + (1 - start_factor) * i / peak
        return 1 + (end_factor - 1) * (i - peak) / max(total_steps - peak, 1)

    return sched.LambdaLR(optimizer, factor)


WARMUP_START = 0.01  # warmup begins at 1% of each group's learning rate


NORMS = (torch.nn.modules.batchnorm._NormBase, torch.nn.GroupNorm, torch.nn.LayerNorm)


def param_groups(
    model: torch.nn.Module, lr: float, weight_decay: float, decay_norm_and_bias: bool, norm_lr_scale: float = 1.0
) -> list[dict]:
    """Weight decay on every parameter, or (decay_norm_and_bias=false) only on the weights of
    convolutions and linear layers (tensors of 2 or more dimensions). Normalization layers'
    parameters train at norm_lr_scale x lr with their weight decay divided by it, so that
    lr x weight_decay, the decay applied per step, is the same for every parameter."""
    norm_params = {id(p) for m in model.modules() if isinstance(m, NORMS) for p in m.parameters()}
    groups: dict[tuple[bool, bool], list] = {}
    # frozen parameters too: a model may unfreeze them later (see Airbench94Net.begin_epoch)
    for p in model.parameters():
        is_norm = norm_lr_scale != 1.0 and id(p) in norm_params
        groups.setdefault((is_norm, decay_norm_and_bias or p.ndim >= 2), []).append(p)
    return [
        {
            "params": params,
            "lr": lr * norm_lr_scale if is_norm else lr,
            "weight_decay": (weight_decay / norm_lr_scale if is_norm else weight_decay) if decays else 0.0,
        }
        for (is_norm, decays), params in sorted(groups.items(), key=lambda kv: (kv[0][0], not kv[0][1]))
    ]


def build_optimizer(cfg: DictConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    options = kwargs(cfg)
    groups = param_groups(
        model, options["lr"], options["weight_decay"], options.pop("decay_norm_and_bias"), options.pop("norm_lr_scale")
    )
    return builder("optimizer", cfg)(groups, **options)


class Warmup:
    """A linear ramp from 1% to 100% over the first `steps` optimizer steps, multiplied onto
    whatever the schedule sets (none, cosine, one-cycle, step). The schedule itself always
    sees its own learning rates, so it runs exactly as it would without the ramp."""

    def __init__(self, optimizer: torch.optim.Optimizer, schedule: Optional[sched.LRScheduler], steps: int):
        self.optimizer, self.schedule, self.steps, self.count = optimizer, schedule, steps, 0
        self.scheduled = [g["lr"] for g in optimizer.param_groups]
        self._apply()

    def _apply(self) -> None:
        factor = WARMUP_START + (1 - WARMUP_START) * min(self.count / self.steps, 1.0)
        for group, lr in zip(self.optimizer.param_groups, self.scheduled):
            group["lr"] = lr * factor

    def step(self) -> None:
        for group, lr in zip(self.optimizer.param_groups, self.scheduled):
            group["lr"] = lr
        if self.schedule is not None:
            self.schedule.step()
        self.scheduled = [g["lr"] for g in self.optimizer.param_groups]
        self.count += 1
        self._apply()

    def state_dict(self) -> dict:
        return {
            "count": self.count,
            "scheduled": self.scheduled,
            "schedule": self.schedule.state_dict() if self.schedule is not None else None,
        }

    def load_state_dict(self, state: dict) -> None:
        self.count, self.scheduled = state["count"], list(state["scheduled"])
        if self.schedule is not None:
            self.schedule.load_state_dict(state["schedule"])
        self._apply()


def build_scheduler(cfg: DictConfig, optimizer: torch.optim.Optimizer, total_steps: int, steps_per_epoch: int):
    """The schedule over `total_steps` optimizer steps, with a linear warmup on top when
    scheduler.warmup_epochs > 0."""
    options = kwargs(cfg)
    warmup = round(options.pop("warmup_epochs") * steps_per_epoch)
    make = builder("scheduler", cfg)
    schedule = make(optimizer, total_steps, steps_per_epoch, **options) if make else None
    return Warmup(optimizer, schedule, warmup) if warmup > 0 else schedule
