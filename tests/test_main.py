"""The real CLI, end to end, on generated data."""

from __future__ import annotations

import re
import subprocess
import sys
import venv
from pathlib import Path

import pytest
import yaml

from helpers import FAST, png_tree, run_dirs

ROOT = Path(__file__).parents[1]


@pytest.mark.slow
def test_two_epoch_run_prints_accuracy_and_writes_hydra_config(cli, workdir):
    result = cli(*FAST, "epochs=2", "mlflow.enabled=false")
    assert result.returncode == 0, result.output
    match = re.search(r"Accuracy of the network on the 500 test images: (\d+\.\d\d) %", result.output)
    assert match, result.output
    assert float(match.group(1)) > 50  # chance is 10%
    assert "Accuracy for class: class0" in result.output and "test loss" in result.output
    [run_dir] = run_dirs(workdir)
    saved = yaml.safe_load((run_dir / ".hydra/config.yaml").read_text())
    assert saved["epochs"] == 2 and saved["optimizer"]["lr"] == 0.05
    assert (run_dir / "plots/samples.png").stat().st_size > 1000
    assert (run_dir / "checkpoints/last.pt").exists()


@pytest.mark.slow
def test_notes_defaults_learn_above_chance_on_synthetic(cli, workdir):
    # SGD(lr=0.001, momentum=0) as in the notes: slow, but it learns
    result = cli("dataset=synthetic", "epochs=2", "mlflow.enabled=false", "trainer.progress=false")
    assert result.returncode == 0, result.output
    acc = float(re.search(r"test images: (\d+\.\d\d) %", result.output).group(1))
    assert acc > 15


@pytest.mark.slow
def test_image_folder_run(cli, workdir):

    png_tree(workdir / "imgs", per_class=8)
    result = cli(
        "dataset=image_folder",
        f"dataset.root={workdir / 'imgs'}",
        "dataset.batch_size=4",
        "mlflow.enabled=false",
        "trainer.progress=false",
    )
    assert result.returncode == 0, result.output
    assert "Accuracy of the network on the 16 test images" in result.output
    assert list((workdir / "data/cache").glob("image_folder-*.pt"))


@pytest.mark.slow
def test_installed_wheel_finds_its_configs(tmp_path):
    """Build a wheel, install it into a fresh venv that borrows this one's dependencies, and
    run the console script from an unrelated directory."""
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(ROOT)],
        check=True,
        capture_output=True,
    )
    [wheel] = wheels.glob("cifar_exp-*.whl")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    site = next(env_dir.glob("lib/python*/site-packages"))
    deps = [p for p in sys.path if p.endswith("site-packages")]
    (site / "deps.pth").write_text("\n".join(deps) + "\n")  # a plain path: no editable finder
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(env_dir / "bin/python"),
            "install",
            "--no-deps",
            "--no-index",
            "-q",
            str(wheel),
        ],
        check=True,
        capture_output=True,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = subprocess.run(
        [str(env_dir / "bin/cifar-exp"), *FAST, "mlflow.enabled=false"],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Accuracy of the network" in proc.stdout + proc.stderr
    where = subprocess.run(
        [str(env_dir / "bin/python"), "-c", "import cifar_exp.conf as c; print(c.__file__)"],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert str(site) in where and str(ROOT) not in where
    # the project's Optuna sweeper plugin ships in the wheel and Hydra finds it there
    hydra = subprocess.run(
        [str(env_dir / "bin/cifar-exp"), "hparams_search=optuna_lr", "--cfg", "hydra"],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "_target_: hydra_plugins.cifar_exp_optuna_sweeper.optuna_sweeper.OptunaSweeper" in hydra.stdout, hydra.stderr
    plugin = subprocess.run(
        [str(env_dir / "bin/python"), "-c", "import hydra_plugins.cifar_exp_optuna_sweeper as p; print(p.__file__)"],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert str(site) in plugin
