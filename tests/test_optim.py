"""optim.py: warmup on top of any schedule, and weight decay only where it belongs."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from cifar_exp.config import ConstantConfig, CosineConfig, OneCycleConfig, SGDConfig, SpeedNetConfig, TriangleConfig
from cifar_exp.models import build_model
from cifar_exp.optim import build_optimizer, build_scheduler


def _lrs(schedule_cfg, steps=100, per_epoch=10, resume_at=None):
    opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
    sched = build_scheduler(schedule_cfg, opt, steps, per_epoch)
    lrs = []
    for i in range(steps):
        if i == resume_at:  # a resume rebuilds both and loads their states
            state = (opt.state_dict(), sched.state_dict())
            opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
            sched = build_scheduler(schedule_cfg, opt, steps, per_epoch)
            opt.load_state_dict(state[0])
            sched.load_state_dict(state[1])  # only with warmup, which always builds one
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        if sched is not None:  # no schedule and no warmup: a constant rate
            sched.step()
    return lrs


@pytest.mark.parametrize("schema", [ConstantConfig, CosineConfig, OneCycleConfig])
def test_warmup_ramps_from_one_percent_onto_the_schedule(schema):
    plain = _lrs(OmegaConf.structured(schema))
    warm = _lrs(OmegaConf.merge(OmegaConf.structured(schema), {"warmup_epochs": 1.0}))
    assert warm[0] == pytest.approx(0.01 * plain[0])
    assert warm[5] == pytest.approx((0.01 + 0.99 * 0.5) * plain[5])
    assert warm[10:] == pytest.approx(plain[10:])  # after it, exactly the schedule
    resumed = _lrs(OmegaConf.merge(OmegaConf.structured(schema), {"warmup_epochs": 1.0}), resume_at=4)
    assert resumed == pytest.approx(warm)


def test_norm_and_bias_parameters_can_go_without_weight_decay():
    model = build_model(OmegaConf.structured(SpeedNetConfig), 10)
    cfg = OmegaConf.merge(OmegaConf.structured(SGDConfig), {"weight_decay": 5e-4, "decay_norm_and_bias": False})
    decayed, exempt = build_optimizer(cfg, model).param_groups
    assert decayed["weight_decay"] == 5e-4 and exempt["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decayed["params"]) and all(p.ndim == 1 for p in exempt["params"])
    assert len(decayed["params"]) + len(exempt["params"]) == len(list(model.parameters()))
    [single] = build_optimizer(OmegaConf.structured(SGDConfig), model).param_groups
    assert len(single["params"]) == len(list(model.parameters()))


def test_norm_layers_train_faster_with_the_same_decay_per_step():
    model = build_model(OmegaConf.structured(SpeedNetConfig), 10)
    cfg = OmegaConf.merge(OmegaConf.structured(SGDConfig), {"lr": 0.1, "weight_decay": 0.02, "norm_lr_scale": 64.0})
    other, norm = build_optimizer(cfg, model).param_groups
    bn = [p for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d) for p in m.parameters()]
    assert {id(p) for p in norm["params"]} == {id(p) for p in bn}
    assert norm["lr"] == pytest.approx(6.4) and other["lr"] == 0.1
    assert norm["lr"] * norm["weight_decay"] == pytest.approx(other["lr"] * other["weight_decay"])


def test_triangle_rises_to_its_peak_and_falls_to_its_end():
    cfg = OmegaConf.merge(
        OmegaConf.structured(TriangleConfig), {"start_factor": 0.2, "peak_at": 0.25, "end_factor": 0.1}
    )
    lrs = _lrs(cfg, steps=100)
    assert lrs[0] == pytest.approx(0.02) and max(lrs) == pytest.approx(0.1) and lrs.index(max(lrs)) == 25
    assert lrs[99] == pytest.approx(0.1 * (1 - 0.9 * 74 / 75))
    assert all(a < b for a, b in zip(lrs[:25], lrs[1:26])) and all(a > b for a, b in zip(lrs[25:], lrs[26:]))
    assert _lrs(cfg, steps=100, resume_at=40) == pytest.approx(lrs)
