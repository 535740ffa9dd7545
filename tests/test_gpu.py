"""GPU paths: mixed precision, device-resident data, NCCL. They run where CUDA exists."""

from __future__ import annotations

import re

import pytest
import torch

from helpers import FAST, tensor_loader, torchrun

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_cuda_run_with_autocast(cli, workdir):
    result = cli(*FAST, "epochs=2", "trainer.device=cuda", "trainer.amp=true", "mlflow.enabled=false")
    assert result.returncode == 0, result.output
    assert "device cuda:0" in result.output
    assert float(re.search(r"test images: (\d+\.\d\d) %", result.output).group(1)) > 50


def test_loader_keeps_data_and_batches_on_the_gpu():
    from cifar_exp.loader import Normalize, Split

    cuda = torch.device("cuda")
    split = Split(torch.randint(0, 255, (64, 3, 32, 32), dtype=torch.uint8), torch.arange(64)).to(cuda)
    loader = tensor_loader(split, 16, Normalize([0.5] * 3, [0.5] * 3, cuda), shuffle=True, crop=True)
    x, y = next(loader.epoch(0))
    assert x.is_cuda and y.is_cuda and x.dtype == torch.float32


def test_one_gpu_nccl_ddp_smoke(workdir):

    done = torchrun(1, *FAST, "trainer.device=cuda", "mlflow.enabled=false", cwd=workdir)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Accuracy of the network" in done.stdout


def test_one_gpu_ddp_with_sync_batchnorm_ema_and_accumulation(workdir):

    done = torchrun(
        1,
        *FAST,
        "trainer.device=cuda",
        "model=speed_net",
        "model.widths=[16,32,64]",
        "trainer.sync_batchnorm=true",
        "trainer.ema_decay=0.99",
        "trainer.accumulate_grad_batches=2",
        "mlflow.enabled=false",
        cwd=workdir,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Accuracy of the network" in done.stdout
