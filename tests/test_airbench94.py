"""experiment=airbench94 is airbench94's recipe: the same network, whitening, parameter
groups, schedule and lookahead as the `airbench` package's own code, step for step."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from cifar_exp.config_model import Airbench94Config
from cifar_exp.loader import Split
from cifar_exp.models import Airbench94Net

from helpers import airbench_net, smooth_images

airbench = pytest.importorskip("airbench")  # a dev dependency: installed wherever the tests run
from airbench import lib_airbench94 as ab  # noqa: E402
from airbench import utils as ab_utils  # noqa: E402

PRESET = OmegaConf.load(Path(__file__).parents[1] / "conf" / "experiment" / "airbench94.yaml")


def twin_nets() -> tuple[nn.Module, Airbench94Net]:
    """airbench's net and ours with the same weights (their state dicts list the same tensors
    in the same order)."""
    torch.manual_seed(0)
    theirs = airbench_net()
    ours = Airbench94Net()
    assert [v.shape for v in theirs.state_dict().values()] == [v.shape for v in ours.state_dict().values()]
    ours.load_state_dict(dict(zip(ours.state_dict(), theirs.state_dict().values())))
    return theirs, ours


def test_the_network_computes_what_airbench_computes():
    theirs, ours = twin_nets()
    x = smooth_images()
    for mode in (True, False):
        theirs.train(mode), ours.train(mode)
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-6)
    trainable = [n for n, p in ours.named_parameters() if p.requires_grad]
    assert "whiten.weight" not in trainable and not any(n.endswith(("2.weight", "5.weight")) for n in trainable)


def test_gradients_at_tied_maxima_go_where_airbench_sends_them():
    """Flat image regions (4x4 blocks here) make equal values, so the final max-pool meets
    ties; a max-pool's gradient goes to one of them, torch.amax's is split between them."""
    theirs, ours = twin_nets()
    x = nn.functional.interpolate(smooth_images(64)[:, :, :8, :8], scale_factor=4, mode="nearest")
    y = torch.arange(64) % 10
    for net in (theirs, ours):
        nn.functional.cross_entropy(net(x), y).backward()
    for (name, a), b in zip(ours.named_parameters(), theirs.parameters()):
        if a.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_the_whitening_init_matches_airbench():
    theirs, ours = twin_nets()
    x = smooth_images(200)
    ab_utils.init_whitening_conv(theirs[0], x)
    ours.init_from_data(x)
    torch.testing.assert_close(ours.whiten.weight, theirs[0].weight, rtol=1e-4, atol=1e-4)
    # whitened: the first layer's outputs (one sign of each filter) are uncorrelated with
    # second moments of about 1 (eps = 5e-4 shrinks the faintest directions a little)
    out = nn.functional.conv2d(x, ours.whiten.weight[:12]).transpose(0, 1).reshape(12, -1)
    moments = out @ out.T / out.shape[1]
    assert (moments - torch.diag(moments.diag())).abs().max() < 1e-3
    assert 0.7 < moments.diag().min() and moments.diag().max() < 1.0


@pytest.mark.slow
def test_the_preset_trains_as_airbench_train94_does_step_for_step(tmp_path, monkeypatch):
    """airbench's own `train94` and the preset's composed config through `build_trainer`,
    from the same weights on the same batches, in float64, on a narrow net (as
    benchmarks/airbench_equivalence.py does at full size on real images): 4 epochs of 2 steps
    cover the whitening init, both parameter groups, the schedule, the whitening bias frozen
    after epoch 3, a lookahead pull and the final jump, and the TTA. With airbench's float32
    learning rates and decays replayed (the framework's own are checked to agree to 1e-6 of
    the schedule's peak), any difference in the recipe would stand far above float64
    rounding."""
    monkeypatch.syspath_prepend(Path(__file__).parents[1] / "benchmarks")
    import airbench_equivalence as eq

    def split(n: int, seed: int) -> Split:
        x = smooth_images(n, seed)
        x = ((x - x.min()) / (x.max() - x.min()) * 255).round().to(torch.uint8)
        return Split(x, torch.randint(0, 10, (n,), generator=torch.Generator().manual_seed(seed)))

    # a narrow net and batches of 128 (the preset's learning rate scaled to them): float64
    # convolutions are slow on a CPU
    widths, batch, epochs = (8, 16, 16), 128, 4
    train, test = split(2 * batch, seed=1), split(200, seed=2)
    cfg = eq.preset_config(epochs, steps_per_epoch=2, widths=widths, batch=batch)
    normalize = eq.Float64Normalize(cfg.dataset.mean, cfg.dataset.std, torch.device("cpu"))
    monkeypatch.chdir(tmp_path)  # airbench reads its data from the working directory
    init, ref_steps, ref_logits, reference, schedules = eq.airbench_side(
        train, test, normalize, tmp_path, epochs, seed=0, widths=widths, batch=batch
    )
    with schedules.replayed(loss_scale=batch):
        steps, logits, model = eq.framework_side(cfg, train, test, [str(c) for c in range(10)], normalize, init)

    assert len(steps) == 2 * epochs and len(schedules.decays) == 2  # the pull at step 5, the final jump
    differences = eq.step_differences(ref_steps, reference, steps, model)
    assert max(differences)[0] < 1e-12, differences
    # the framework's TTA averages float32 logits
    torch.testing.assert_close(logits, ref_logits.float(), rtol=1e-6, atol=1e-6)


def test_the_preset_trains_airbench94s_step_count():
    hyp = ab.hyp["opt"]
    steps_per_epoch = 50_000 // PRESET.dataset.batch_size  # drop_last: 48 full batches
    assert PRESET.dataset.batch_size == hyp["batch_size"] and PRESET.dataset.drop_last
    assert PRESET.trainer.max_steps == math.ceil(steps_per_epoch * hyp["train_epochs"])
    assert PRESET.epochs >= hyp["train_epochs"] and PRESET.trainer.label_smoothing == hyp["label_smoothing"]
    assert Airbench94Config().whiten_bias_epochs == hyp["whiten_bias_epochs"]
