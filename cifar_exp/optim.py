"""The registered optimizers and learning-rate schedules (see registry.REGISTRY). Every
schedule advances once per optimizer step, so its horizon is the run's step count."""

from __future__ import annotations

import math
from typing import Optional, cast

import torch

from cifar_exp.config_optim import OptimizerConfig, SchedulerConfig
from cifar_exp.registry import builder, builds, kwargs
from cifar_exp.validation import warmup_steps

sched = torch.optim.lr_scheduler


def sgd(model: torch.nn.Module, **options) -> torch.optim.Optimizer:
    groups, kw = _standard_groups(model, options)
    return torch.optim.SGD(groups, **kw)


def adam(model: torch.nn.Module, betas, **options) -> torch.optim.Optimizer:
    groups, kw = _standard_groups(model, options)
    return torch.optim.Adam(groups, betas=tuple(betas), **kw)


def adamw(model: torch.nn.Module, betas, **options) -> torch.optim.Optimizer:
    groups, kw = _standard_groups(model, options)
    return torch.optim.AdamW(groups, betas=tuple(betas), **kw)


def rmsprop(model: torch.nn.Module, **options) -> torch.optim.Optimizer:
    groups, kw = _standard_groups(model, options)
    return torch.optim.RMSprop(groups, **kw)


def muon(
    model: torch.nn.Module,
    lr: float,
    momentum: float,
    nesterov: bool,
    ns_steps: int,
    ns_eps: float,
    ns_bf16: bool,
    aux_lr: float,
    bias_lr: float,
    aux_momentum: float,
    aux_nesterov: bool,
    weight_decay: float,
    decay_norm_and_bias: bool,
    norm_lr_scale: float,
) -> torch.optim.Optimizer:
    """Muon on the conv filters, Nesterov SGD on everything else (see Muon)."""
    muon_rule = {"muon": True, "lr": lr, "momentum": momentum, "nesterov": nesterov, "weight_decay": 0.0}
    sgd_rule = {"muon": False, "momentum": aux_momentum, "nesterov": aux_nesterov}
    # parameters the model trains for fewer epochs than the run get a group of their own, so
    # that a schedule can follow their horizon (see triangle)
    limited = {id(p): epochs for p, epochs in getattr(model, "limited_params", list)()}
    groups: dict[tuple, list] = {}
    for p in model.parameters():
        kind = "filters" if p.ndim == 4 else "weights" if p.ndim >= 2 else "biases"
        groups.setdefault((kind, limited.get(id(p))), []).append(p)
    out = []
    for (kind, epochs), params in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0)):
        if kind == "filters":
            group = {**muon_rule, "lr_scale": 1.0}
        else:
            group_lr = aux_lr if kind == "weights" else bias_lr
            decays = decay_norm_and_bias or kind == "weights"
            # the same decay per step (lr x weight_decay) as the other weights
            group = {
                **sgd_rule,
                "lr": group_lr,
                "lr_scale": group_lr / lr,
                "weight_decay": weight_decay * aux_lr / group_lr if decays else 0.0,
            }
        out.append({**group, "params": params, **({"epochs": epochs} if epochs is not None else {})})
    return Muon(out, ns_steps=ns_steps, ns_eps=ns_eps, ns_bf16=ns_bf16)


# Every schedule scales each parameter group's own rate. A group's `lr_scale` says how its
# rate stands to optimizer.lr (a norm group at norm_lr_scale x lr, Muon's SGD groups at
# aux_lr / lr and bias_lr / lr): settings given in units of optimizer.lr (eta_min, max_lr)
# apply to each group at that scale.


def _scale(group: dict) -> float:
    return group.get("lr_scale", 1.0)


class GroupCosine(sched.CosineAnnealingLR):
    """Cosine annealing from each group's rate down to eta_min x its lr_scale (torch's
    CosineAnnealingLR takes one eta_min for every group, which would anneal a group whose
    rate is below it upwards). In closed form: the same rate at each step however the run
    was interrupted and resumed."""

    def __init__(self, optimizer, total_steps: int, eta_min: float):
        self.eta_mins = [eta_min * _scale(g) for g in optimizer.param_groups]
        super().__init__(optimizer, T_max=total_steps, eta_min=eta_min)

    def _get_closed_form_lr(self) -> list[float | torch.Tensor]:
        progress = (1 + math.cos(math.pi * self.last_epoch / self.T_max)) / 2
        return [eta + (base - eta) * progress for base, eta in zip(self.base_lrs, self.eta_mins)]

    def get_lr(self) -> list[float | torch.Tensor]:
        return self._get_closed_form_lr()


def cosine(optimizer, total_steps: int, steps_per_epoch: int, eta_min: float) -> sched.LRScheduler:
    return GroupCosine(optimizer, total_steps, eta_min)


def onecycle(
    optimizer, total_steps: int, steps_per_epoch: int, max_lr: Optional[float], pct_start: float
) -> sched.LRScheduler:
    """One cycle up to each group's peak: max_lr x its lr_scale, or its own rate (null)."""
    peaks = [g["lr"] if max_lr is None else max_lr * _scale(g) for g in optimizer.param_groups]
    return sched.OneCycleLR(optimizer, max_lr=peaks, total_steps=total_steps, pct_start=pct_start)


