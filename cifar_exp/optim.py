"""The registered optimizers and learning-rate schedules (see config.REGISTRY). Every
schedule advances once per optimizer step, so its horizon is the run's step count."""

from __future__ import annotations

from typing import Optional

import torch
from omegaconf import DictConfig

from cifar_exp.config import builder, kwargs

sched = torch.optim.lr_scheduler


def sgd(params, **kw) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, **kw)


def adam(params, betas, **kw) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, betas=tuple(betas), **kw)


def adamw(params, betas, **kw) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, betas=tuple(betas), **kw)


def cosine(optimizer, total_steps: int, steps_per_epoch: int, eta_min: float) -> sched.LRScheduler:
    return sched.CosineAnnealingLR(optimizer, T_max=total_steps, eta_min=eta_min)


def onecycle(optimizer, total_steps: int, steps_per_epoch: int, max_lr: Optional[float],
             pct_start: float) -> sched.LRScheduler:
    peak = max_lr if max_lr is not None else optimizer.param_groups[0]["lr"]
    return sched.OneCycleLR(optimizer, max_lr=peak, total_steps=total_steps, pct_start=pct_start)


def step(optimizer, total_steps: int, steps_per_epoch: int, step_epochs: int, gamma: float) -> sched.LRScheduler:
    return sched.StepLR(optimizer, step_size=step_epochs * steps_per_epoch, gamma=gamma)


WARMUP_START = 0.01  # warmup begins at 1% of each group's learning rate


def param_groups(model: torch.nn.Module, weight_decay: float, decay_norm_and_bias: bool) -> list[dict]:
    """One group, or two: weight decay only on the weights of convolutions and linear layers
    (tensors of 2 or more dimensions), none on normalization weights and biases."""
    params = [p for p in model.parameters() if p.requires_grad]
    if decay_norm_and_bias:
        return [{"params": params, "weight_decay": weight_decay}]
    return [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]


def build_optimizer(cfg: DictConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    options = kwargs(cfg)
    groups = param_groups(model, options["weight_decay"], options.pop("decay_norm_and_bias"))
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
        return {"count": self.count, "scheduled": self.scheduled,
                "schedule": self.schedule.state_dict() if self.schedule is not None else None}

    def load_state_dict(self, state: dict) -> None:
        self.count, self.scheduled = state["count"], list(state["scheduled"])
        if self.schedule is not None:
            self.schedule.load_state_dict(state["schedule"])
        self._apply()


def build_scheduler(cfg: DictConfig, optimizer: torch.optim.Optimizer,
                    total_steps: int, steps_per_epoch: int):
    """The schedule over `total_steps` optimizer steps, with a linear warmup on top when
    scheduler.warmup_epochs > 0."""
    options = kwargs(cfg)
    warmup = round(options.pop("warmup_epochs") * steps_per_epoch)
    make = builder("scheduler", cfg)
    schedule = make(optimizer, total_steps, steps_per_epoch, **options) if make else None
    return Warmup(optimizer, schedule, warmup) if warmup > 0 else schedule
