"""experiment=airbench94 is airbench94's recipe: the same network, whitening, parameter
groups, schedule and lookahead as the `airbench` package's own code, step for step."""

from __future__ import annotations

import math
from pathlib import Path
from unittest import mock

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from cifar_exp.config import Airbench94Config, SGDConfig, TriangleConfig
from cifar_exp.loop import Lookahead
from cifar_exp.models import Airbench94Net
from cifar_exp.optim import build_optimizer, build_scheduler

airbench = pytest.importorskip("airbench")  # a dev dependency: installed wherever the tests run
from airbench import lib_airbench94 as ab  # noqa: E402
from airbench import utils as ab_utils  # noqa: E402

PRESET = OmegaConf.load(Path(__file__).parents[1] / "conf" / "experiment" / "airbench94.yaml")


def reference_net() -> nn.Module:
    """airbench's make_net94 on the CPU in float32 (it calls .half().cuda())."""
    def identity(module, *args, **kwargs):
        return module

    with mock.patch.object(nn.Module, "half", identity), mock.patch.object(nn.Module, "cuda", identity):
        return ab.make_net94()


def twin_nets() -> tuple[nn.Module, Airbench94Net]:
    """airbench's net and ours with the same weights (their state dicts list the same tensors
    in the same order)."""
    torch.manual_seed(0)
    theirs = reference_net().to(memory_format=torch.contiguous_format)
    ours = Airbench94Net()
    assert [v.shape for v in theirs.state_dict().values()] == [v.shape for v in ours.state_dict().values()]
    ours.load_state_dict(dict(zip(ours.state_dict(), theirs.state_dict().values())))
    return theirs, ours


def images(n: int = 64, seed: int = 1) -> torch.Tensor:
    """Smooth random images: neighbouring pixels and channels correlate, as in photographs."""
    noise = torch.randn(n, 3, 34, 34, generator=torch.Generator().manual_seed(seed))
    mixed = torch.einsum("ij,njhw->nihw", torch.tensor([[1.0, 0.5, 0.2], [0.5, 1.0, 0.5], [0.2, 0.5, 1.0]]), noise)
    return nn.functional.avg_pool2d(mixed, 3, stride=1)


def test_the_network_computes_what_airbench_computes():
    theirs, ours = twin_nets()
    x = images()
    for mode in (True, False):
        theirs.train(mode), ours.train(mode)
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-6)
    trainable = [n for n, p in ours.named_parameters() if p.requires_grad]
    assert "whiten.weight" not in trainable and not any(n.endswith(("2.weight", "5.weight")) for n in trainable)


def test_gradients_at_tied_maxima_go_where_airbench_sends_them():
    """Flat image regions (4x4 blocks here) make equal values, so the final max-pool meets
    ties; a max-pool's gradient goes to one of them, torch.amax's is split between them."""
    theirs, ours = twin_nets()
    x = nn.functional.interpolate(images(64)[:, :, :8, :8], scale_factor=4, mode="nearest")
    y = torch.arange(64) % 10
    for net in (theirs, ours):
        nn.functional.cross_entropy(net(x), y).backward()
    for (name, a), b in zip(ours.named_parameters(), theirs.parameters()):
        if a.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_the_whitening_init_matches_airbench():
    theirs, ours = twin_nets()
    x = images(200)
    ab_utils.init_whitening_conv(theirs[0], x)
    ours.init_from_data(x)
    torch.testing.assert_close(ours.whiten.weight, theirs[0].weight, rtol=1e-4, atol=1e-4)
    # whitened: the first layer's outputs (one sign of each filter) are uncorrelated with
    # second moments of about 1 (eps = 5e-4 shrinks the faintest directions a little)
    out = nn.functional.conv2d(x, ours.whiten.weight[:12]).transpose(0, 1).reshape(12, -1)
    moments = out @ out.T / out.shape[1]
    assert (moments - torch.diag(moments.diag())).abs().max() < 1e-3
    assert 0.7 < moments.diag().min() and moments.diag().max() < 1.0


def reference_optimizer(net: nn.Module, total_steps: int):
    """airbench's train(): its decoupled hyperparameters turned into torch SGD groups."""
    hyp = ab.hyp["opt"]
    kilostep_scale = 1024 * (1 + 1 / (1 - hyp["momentum"]))
    lr = hyp["lr"] / kilostep_scale
    wd = hyp["weight_decay"] * hyp["batch_size"] / kilostep_scale
    lr_biases = lr * hyp["bias_scaler"]
    norm_biases = [p for k, p in net.named_parameters() if "norm" in k and p.requires_grad]
    other = [p for k, p in net.named_parameters() if "norm" not in k and p.requires_grad]
    opt = torch.optim.SGD([dict(params=norm_biases, lr=lr_biases, weight_decay=wd / lr_biases),
                           dict(params=other, lr=lr, weight_decay=wd / lr)], momentum=hyp["momentum"], nesterov=True)
    x = torch.arange(1 + total_steps)
    xp = torch.tensor([0, int(0.23 * total_steps), total_steps])
    fp = torch.tensor([0.2, 1, 0.07])
    schedule = torch.from_numpy(__import__("numpy").interp(x.numpy(), xp.numpy(), fp.numpy()))
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda i: float(schedule[i]))


def test_training_steps_with_lookahead_match_airbench():
    """Six steps of airbench's loop (sum loss, its SGD groups, triangle, lookahead every 5)
    and of ours (mean loss and the preset's lr, weight decay, norm_lr_scale, schedule)."""
    theirs, ours = twin_nets()
    steps = 6
    ref_opt, ref_sched = reference_optimizer(theirs, steps)
    ref_lookahead = ab_utils.LookaheadState(theirs)
    alpha = 0.95 ** 5 * (torch.arange(steps + 1) / steps) ** 3

    o = OmegaConf.merge(OmegaConf.structured(SGDConfig), PRESET.optimizer)
    s = OmegaConf.merge(OmegaConf.structured(TriangleConfig), PRESET.scheduler)
    opt = build_optimizer(o, ours)
    sched = build_scheduler(s, opt, steps, steps)
    lookahead = Lookahead(ours, PRESET.trainer.lookahead_every, 0.95 ** 5, steps)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.2, reduction="none")
    for step in range(1, steps + 1):
        x, y = images(32, seed=step), torch.randint(0, 10, (32,), generator=torch.Generator().manual_seed(step))
        for net, optimizer, scheduler, reduce in ((theirs, ref_opt, ref_sched, torch.sum),
                                                  (ours, opt, sched, torch.mean)):
            # airbench's lr is per 1024 images of a summed loss: scale our batch of 32 to match
            loss = reduce(loss_fn(net(x), y)) * (32 / 1024 if reduce is torch.mean else 1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        if step % 5 == 0:
            ref_lookahead.update(theirs, decay=alpha[step].item())
        if step == steps:
            ref_lookahead.update(theirs, decay=1.0)
        lookahead.step()
    for (name, a), b in zip(ours.state_dict().items(), theirs.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


def test_the_preset_trains_airbench94s_step_count():
    hyp = ab.hyp["opt"]
    steps_per_epoch = 50_000 // PRESET.dataset.batch_size  # drop_last: 48 full batches
    assert PRESET.dataset.batch_size == hyp["batch_size"] and PRESET.dataset.drop_last
    assert PRESET.trainer.max_steps == math.ceil(steps_per_epoch * hyp["train_epochs"])
    assert PRESET.epochs >= hyp["train_epochs"] and PRESET.trainer.label_smoothing == hyp["label_smoothing"]
    assert Airbench94Config().whiten_bias_epochs == hyp["whiten_bias_epochs"]
