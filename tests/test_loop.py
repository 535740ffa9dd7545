"""loop.py: one training step with accumulation, clipping and an EMA of the weights."""

from __future__ import annotations

import copy

import pytest
import torch

from cifar_exp.config import TrainerConfig
from cifar_exp.loader import Normalize, Sampling, Split, TensorLoader
from cifar_exp.loop import Trainer
from cifar_exp.models import SimpleCNN

from helpers import tensor_loader

CPU = torch.device("cpu")


def _data(n=512) -> Split:
    g = torch.Generator().manual_seed(0)
    return Split(
        torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g), torch.randint(0, 10, (n,), generator=g)
    )


def _trainer(model, autocast_dtype=None, **settings) -> Trainer:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.9)
    return Trainer(
        model, optimizer, scheduler, torch.nn.CrossEntropyLoss(), CPU, TrainerConfig(**settings), autocast_dtype
    )


def _train(trainer: Trainer, loader: TensorLoader, epoch: int = 0) -> list[bool]:
    """One epoch as the run's loop steps it: its last batch closes the epoch; returns which
    batches made an optimizer step."""
    trainer.begin_epoch(epoch, 0)
    return [trainer.step(x, y, closes=i + 1 == len(loader)) for i, (x, y) in enumerate(loader.epoch(epoch))]


def _epoch(trainer: Trainer, batch: int) -> list[bool]:
    return _train(trainer, tensor_loader(_data(), batch, Normalize([0.5] * 3, [0.5] * 3, CPU), shuffle=True, seed=1))


def test_two_batches_of_64_accumulated_step_like_one_batch_of_128():
    torch.manual_seed(0)
    start = SimpleCNN()  # no BatchNorm: the equivalence is exact up to float rounding
    big, small = _trainer(copy.deepcopy(start)), _trainer(copy.deepcopy(start), accumulate_grad_batches=2)
    _epoch(big, 128)
    _epoch(small, 64)
    for a, b in zip(big.module.parameters(), small.module.parameters()):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
    assert big.scheduler.last_epoch == small.scheduler.last_epoch == 4  # schedules count optimizer steps
    assert big.meter.summary()["loss"] == pytest.approx(small.meter.summary()["loss"], abs=1e-4)


def test_a_partial_group_is_applied_at_the_epoch_end():
    trainer = _trainer(SimpleCNN(), accumulate_grad_batches=3)
    stepped = _epoch(trainer, 128)  # 4 batches: one group of 3, then one of 1
    assert stepped == [False, False, True, True]
    assert trainer.scheduler.last_epoch == 2 and trainer.at_boundary


def test_clipping_bounds_the_step_and_keeps_the_norm_before_it():
    torch.manual_seed(0)
    model = SimpleCNN()
    before = [p.detach().clone() for p in model.parameters()]
    clip = TrainerConfig(gradient_clip_val=1e-3)
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=1.0), None, torch.nn.CrossEntropyLoss(), CPU, clip)
    x, y = next(tensor_loader(_data(), 128, Normalize([0.5] * 3, [0.5] * 3, CPU), shuffle=False).epoch(0))
    trainer.step(x, y)
    change = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before)]).norm()
    assert float(trainer.grad_norm) > 1e-2 and float(change) <= 1e-3 * (1 + 1e-4)


def test_the_ema_follows_the_weights_is_evaluated_and_round_trips():
    torch.manual_seed(0)
    trainer = _trainer(SimpleCNN(), ema_decay=0.9)
    _epoch(trainer, 128)
    ema, raw = trainer.ema.module.state_dict(), trainer.module.state_dict()
    assert any(not torch.equal(ema[k], raw[k]) for k in raw)
    assert trainer.eval_model is trainer.ema.module and trainer.final_module is trainer.ema.module
    state = trainer.state_dict()
    fresh = _trainer(SimpleCNN(), ema_decay=0.9)
    fresh.load_state_dict(copy.deepcopy(state))
    assert all(torch.equal(fresh.ema.module.state_dict()[k], ema[k]) for k in ema)
    assert int(fresh.ema.n_averaged) == 4


