"""optim.py: warmup on top of any schedule, and weight decay only where it belongs."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from cifar_exp.config_model import Airbench94Config, SpeedNetConfig
from cifar_exp.config_optim import ConstantConfig, CosineConfig, MuonConfig, OneCycleConfig, SGDConfig, TriangleConfig
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


def _muon(model: torch.nn.Module, **keys) -> torch.optim.Optimizer:
    return build_optimizer(OmegaConf.merge(OmegaConf.structured(MuonConfig), keys), model)


def test_muon_takes_the_filters_and_sgd_the_rest_with_the_same_decay_per_step():
    model = build_model(OmegaConf.structured(Airbench94Config), 10)
    opt = _muon(model, lr=0.2, aux_lr=8.0, bias_lr=2.0, weight_decay=1e-3)
    by_kind = {(g["muon"], g["lr"], g.get("epochs")): g for g in opt.param_groups}
    filters, weights = by_kind[(True, 0.2, None)], by_kind[(False, 8.0, None)]
    biases, whiten_bias = by_kind[(False, 2.0, None)], by_kind[(False, 2.0, 3)]
    assert all(p.ndim == 4 for p in filters["params"]) and filters["weight_decay"] == 0.0
    assert weights["params"] == [model.head.weight] and whiten_bias["params"] == [model.whiten.bias]
    assert all(p.ndim == 1 for p in biases["params"])
    assert (
        biases["lr"] * biases["weight_decay"]
        == pytest.approx(8.0 * 1e-3)
        == whiten_bias["lr"] * whiten_bias["weight_decay"]
    )
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    exempt = _muon(model, weight_decay=1e-3, decay_norm_and_bias=False).param_groups
    assert {g["weight_decay"] for g in exempt if g["params"][0].ndim == 1} == {0.0}


def test_a_muon_step_renormalizes_the_filters_and_moves_them_a_fixed_distance():
    """The filters' norm is reset to sqrt(out channels) before each step, and the step's
    size depends on the learning rate, not on the gradient's scale."""
    steps = []
    for scale in (1.0, 1000.0):
        torch.manual_seed(0)
        conv = torch.nn.Conv2d(4, 8, 3, bias=False)
        opt = _muon(conv, lr=0.1, momentum=0.0, nesterov=False, ns_bf16=False)
        with torch.no_grad():
            conv.weight.mul_(5.0)
        before = conv.weight.detach().clone()
        conv.weight.grad = scale * torch.randn_like(conv.weight)
        opt.step()
        renormalized = before * (8**0.5 / before.norm())
        steps.append(conv.weight.detach() - renormalized)
    assert float(steps[0].norm()) == pytest.approx(float(steps[1].norm()), rel=1e-4)
    assert 0.5 < float(steps[0].norm()) / (0.1 * 8**0.5) < 1.5  # lr x sqrt(rank 8): singular values near 1


def test_muon_resumes_to_the_same_steps():
    def train(resume_at=None):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 2))
        opt = _muon(model, ns_bf16=False)
        x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 2, (8,))
        for i in range(4):
            if i == resume_at:
                state = opt.state_dict()
                opt = _muon(model, ns_bf16=False)
                opt.load_state_dict(state)
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        return [p.detach() for p in model.parameters()]

    for a, b in zip(train(), train(resume_at=2)):
        assert torch.equal(a, b)


def test_a_group_that_trains_for_fewer_epochs_runs_the_triangle_over_its_own():
    model = build_model(OmegaConf.structured(Airbench94Config), 10)
    opt = _muon(model)
    cfg = OmegaConf.merge(
        OmegaConf.structured(TriangleConfig), {"start_factor": 1.0, "peak_at": 0.0, "end_factor": 0.0}
    )
    sched = build_scheduler(cfg, opt, 80, 10)
    short = next(i for i, g in enumerate(opt.param_groups) if g.get("epochs") == 3)
    rates = []
    for _ in range(40):
        rates.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    base = [r for r in rates[0]]
    assert [r[short] / base[short] for r in rates[:31:10]] == pytest.approx([1.0, 2 / 3, 1 / 3, 0.0])
    assert rates[39][short] == 0.0
    other = 1 - short if short == 0 else 0
    assert [r[other] / base[other] for r in rates[::20]] == pytest.approx([1.0, 0.75])


def _run_schedule(opt, schedule, steps: int) -> list[list[float]]:
    """Each group's rate at every step."""
    rates = [[g["lr"] for g in opt.param_groups]]
    for _ in range(steps - 1):
        opt.step()
        schedule.step()
        rates.append([g["lr"] for g in opt.param_groups])
    return rates


@pytest.mark.parametrize(
    "max_lr, filters_peak, sgd_peak",
    [(None, 0.24, 0.01), (0.48, 0.48, 0.02)],
)
def test_onecycle_peaks_each_muon_group_at_its_own_rate(max_lr, filters_peak, sgd_peak):
    """Muon's filters peak at the Muon rate, its SGD groups at theirs (max_lr, given in
    units of optimizer.lr, scales every group alike)."""
    model = build_model(OmegaConf.structured(Airbench94Config), 10)
    opt = _muon(model, lr=0.24, aux_lr=0.01, bias_lr=0.01)
    schedule = build_scheduler(OmegaConf.structured(OneCycleConfig(max_lr=max_lr, pct_start=0.5)), opt, 20, 10)
    rates = _run_schedule(opt, schedule, 20)
    peaks = [max(step[i] for step in rates) for i in range(len(opt.param_groups))]
    expected = [filters_peak if g["muon"] else sgd_peak for g in opt.param_groups]
    assert peaks == pytest.approx(expected, rel=1e-3)


def test_cosine_anneals_each_group_down_to_its_own_floor():
    """eta_min=0.1 with Muon at 0.24: the SGD groups at 0.01 fall to 0.1 x 0.01 / 0.24,
    never rise towards 0.1."""
    model = build_model(OmegaConf.structured(Airbench94Config), 10)
    opt = _muon(model, lr=0.24, aux_lr=0.01, bias_lr=0.01)
    start = [g["lr"] for g in opt.param_groups]
    rates = _run_schedule(opt, build_scheduler(OmegaConf.structured(CosineConfig(eta_min=0.1)), opt, 50, 10), 51)
    for i in range(len(opt.param_groups)):
        series = [step[i] for step in rates]
        assert max(series) == pytest.approx(start[i]) and series == sorted(series, reverse=True)
        assert series[-1] == pytest.approx(0.1 * start[i] / 0.24)


def test_onecycle_keeps_the_norm_layers_faster_rate():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    opt = build_optimizer(OmegaConf.structured(SGDConfig(lr=0.01, norm_lr_scale=64.0)), model)
    schedule = build_scheduler(OmegaConf.structured(OneCycleConfig(max_lr=0.1, pct_start=0.5)), opt, 20, 10)
    rates = _run_schedule(opt, schedule, 20)
    peaks = sorted(max(step[i] for step in rates) for i in range(len(opt.param_groups)))
    assert peaks == pytest.approx([0.1, 6.4], rel=1e-3)