def step(optimizer, total_steps: int, steps_per_epoch: int, step_epochs: int, gamma: float) -> sched.LRScheduler:
    return sched.StepLR(optimizer, step_size=step_epochs * steps_per_epoch, gamma=gamma)


def triangle(
    optimizer, total_steps: int, steps_per_epoch: int, start_factor: float, peak_at: float, end_factor: float
) -> sched.LRScheduler:
    """A group whose parameters train for fewer epochs than the run (its `epochs`, see
    optim.muon) runs the whole triangle over its own steps, then stays at its end."""

    def over(horizon: int):
        peak = int(peak_at * horizon)

        def factor(i: int) -> float:
            i = min(i, horizon)
            if i < peak:
                return start_factor + (1 - start_factor) * i / peak
            return 1 + (end_factor - 1) * (i - peak) / max(horizon - peak, 1)

        return factor

    horizons = [g["epochs"] * steps_per_epoch if "epochs" in g else total_steps for g in optimizer.param_groups]
    return sched.LambdaLR(optimizer, [over(min(h, total_steps)) for h in horizons])


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
            "lr_scale": norm_lr_scale if is_norm else 1.0,
            "weight_decay": (weight_decay / norm_lr_scale if is_norm else weight_decay) if decays else 0.0,
        }
        for (is_norm, decays), params in sorted(groups.items(), key=lambda kv: (kv[0][0], not kv[0][1]))
    ]


def _standard_groups(model: torch.nn.Module, options: dict) -> tuple[list[dict], dict]:
    """param_groups from the options every optimizer has, and the optimizer's own keywords."""
    groups = param_groups(
        model, options["lr"], options["weight_decay"], options.pop("decay_norm_and_bias"), options.pop("norm_lr_scale")
    )
    return groups, options


def build_optimizer(cfg: OptimizerConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    return builder("optimizer", cfg)(model, **kwargs(cfg))


# Newton-Schulz quintic coefficients chosen to maximize the slope at zero (airbench94_muon's)
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def orthogonalize(g: torch.Tensor, steps: int, eps: float, bf16: bool) -> torch.Tensor:
    """Roughly U V^T for g = U S V^T, by a Newton-Schulz iteration on g / |g| (so every
    singular value starts <= 1). The coefficients push small singular values up fast rather
    than converge: the result's singular values land in about [0.5, 1.5], which trains as
    well as exact orthogonalization at a fraction of the cost. Works on the wide
    orientation, where X X^T is the smaller product."""
    a, b, c = NS_COEFFICIENTS
    x = g.bfloat16() if bf16 else g.clone()
    x /= x.norm() + eps
    tall = g.size(0) > g.size(1)
    if tall:
        x = x.T
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


class Muon(torch.optim.Optimizer):
    """Two update rules in one optimizer, chosen per parameter group by its `muon` flag.

    - Muon (conv filters): heavy-ball or Nesterov momentum, then the update is the momentum
      orthogonalized (each filter bank's matrix out x in*k*k, see orthogonalize) times lr: a
      step of the same size in every direction, whatever the gradient's scale. Before each
      step the filters are renormalized to norm sqrt(out channels), which stands in for
      weight decay (the orthogonalized step alone would grow them).
    - SGD (everything else): PyTorch's SGD with momentum, coupled weight decay, no dampening.

    torch.optim.Muon takes 2-D parameters only, keeps its momentum as an average rather than
    a sum, scales its learning rate by shape and has no weight normalization: not this update.
    """

    def __init__(self, groups: list[dict], ns_steps: int = 3, ns_eps: float = 1e-7, ns_bf16: bool = True):
        defaults = {"lr": 0.0, "momentum": 0.0, "nesterov": False, "weight_decay": 0.0, "muon": False}
        super().__init__(groups, defaults)
        self.ns_steps, self.ns_eps, self.ns_bf16 = ns_steps, ns_eps, ns_bf16

    @torch.no_grad()
    def step(self, closure=None):
        loss = None if closure is None else closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                d = self._momentum(p, group)
                if group["muon"]:
                    p.mul_(len(p) ** 0.5 / p.norm())
                    d = orthogonalize(d.reshape(len(d), -1), self.ns_steps, self.ns_eps, self.ns_bf16).view(d.shape)
                p.add_(d, alpha=-group["lr"])
        return loss

    def _momentum(self, p: torch.Tensor, group: dict) -> torch.Tensor:
        grad = cast(torch.Tensor, p.grad)  # step() passes parameters with a gradient only
        d = grad if not group["weight_decay"] else grad.add(p, alpha=group["weight_decay"])
        m = group["momentum"]
        if not m:
            return d
        state = self.state[p]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(d)
        buf = state["momentum_buffer"].mul_(m).add_(d)
        return d.add(buf, alpha=m) if group["nesterov"] else buf


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


def build_scheduler(cfg: SchedulerConfig, optimizer: torch.optim.Optimizer, total_steps: int, steps_per_epoch: int):
    """The schedule over `total_steps` optimizer steps, with a linear warmup on top when
    scheduler.warmup_epochs > 0."""
    options = kwargs(cfg)
    warmup = warmup_steps(options.pop("warmup_epochs"), steps_per_epoch)
    schedule = (
        builder("scheduler", cfg)(optimizer, total_steps, steps_per_epoch, **options)
        if builds("scheduler", cfg)
        else None
    )
    return Warmup(optimizer, schedule, warmup) if warmup > 0 else schedule
