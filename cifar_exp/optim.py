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


def build_optimizer(cfg: DictConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    return builder("optimizer", cfg)(model.parameters(), **kwargs(cfg))


def build_scheduler(cfg: DictConfig, optimizer: torch.optim.Optimizer,
                    total_steps: int, steps_per_epoch: int) -> Optional[sched.LRScheduler]:
    make = builder("scheduler", cfg)
    return make(optimizer, total_steps, steps_per_epoch, **kwargs(cfg)) if make else None
