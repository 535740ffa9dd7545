"""Every config option composes and builds; every bad input is one line and exit code 2."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cifar_exp.errors import UserError, one_line
from cifar_exp.models import build_model
from cifar_exp.optim import build_optimizer, build_scheduler
from cifar_exp.registry import REGISTRY, register_configs
from cifar_exp.validation import validate

from helpers import compose_cfg

CONF = Path(__file__).parents[1] / "conf"
register_configs()


def options(group: str) -> list[str]:
    if group in REGISTRY:
        return sorted(REGISTRY[group])
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_defaults_reproduce_the_notes():
    cfg = compose_cfg()
    assert cfg.dataset.name == "cifar10" and cfg.dataset.batch_size == 128
    assert list(cfg.dataset.mean) == [0.5] * 3 and list(cfg.dataset.std) == [0.5] * 3
    assert cfg.model.name == "simple_cnn"
    assert cfg.optimizer.name == "sgd"
    assert cfg.optimizer.lr == 0.001 and cfg.optimizer.momentum == 0.0
    assert cfg.scheduler.name == "none" and cfg.epochs == 1 and not cfg.dataset.augment


@pytest.mark.parametrize("name", options("model"))
def test_every_model_composes_and_builds(name):
    cfg = compose_cfg(f"model={name}")
    model = build_model(cfg.model, num_classes=7)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 7)


@pytest.mark.parametrize("name", options("optimizer"))
def test_every_optimizer_composes_and_builds(name):
    cfg = compose_cfg(f"optimizer={name}", "optimizer.lr=0.02")
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.Flatten(), torch.nn.Linear(2, 2))
    opt = build_optimizer(cfg.optimizer, net)
    # optimizer.lr is the main rule's rate (muon's other groups have their own)
    assert type(opt).__name__.lower() == name and 0.02 in [g["lr"] for g in opt.param_groups]


@pytest.mark.parametrize("name", options("scheduler"))
def test_every_scheduler_composes_and_steps(name):
    cfg = compose_cfg(f"scheduler={name}", "optimizer.lr=0.1")
    opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
    sched = build_scheduler(cfg.scheduler, opt, total_steps=100, steps_per_epoch=10)
    assert (sched is None) == (name == "none")
    for _ in range(100):
        opt.step()
        if sched:
            sched.step()
    if name in ("cosine", "onecycle"):
        assert opt.param_groups[0]["lr"] < 0.01


@pytest.mark.parametrize("group", ["dataset", "trainer", "experiment"])
def test_every_other_option_composes_as_itself_and_passes_the_checks(group, tmp_path):
    for name in options(group):
        cfg = compose_cfg(f"{group}={name}", "dataset.root=" + str(tmp_path))
        run = validate(cfg, paths=False)
        if group == "dataset":
            assert run.dataset.name == name
        elif group == "trainer":
            assert run.trainer.deterministic == (name == "deterministic")
        else:  # a preset changes the model or the schedule it is named for
            assert (run.model.name, run.scheduler.name) != ("simple_cnn", "none")


@pytest.mark.slow
def test_every_registered_option_builds_with_its_own_function():
    from cifar_exp.registry import builder, builds

    for group, opts in REGISTRY.items():
        for name, option in opts.items():
            assert option.schema.name == name
            cfg = compose_cfg(f"{group}={name}", "dataset.root=/tmp")
            assert builds(group, cfg[group]) == (option.build is not None)
            if option.build is not None:
                assert callable(builder(group, cfg[group]))
            else:
                with pytest.raises(TypeError, match="builds nothing"):
                    builder(group, cfg[group])


def test_validate_names_the_key():
    cfg = compose_cfg("dataset.val_size=-1")
    with pytest.raises(UserError, match="dataset.val_size"):
        validate(cfg)


BAD_INPUTS = {
    "epochs=abc": "epochs",
    "optimizr.lr=0.1": "optimizr",
    "optimizer.lrr=0.1": "lrr",
    "optimizer.lr=-1": "optimizer.lr",
    "epochs=0": "epochs",
    "dataset.batch_size=0": "dataset.batch_size",
    "model=nope": "resnet18, simple_cnn",
    "model=speed_net model.act=tanh": "model.act",
    "model.name=nope": "model.name='nope' is not a registered option",
    "model.name=speed_net": "model=speed_net",
    "model=speed_net model.depth=3": "depth",
    "optimizer=adam optimizer.momentum=0.9": "momentum",
    "seed=-1": "seed",
    "seed=99999999999": "seed",
    "trainer.device=cuda:abc": "trainer.device",
    "trainer.device=tpu": "trainer.device",
    "dataset=synthetic dataset.image_size=0": "dataset.image_size",
    "dataset=synthetic dataset.image_size=12 model=tutorial_net": ">= 16 for model=tutorial_net",
    "mlflow.experiment_name=''": "mlflow.experiment_name",
    "objective=nope": "objective",
    "checkpoint.monitor=nope": "checkpoint.monitor",
    "checkpoint.monitor=val/acc": "dataset.val_size",
    "scheduler=onecycle scheduler.max_lr=-1": "scheduler.max_lr",
    "scheduler=step scheduler.gamma=-1": "scheduler.gamma",
    "scheduler=cosine scheduler.eta_min=-0.1": "scheduler.eta_min",
    "dataset=synthetic dataset.noise=-5": "dataset.noise",
    "optimizer=adam optimizer.betas=[0.9,1.5]": "optimizer.betas",
    "optimizer.nesterov=true": "optimizer.nesterov",
    "model=speed_net model.widths=[]": "model.widths",
    "mlflow.flush_every_s=0": "mlflow.flush_every_s",
    "+mlflow.tags={mlflow.runName:evil}": "mlflow.tags.mlflow.runName",
    "+mlflow.tags={" + "k" * 300 + ":v}": "keys of at most 250 characters",
    "trainer.accumulate_grad_batches=0": "trainer.accumulate_grad_batches",
    "trainer.gradient_clip_val=-1": "trainer.gradient_clip_val",
    "trainer.ema_decay=1.5": "trainer.ema_decay",
    "trainer.early_stopping_patience=-1": "trainer.early_stopping_patience",
    "trainer.eval_every_n_epochs=0": "trainer.eval_every_n_epochs",
    "trainer.compile=maybe": "trainer.compile",
    "trainer.amp=fp8": "trainer.amp",
    "trainer.overfit_batches=2 trainer.limit_train_batches=3": "trainer.overfit_batches",
    "dataset.cutout=-1": "dataset.cutout",
    "dataset.mixup_alpha=-0.5": "dataset.mixup_alpha",
    "scheduler.warmup_epochs=-1": "scheduler.warmup_epochs",
    # 4 optimizer steps an epoch: 0.1 epochs rounds to no warm-up at all
    "dataset=synthetic dataset.train_size=512 scheduler.warmup_epochs=0.1": "at least one optimizer step (1/4",
    "checkpoint.save_top_k=-1": "checkpoint.save_top_k",
    "debug=nope": "Could not find 'debug/nope'",
    "dataset=image_folder dataset.root=/no/such/dir": "/no/such/dir",
}


@pytest.mark.parametrize("args,needle", BAD_INPUTS.items())
def test_bad_input_is_refused_naming_the_key(args, needle):
    """What the entry point prints as its one line: Hydra's and OmegaConf's errors folded,
    or the validation's UserError."""
    with pytest.raises((UserError, HydraException, OmegaConfBaseException)) as err:
        validate(compose_cfg(*args.split()))
    assert needle in one_line(err.value)


