"""Optimizer and learning-rate schedule from the config; schedules advance every step."""

from __future__ import annotations

from typing import Optional

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig


def build_optimizer(cfg: DictConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    return instantiate(cfg, params=model.parameters(), _convert_="all")


def build_scheduler(cfg: DictConfig, optimizer: torch.optim.Optimizer,
                    total_steps: int, steps_per_epoch: int) -> Optional[torch.optim.lr_scheduler.LRScheduler]:
    sched = torch.optim.lr_scheduler
    if cfg.name == "cosine":
        return sched.CosineAnnealingLR(optimizer, T_max=total_steps, eta_min=cfg.eta_min)
    if cfg.name == "onecycle":
        max_lr = cfg.max_lr if cfg.max_lr is not None else optimizer.param_groups[0]["lr"]
        return sched.OneCycleLR(optimizer, max_lr=max_lr, total_steps=total_steps, pct_start=cfg.pct_start)
    if cfg.name == "step":
        return sched.StepLR(optimizer, step_size=cfg.step_epochs * steps_per_epoch, gamma=cfg.gamma)
    return None
