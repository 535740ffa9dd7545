"""experiment=airbench94_muon is airbench's record recipe, airbench94_muon.py in
github.com/KellerJordan/cifar10-airbench (its header: 94.01 % in 2.59 s on an A100), step
for step. That file is not in the `airbench` package, so this test carries a reference of
its own, written here from the file's recipe: its network is the package's make_net94 with
the head's output divided by its input width, and `reference_training` states the file's
optimizers, learning rates, schedules and loss."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from torch import nn

from cifar_exp.data import Dataset
from cifar_exp.distributed import World
from cifar_exp.loader import Sampling, Split
from cifar_exp.models import Airbench94Net
from cifar_exp.optim import orthogonalize
from cifar_exp.registry import register_configs
from cifar_exp.run import build_trainer

from helpers import airbench_net, smooth_images

pytest.importorskip("airbench")  # a dev dependency: installed wherever the tests run
sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import airbench_equivalence as eq  # noqa: E402

RECIPE = {"batch": 2000, "epochs": 8, "bias_lr": 0.053, "head_lr": 0.67, "muon_lr": 0.24, "wd_per_image": 2e-6}


def newton_schulz(g: torch.Tensor, steps: int = 3, eps: float = 1e-7) -> torch.Tensor:
    """The file's zeropower_via_newtonschulz5: X = G / (|G| + eps) on the wide side, then
    `steps` times X <- a X + (b A + c A^2) X with A = X X^T. The file runs it in bfloat16;
    here in G's dtype (float64), so that the comparison sees the recipe, not bf16 rounding."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g / (g.norm() + eps)
    x = x.T if g.size(0) > g.size(1) else x
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if g.size(0) > g.size(1) else x


def reference_training(net: nn.Sequential, batches: list, epochs: int, batch: int) -> list:
    """The file's `main`, on `batches` in order: the summed label-smoothed loss; Nesterov SGD
    (momentum 0.85, weight decay wd / lr) on the whitening bias (lr 0.053, decaying to 0 over
    its 3 epochs, then frozen), the BatchNorm biases (0.053) and the head (0.67); Muon
    (momentum 0.6, Nesterov; filters renormalized to sqrt(out channels) before each step) on
    the trainable conv filters at 0.24; every other rate decays as 1 - step / steps."""
    whiten_bias, head = net[0].bias, net[-2].weight
    norm_biases = [p for n, p in net.named_parameters() if "norm" in n and p.requires_grad]
    filters = [p for p in net.parameters() if p.ndim == 4 and p.requires_grad]
    wd = RECIPE["wd_per_image"] * batch
    bias_lr, head_lr = RECIPE["bias_lr"], RECIPE["head_lr"]
    sgd = torch.optim.SGD(
        [
            {"params": [whiten_bias], "lr": bias_lr, "weight_decay": wd / bias_lr},
            {"params": norm_biases, "lr": bias_lr, "weight_decay": wd / bias_lr},
            {"params": [head], "lr": head_lr, "weight_decay": wd / head_lr},
        ],
        momentum=0.85,
        nesterov=True,
    )
    initial = [g["lr"] for g in sgd.param_groups]
    buffers = [torch.zeros_like(p) for p in filters]
    total, whiten_steps = epochs * len(batches), 3 * len(batches)
    step = 0
    for _ in range(epochs):
        for x, y in batches:
            whiten_bias.requires_grad = step < whiten_steps
            nn.functional.cross_entropy(net(x), y, label_smoothing=0.2, reduction="sum").backward()
            sgd.param_groups[0]["lr"] = initial[0] * (1 - step / whiten_steps)
            for group, lr in zip(sgd.param_groups[1:], initial[1:]):
                group["lr"] = lr * (1 - step / total)
            sgd.step()
            with torch.no_grad():
                for p, buf in zip(filters, buffers):
                    buf.mul_(0.6).add_(p.grad)
                    update = p.grad.add(buf, alpha=0.6)
                    p.mul_(len(p) ** 0.5 / p.norm())
                    p.add_(
                        newton_schulz(update.reshape(len(p), -1)).view(p.shape),
                        alpha=-RECIPE["muon_lr"] * (1 - step / total),
                    )
            net.zero_grad(set_to_none=True)
            step += 1
    return batches


