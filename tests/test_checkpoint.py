"""Checkpoints: atomic writes, clear errors for bad files, exact resume, evaluate/predict."""

from __future__ import annotations

import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import FAST, cli_env
from cifar_exp import checkpoint
from cifar_exp.errors import UserError


# --- the file format -----------------------------------------------------------------------
def test_atomic_save_never_leaves_a_torn_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    checkpoint.atomic_save({"format_version": 1, "v": torch.ones(3)}, path)

    def crash(obj, f):
        f.write(b"partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError):
        checkpoint.atomic_save({"format_version": 1, "v": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.equal(checkpoint.load(path)["v"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary left behind


def test_rng_state_round_trips_through_weights_only_load(tmp_path):
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    checkpoint.atomic_save({"format_version": 1, "rng": checkpoint.rng_state()}, tmp_path / "c.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1))
    checkpoint.set_rng_state(checkpoint.load(tmp_path / "c.pt")["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1)) == expected


@pytest.mark.parametrize("content,needle", [
    (None, "does not exist"),
    (b"\x00garbage", "unreadable"),
    ("not-a-checkpoint", "not a cifar_exp checkpoint"),
    ("future", "format version 99"),
])
def test_bad_checkpoint_files_are_named_in_one_error(tmp_path, content, needle):
    path = tmp_path / "c.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content == "not-a-checkpoint":
        torch.save({"weights": torch.ones(1)}, path)
    elif content == "future":
        torch.save({"format_version": 99}, path)
    with pytest.raises(UserError, match=needle) as err:
        checkpoint.load(path)
    assert str(path) in str(err.value)


def test_find_falls_back_to_the_newest_valid_checkpoint(tmp_path):
    d = tmp_path / "run" / "checkpoints"
    checkpoint.atomic_save({"format_version": 1, "epoch": 1}, d / "epoch_0001.pt")
    time.sleep(0.01)
    checkpoint.atomic_save({"format_version": 1, "epoch": 2}, d / "epoch_0002.pt")
    checkpoint.atomic_save({"format_version": 1, "epoch": 2}, d / "last.pt")
    (d / "last.pt").write_bytes((d / "last.pt").read_bytes()[:100])  # truncated
    said = []
    path, state = checkpoint.find(tmp_path / "run", log=said.append)
    assert path.name == "epoch_0002.pt" and state["epoch"] == 2
    assert "last.pt" in said[0] and "epoch_0002.pt" in said[0]


def test_writer_keeps_last_k_and_best(tmp_path):
    w = checkpoint.CheckpointWriter(tmp_path, keep_last=2, save_best=True, monitor="acc", mode="max")
    for epoch, acc in enumerate([0.1, 0.5, 0.3, 0.2], start=1):
        w.save({"epoch": epoch, "acc": acc}, epoch_end=True, is_best=acc == 0.5)
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == ["best.pt", "epoch_0003.pt", "epoch_0004.pt", "last.pt"]
    assert checkpoint.load(tmp_path / "best.pt")["acc"] == 0.5
    assert checkpoint.load(tmp_path / "last.pt")["epoch"] == 4


# --- resume, end to end ----------------------------------------------------------------------
EXACT = [*FAST, "trainer=deterministic", "trainer.log_every_n_steps=1", "dataset.train_size=1000"]
COMPARED = ("train/loss", "lr", "train/loss_epoch", "train/acc", "test/loss", "test/acc", "epoch")


def histories(workdir: Path, experiment: str) -> tuple[str, dict]:
    from mlflow.tracking import MlflowClient

    c = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    [run] = c.search_runs([c.get_experiment_by_name(experiment).experiment_id])
    out = {}
    for key in COMPARED:
        points = {}
        for m in c.get_metric_history(run.info.run_id, key):
            assert points.setdefault(m.step, m.value) == m.value, f"{key} step {m.step} has two values"
        out[key] = sorted(points.items())
    return run.info.status, out


def weights(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints/last.pt", weights_only=True)["trainer"]["model"]


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def straight(cli, workdir):
    """Four epochs without interruption: the reference for every resume test."""
    run_dir = workdir / "straight"
    result = cli(*EXACT, "epochs=4", "mlflow.experiment_name=straight", f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.output
    return run_dir, histories(workdir, "straight")[1]


@pytest.mark.slow
def test_two_epochs_then_resume_to_four_is_bit_identical(cli, workdir, straight):
    ref_dir, ref_metrics = straight
    first = workdir / "first"
    assert cli(*EXACT, "epochs=2", "mlflow.experiment_name=resumed", f"hydra.run.dir={first}").returncode == 0
    result = cli(f"resume={first}", "epochs=4", "trainer.progress=false")
    assert result.returncode == 0, result.output
    assert same_weights(weights(first), weights(ref_dir))
    status, metrics = histories(workdir, "resumed")  # one run: the resume logged into it
    for key in COMPARED:
        assert metrics[key] == ref_metrics[key], key
    assert status == "FINISHED"
    assert len(metrics["train/loss"]) == 4 * 8


@pytest.mark.slow
def test_sigkill_at_a_random_step_then_resume_auto_is_bit_identical(workdir, straight):
    ref_dir, ref_metrics = straight
    run_dir = workdir / "killed"
    # step checkpoints only: after the resumed epoch, no epoch checkpoint resets the position
    args = [sys.executable, "-m", "cifar_exp", *EXACT, "epochs=4", "checkpoint.every_n_steps=3",
            "checkpoint.every_n_epochs=4", "checkpoint.save_best=false",
            "model._target_=helpers.SlowCNN", "mlflow.experiment_name=killed",
            f"hydra.run.dir={run_dir}", "resume=auto"]
    proc = subprocess.Popen(args, cwd=workdir, env=cli_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    while not (run_dir / "checkpoints/last.pt").exists():
        assert proc.poll() is None, "finished before the first checkpoint"
        time.sleep(0.05)
    time.sleep(random.uniform(0.0, 1.0))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = torch.load(run_dir / "checkpoints/last.pt", weights_only=True)["trainer"]["global_step"]
    assert 0 < killed_at < 32
    done = subprocess.run(args, cwd=workdir, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "resuming from" in done.stdout
    assert same_weights(weights(run_dir), weights(ref_dir))
    status, metrics = histories(workdir, "killed")
    assert status == "FINISHED" and metrics == ref_metrics


@pytest.mark.slow
def test_truncated_last_checkpoint_falls_back_when_resuming_from_the_dir(cli, workdir):
    first = workdir / "first"
    assert cli(*FAST, "epochs=2", "checkpoint.keep_last=2", "mlflow.enabled=false",
               f"hydra.run.dir={first}").returncode == 0
    last = first / "checkpoints/last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    result = cli(f"resume={first}", "epochs=3", "mlflow.enabled=false")
    assert result.returncode == 0, result.output
    assert "skipped invalid checkpoint" in result.output and "epoch_0002.pt" in result.output
    assert torch.load(last, weights_only=True)["epoch"] == 3

    last.write_bytes(b"junk")  # a file named explicitly is never swapped for another
    direct = cli(f"resume={last}", "mlflow.enabled=false")
    assert direct.returncode == 2 and str(last) in direct.stderr and "unreadable" in direct.stderr


@pytest.mark.slow
def test_resume_refuses_a_change_of_model_or_optimizer(cli, workdir):
    first = workdir / "first"
    assert cli(*FAST, "mlflow.enabled=false", f"hydra.run.dir={first}").returncode == 0
    for override, key in (("model=tutorial_net", "model._target_"), ("optimizer=adam", "optimizer._target_"),
                          ("dataset.batch_size=64", "dataset.batch_size")):
        result = cli(f"resume={first}", "epochs=2", override, "mlflow.enabled=false")
        assert result.returncode == 2, result.output
        assert f"cannot change {key}" in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_evaluate_and_predict_from_a_checkpoint(cli, workdir):
    from PIL import Image

    run = workdir / "run"
    trained = cli(*FAST, "epochs=2", "mlflow.enabled=false", f"hydra.run.dir={run}")
    logged = re.search(r"test images: (\d+\.\d\d) %", trained.output).group(1)
    result = cli(f"checkpoint={run}", module="cifar_exp.evaluate")
    assert result.returncode == 0, result.output
    assert f"Accuracy of the network on the 500 test images: {logged} %" in result.stdout
    assert "confusion matrix" in result.stdout and "Accuracy for class: class9" in result.stdout

    from cifar_exp.data import load_dataset
    from omegaconf import OmegaConf
    from cifar_exp.config import SyntheticConfig

    test = load_dataset(OmegaConf.structured(SyntheticConfig)).test
    paths = []
    for i in range(2):
        paths.append(workdir / f"img{i}.png")
        Image.fromarray(test.x[i].permute(1, 2, 0).numpy()).save(paths[-1])
    result = cli(f"checkpoint={run / 'checkpoints/best.pt'}", f"images=[{paths[0]},{paths[1]}]",
                 module="cifar_exp.predict")
    assert result.returncode == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"{paths[0]}: class")
    assert len(re.findall(r"class\d \d+\.\d%", lines[0])) == 3
    bad = cli("checkpoint=/nope.pt", f"images=[{paths[0]}]", module="cifar_exp.predict")
    assert bad.returncode == 2 and "/nope.pt does not exist" in bad.stderr