def test_translate_tta_averages_the_shifted_views():
    seen = []

    class Probe(torch.nn.Module):
        def forward(self, x):
            seen.append(x.clone())
            return torch.nn.functional.one_hot(torch.arange(len(x)) % 2, 2).float() * x.mean()

    x = torch.rand(2, 3, 4, 4)
    trainer = _trainer(torch.nn.Conv2d(3, 3, 1), eval_flip=True, eval_translate=1)
    logits = trainer.tta_logits(Probe(), x)
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")
    views = [
        x,
        x.flip(3),
        padded[:, :, :4, :4],
        padded[:, :, :4, :4].flip(3),
        padded[:, :, 2:, 2:],
        padded[:, :, 2:, 2:].flip(3),
    ]
    assert len(seen) == 6 and all(torch.equal(a, b) for a, b in zip(seen, views))
    means = [v.mean() for v in views]
    expected = ((means[0] + means[1]) / 2 + ((means[2] + means[3]) / 2 + (means[4] + means[5]) / 2) / 2) / 2
    torch.testing.assert_close(logits[0, 0], expected)


def test_lookahead_pulls_the_weights_to_the_slow_copy_and_round_trips():
    from cifar_exp.loop import Lookahead

    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    look = Lookahead(model, every=2, decay=0.5, total_steps=4)
    with torch.no_grad():
        model.weight.fill_(3.0)
    look.step()  # step 1: nothing
    assert model.weight[0, 0].item() == 3.0
    look.step()  # step 2: d = 0.5 * (2/4)^3 = 1/16: slow = 1 + (3 - 1) * 15/16
    assert model.weight[0, 0].item() == pytest.approx(1 + 2 * 15 / 16)
    copy_ = Lookahead(model, every=2, decay=0.5, total_steps=4)
    copy_.load_state_dict(look.state_dict())
    assert copy_.count == 2 and torch.equal(copy_.slow["weight"], look.slow["weight"])


# --- precision: bf16 autocast where the hardware has the units -------------------------------
def _synthetic_loader():

    from cifar_exp.config_dataset import SyntheticConfig
    from cifar_exp.data import load_dataset

    data = load_dataset(SyntheticConfig(train_size=512, test_size=64), CPU)
    return data.loader("train", 64, Sampling(shuffle=True, seed=0))


def test_a_bf16_run_reaches_the_float32_runs_loss():
    """The same 3 epochs of learnable images: bf16 autocast keeps float32 weights and loses
    no accuracy that matters (on a CPU without bf16 units it is emulated: slow, still right)."""
    loader, losses = _synthetic_loader(), {}
    for dtype in (None, torch.bfloat16):
        torch.manual_seed(0)
        trainer = _trainer(SimpleCNN(), autocast_dtype=dtype)
        for epoch in range(3):
            _train(trainer, loader, epoch)
        losses[dtype] = trainer.meter.summary()["loss"]
        assert all(p.dtype == torch.float32 for p in trainer.module.parameters())
    assert losses[None] < 1.0  # it learned
    assert losses[torch.bfloat16] == pytest.approx(losses[None], rel=0.1, abs=0.05)


PRECISIONS = [
    # amp, cpu has bf16, deterministic -> precision or the refusal
    ("auto", False, False, "float32"),
    ("auto", True, False, "bf16"),
    ("auto", True, True, "float32"),
    ("true", True, False, "bf16"),
    ("True", True, True, "bf16"),
    ("false", True, False, "float32"),
    ("False", False, False, "float32"),
    ("true", False, False, "trainer.amp=true is invalid on cpu: this CPU has no native bf16 units"),
]


@pytest.mark.parametrize("amp,native,deterministic,expected", PRECISIONS)
def test_amp_auto_true_false_on_the_cpu(amp, native, deterministic, expected, monkeypatch):
    from cifar_exp import runtime
    from cifar_exp.errors import UserError

    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: native)
    if expected.startswith("trainer.amp"):
        with pytest.raises(UserError, match=expected):
            runtime.pick_precision(amp, CPU, deterministic)
    else:
        assert runtime.pick_precision(amp, CPU, deterministic).name == expected


@pytest.mark.parametrize(
    "setting,device,expected",
    [("auto", "cpu", False), ("auto", "cuda", True), ("True", "cpu", True), ("false", "cuda", False)],
)
def test_compile_auto_is_on_for_cuda_only(setting, device, expected):
    from cifar_exp import runtime

    assert runtime.compiles(setting, torch.device(device))[0] is expected


def test_this_machines_cpu_flags_decide_auto():
    from pathlib import Path

    from cifar_exp import runtime

    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    native = "amx_bf16" in flags or "avx512_bf16" in flags
    assert runtime.cpu_has_bf16() == native
    assert runtime.pick_precision("auto", CPU).name == ("bf16" if native else "float32")
    assert runtime.pick_precision("auto", torch.device("mps")).name == "float32"