def preset_config(epochs: int, widths: tuple[int, int, int], batch: int):
    """The preset as composed, in float64 terms, for another batch: the framework averages the
    loss where the recipe sums it, so its SGD rates are per batch (x batch) and Muon's eps on
    the mean gradient is the recipe's / batch."""
    register_configs()
    with initialize_config_module("cifar_exp.conf", version_base="1.3"):
        cfg = compose(
            "config",
            overrides=[
                "experiment=airbench94_muon",
                "trainer.compile=false",
                "trainer.channels_last=false",
                "optimizer.ns_bf16=false",
                f"epochs={epochs}",
                f"model.widths=[{','.join(map(str, widths))}]",
                f"model.output_scale={1 / widths[-1]}",
                f"dataset.batch_size={batch}",
            ],
        )
    scale = batch / RECIPE["batch"]
    for key in ("aux_lr", "bias_lr"):
        cfg.optimizer[key] *= scale
    cfg.optimizer.ns_eps /= scale
    return cfg


def split(n: int, seed: int) -> Split:
    x = smooth_images(n, seed)
    x = ((x - x.min()) / (x.max() - x.min()) * 255).round().to(torch.uint8)
    return Split(x, torch.randint(0, 10, (n,), generator=torch.Generator().manual_seed(seed)))


@pytest.mark.slow
def test_the_preset_trains_as_airbench94_muon_does_step_for_step():
    """The preset's composed config through `build_trainer` and the reference above, from the
    same weights on the same batches, in float64, on a narrow net: 4 epochs of 2 steps cover
    both update rules, all four learning rates and their schedules, the whitening bias's own
    decay and its freeze after epoch 3, weight decay and the filters' renormalization."""
    widths, batch, epochs = (8, 16, 16), 64, 4
    train = split(2 * batch, seed=1)
    cfg = preset_config(epochs, widths, batch)
    normalize = eq.Float64Normalize(cfg.dataset.mean, cfg.dataset.std, torch.device("cpu"))
    data = Dataset(train, split(100, seed=2), None, [str(c) for c in range(10)], normalize)
    loader = data.loader("train", batch, Sampling(drop_last=True))
    trainer = build_trainer(cfg, data, len(loader), torch.device("cpu"), World())
    assert trainer.lookahead is None and type(trainer.optimizer).__name__ == "Muon"
    mine: list = []
    model = eq.recording(trainer.module.double(), mine)
    # the same start: the framework's initial weights (its whitening from the same images)
    # copied into the reference net, whose state dict lists the same tensors in the same order
    reference = airbench_net(widths).double()
    reference[-1].scale = 1 / widths[-1]
    theirs: list = []
    reference.load_state_dict(dict(zip(reference.state_dict(), model.state_dict().values())))
    eq.recording(reference, theirs)

    batches = list(loader.epoch(0))  # normalized, in float64
    reference_training(reference, batches, epochs, batch)
    for epoch in range(epochs):
        trainer.begin_epoch(epoch, 0)
        for x, y in loader.epoch(epoch):
            trainer.step(x, y)

    assert len(mine) == len(theirs) == 2 * epochs
    differences = eq.step_differences(theirs, reference, mine, model)
    # bit for bit here: with a batch of 64 the mean and the sum differ by a power of two
    assert max(differences)[0] < 1e-12, differences


def test_the_network_is_airbench94s_with_the_recipes_head():
    """Same forward as the package's make_net94 with the output divided by the head's input
    width; the head starts at unit std and the whitening bias at PyTorch's conv init."""
    cfg = preset_config(8, (64, 256, 256), 2000)
    assert cfg.model.output_scale == 1 / 256 and cfg.epochs == RECIPE["epochs"]
    assert cfg.dataset.batch_size == RECIPE["batch"] and cfg.trainer.lookahead_every == 0
    torch.manual_seed(0)
    ours = Airbench94Net(**{k: v for k, v in cfg.model.items() if k != "name"})
    assert ours.head.weight.std().item() == pytest.approx(1.0)
    assert 0.05 < ours.whiten.bias.abs().max() <= 1 / math.sqrt(12)
    theirs = airbench_net()
    theirs[-1].scale = 1 / 256
    theirs.load_state_dict(dict(zip(theirs.state_dict(), ours.state_dict().values())))
    x = smooth_images(8)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-6)


def test_newton_schulz_makes_the_singular_values_about_one():
    """Five iterations take every singular value of a random matrix into the recipe's band
    (about 0.5-1.5; three, the recipe's count, leave the smallest lower), in float64 and in
    bf16, for wide and tall matrices alike."""
    g = torch.randn(16, 72, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for m in (g, g.T):
        for bf16 in (False, True):
            s = torch.linalg.svdvals(orthogonalize(m, 5, 1e-7, bf16).double())
            assert 0.5 < s.min() and s.max() < 1.5, (m.shape, bf16, s)
        torch.testing.assert_close(orthogonalize(m, 3, 1e-7, False), newton_schulz(m))