# one row per way a bad input is found: OmegaConf's type check, Hydra's unknown key and
# missing option, a missing preset, the validation callback, a path on this machine
CLI_ROWS = [
    "epochs=abc",
    "optimizr.lr=0.1",
    "model=nope",
    "debug=nope",
    "optimizer.lr=-1",
    "dataset=image_folder dataset.root=/no/such/dir",
]


@pytest.mark.parametrize("args", CLI_ROWS)
def test_bad_input_is_one_line_and_exit_2(cli, workdir, args):
    result = cli(*args.split(), "mlflow.enabled=false")
    assert result.returncode == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cifar-exp: "), result.stderr
    assert BAD_INPUTS[args] in lines[0] and "Traceback" not in result.output
    assert not (workdir / "outputs").exists(), "a rejected config must not create a run dir"


@pytest.mark.slow
def test_cifar10_download_failure_says_what_to_do_offline(cli, workdir):
    # No network here or in CI; a proxy that refuses makes sure of it anywhere.
    result = cli(
        "dataset.root=" + str(workdir / "data"),
        "mlflow.enabled=false",
        https_proxy="http://127.0.0.1:9",
        HTTPS_PROXY="http://127.0.0.1:9",
    )
    assert result.returncode == 2, result.output
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("cifar-exp: error: cannot load cifar10")
    for hint in ("cifar-10-python.tar.gz", "dataset=image_folder", "dataset=synthetic"):
        assert hint in line
    assert not (workdir / "mlflow.db").exists() or "Traceback" not in result.output


def test_help_and_cfg_do_not_import_torch_or_mlflow(cli):
    for args in (["--help"], ["--cfg", "job"], ["epochs=abc"]):
        result = cli(*args, python_args=("-X", "importtime"))
        imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if "|" in line}
        assert "cifar_exp.config" in imported, result.stderr[-500:]
        assert not {"torch", "mlflow", "torchvision"} & imported, args


def test_the_search_preset_selects_on_a_validation_split(cli):
    result = cli("hparams_search=optuna_lr", "--cfg", "job", "--resolve")
    assert result.returncode == 0, result.output
    cfg = yaml.safe_load(result.stdout)
    assert cfg["dataset"]["val_fraction"] == 0.1 and cfg["objective"] == "val/acc"
    assert cfg["checkpoint"]["monitor"] == "val/acc"
    assert compose_cfg("hparams_search=optuna_lr").checkpoint.monitor == "val/acc"


@pytest.mark.parametrize(
    "objective, monitor",
    [("val/acc", "val/acc"), ("[val/acc,model/params]", "val/acc"), ("[model/params,val/loss]", "model/params")],
)
def test_the_monitor_follows_the_objective_or_the_first_of_several(objective, monitor):
    cfg = compose_cfg("dataset=synthetic", "dataset.val_size=10", f"objective={objective}")
    assert cfg.checkpoint.monitor == monitor


def test_a_test_s_registrations_are_undone_even_over_a_real_option():
    from dataclasses import dataclass

    from cifar_exp.config_optim import OptimizerConfig, SGDConfig
    from cifar_exp.registry import REGISTRY, Option, register

    from helpers import registry_restored

    @dataclass
    class FakeSGD(OptimizerConfig):
        name: str = "sgd"

    @dataclass
    class Extra(OptimizerConfig):
        name: str = "extra"

    real = REGISTRY["optimizer"]["sgd"]
    with registry_restored():
        register("optimizer", Option(FakeSGD, "torch.optim:SGD"))
        register("optimizer", Option(Extra, "torch.optim:SGD"))
        assert compose_cfg("optimizer=extra").optimizer.name == "extra"
    assert REGISTRY["optimizer"]["sgd"] is real and "extra" not in REGISTRY["optimizer"]
    assert OmegaConf.get_type(compose_cfg("optimizer=sgd").optimizer) is SGDConfig
    with pytest.raises(Exception, match="extra"):
        compose_cfg("optimizer=extra")
