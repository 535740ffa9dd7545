"""What a run's MLflow record holds of its config: a few params that tell runs apart (not
50 constants), the compared keys as tags, and a sweep parent under its jobs' keys."""

from __future__ import annotations

from cifar_exp.config import plain_config
from cifar_exp.record import COMPARED, HEADLINE, record, sweep_record
from cifar_exp.registry import defaults, flatten
from cifar_exp.validation import validate

from helpers import compose_cfg


def _record(*overrides: str) -> tuple[dict, dict]:
    plain = plain_config(validate(compose_cfg(*overrides)))
    return record(flatten(plain), defaults(plain), list(overrides))


def test_a_default_run_s_params_are_the_headline_keys():
    params, tags = _record()
    assert set(params) == set(HEADLINE) and len(params) <= 10, sorted(params)
    assert {"optimizer.lr", "dataset.batch_size", "seed", "model.name", "optimizer.name"} <= set(params)
    assert set(tags) == set(COMPARED)


def test_what_the_command_sets_is_a_param_even_at_its_default_value():
    params, _ = _record("optimizer.momentum=0.0", "model=resnet18", "dataset.train_size=1024", "dataset=synthetic")
    assert params["optimizer.momentum"] == 0.0 and params["dataset.train_size"] == 1024
    assert params["model.name"] == "resnet18" and "model" not in params
    assert "optimizer.nesterov" not in params and "trainer.lookahead_decay" not in params


def test_what_an_option_or_preset_sets_apart_from_the_defaults_is_a_param():
    params, _ = _record("experiment=airbench94")
    assert params["model.name"] == "airbench94"
    assert len(params) > len(HEADLINE)  # the preset's own settings
    assert not [k for k in params if k.startswith(("mlflow.", "checkpoint.")) or k in COMPARED or k == "resume"]


def test_a_resume_safe_key_is_never_a_param():
    params, tags = _record("epochs=3", "dataset.eval_batch_size=500", "trainer.early_stopping_patience=2")
    assert tags["epochs"] == 3 and tags["trainer.early_stopping_patience"] == 2
    assert not {"epochs", "dataset.eval_batch_size", "trainer.early_stopping_patience"} & set(params)


def test_a_sweep_parent_uses_its_jobs_keys():
    flat = flatten({"dataset": {"name": "synthetic", "train_size": 512}, "epochs": 2, "model": {"name": "x"}})
    overrides = [
        "dataset=synthetic",
        "dataset.train_size=512",
        "optimizer.lr=0.01,0.05",
        "model=simple_cnn,resnet18",
        "epochs=2",
        "experiment=speed_net_cpu",
        "hydra.sweeper.n_trials=4",
        "mlflow.log_model=false",
    ]
    params, tags = sweep_record(overrides, ["optimizer.lr", "model"], flat)
    assert params == {
        "dataset.name": "synthetic",
        "dataset.train_size": 512,
        "sweep.optimizer.lr": "0.01,0.05",
        "sweep.model.name": "simple_cnn,resnet18",
    }
    assert tags == {"epochs": 2}  # a tag, as on its jobs: one "epochs" column
