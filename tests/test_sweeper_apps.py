"""hydra/sweeper=optuna in any Hydra app, as a user of the official hydra-optuna-sweeper
brings it: found by Hydra's plugin scan from the README's editable install, optimizing what
the task function returns (one value, or one per direction), its study in memory unless a
storage is named, with the official keys."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from helpers import cli_env

pytestmark = pytest.mark.slow

APP = """\
import hydra


@hydra.main(version_base=None, config_path=".", config_name="config")
def task(cfg):
    if cfg.get("error"):
        raise RuntimeError("cfg.error is True")
    values = (cfg.x**2 + cfg.y**2, (cfg.x - 2) ** 2 + (cfg.y - 2) ** 2)
    return values if cfg.get("two") else values[0]


def widen(cfg, trial):
    trial.suggest_float("+w", 0.0, cfg.w_max)


if __name__ == "__main__":
    task()
"""

CONFIG = """\
defaults:
  - override hydra/sweeper: optuna
  - override hydra/sweeper/sampler: {sampler}

hydra:
  sweeper:
    sampler:
      seed: 123
    direction: {direction}
    study_name: sphere
    storage: null
    n_trials: 6
    n_jobs: 2
    max_failure_rate: 0.0
    params:
      x: range(-2.0, 2.0, step=0.5)
      y: choice(-1, 0, 1)

x: 1
y: 1
w_max: 0.5
"""


def _app(tmp_path: Path, sampler: str = "tpe", direction: str = "minimize") -> Path:
    app = tmp_path / "app"
    app.mkdir()
    (app / "sphere.py").write_text(APP)
    (app / "config.yaml").write_text(CONFIG.format(sampler=sampler, direction=direction))
    return app


def _sweep(app: Path, *overrides: str) -> subprocess.CompletedProcess:
    sweep_dir = app / "sweep"
    return subprocess.run(
        [sys.executable, "sphere.py", "--multirun", f"hydra.sweep.dir={sweep_dir}", *overrides],
        cwd=app,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def _results(app: Path) -> dict:
    return OmegaConf.to_container(OmegaConf.load(app / "sweep" / "optimization_results.yaml"))


def test_hydra_finds_the_sweeper_from_an_unrelated_directory(tmp_path):
    code = (
        "from hydra.core.plugins import Plugins; from hydra.plugins.sweeper import Sweeper; "
        "print([p.__module__ + '.' + p.__name__ for p in Plugins.instance().discover(Sweeper)])"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=cli_env(), capture_output=True, text=True)
    assert "hydra_plugins.cifar_exp_optuna_sweeper.optuna_sweeper.OptunaSweeper" in out.stdout, out.stderr


def test_an_app_s_sweep_optimizes_what_its_task_returns(tmp_path):
    """A value fixed on the command line is not searched; the study lives in memory (the same
    command runs again from scratch, no study file is left behind)."""
    app = _app(tmp_path)
    for _ in range(2):
        result = _sweep(app, "y=0")
        assert result.returncode == 0, result.stderr[-2000:]
        best = _results(app)
        assert best["name"] == "optuna" and set(best["best_params"]) == {"x"}
        assert best["best_value"] == best["best_params"]["x"] ** 2
    assert not (app / "optuna.db").exists() and "Traceback" not in result.stderr


def test_several_directions_give_a_pareto_front(tmp_path):
    app = _app(tmp_path, sampler="nsgaii", direction="[minimize, minimize]")
    result = _sweep(app, "+two=true")
    assert result.returncode == 0, result.stderr[-2000:]
    front = _results(app)["solutions"]
    assert front and all(len(s["values"]) == 2 for s in front)
    for a in front:  # no solution of the front dominates another
        for b in front:
            assert not (all(x <= y for x, y in zip(a["values"], b["values"])) and a["values"] != b["values"])


def test_a_grid_runs_every_point_of_a_stepped_float_range(tmp_path):
    app = _app(tmp_path, sampler="grid")
    result = _sweep(app, "hydra.sweeper.n_trials=100", "hydra.sweeper.params.x='range(-1.0, 1.0, step=1.0)'")
    assert result.returncode == 0, result.stderr[-2000:]
    assert _results(app)["best_value"] == 0


def test_a_custom_search_space_hook_of_the_app_s_own_script(tmp_path):
    app = _app(tmp_path)
    result = _sweep(app, "+hydra.sweeper.custom_search_space=.sphere.widen")
    assert result.returncode == 0, result.stderr[-2000:]
    assert 0 <= _results(app)["best_params"]["+w"] <= 0.5


@pytest.mark.parametrize("rate, stops", [(0.5, True), (1.0, False)])
def test_max_failure_rate(tmp_path, rate, stops):
    app = _app(tmp_path)
    result = _sweep(app, f"hydra.sweeper.max_failure_rate={rate}", "+error=true")
    if stops:  # the app's own main decides how its errors are shown: Hydra prints this one
        assert result.returncode != 0, result.stderr[-2000:]
        said = "more than hydra.sweeper.max_failure_rate=0.5 (the first: RuntimeError: cfg.error is True)"
        assert said in result.stderr
    else:
        assert result.returncode == 0, result.stderr[-2000:]


def test_a_pruner_in_an_app_that_reports_nothing_is_one_line(tmp_path):
    app = _app(tmp_path)
    result = _sweep(app, "hydra/sweeper/pruner=median")
    assert result.returncode != 0 and "a pruner needs a cifar_exp run's per-epoch reports" in result.stderr
