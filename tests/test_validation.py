"""The whole config checked as one, wherever it comes from: derived directions, the metric
catalogue, finite values and sizes within the run, stored configs and malformed
checkpoints, sweeps refused before their first job, and the tools' typed arguments. Each
table row is a value a careful user tried; every one must be refused in one line that
names the key (or, for the derived rows, accepted with the right direction)."""

from __future__ import annotations

import math
import re
import shutil
from pathlib import Path

import pytest
import torch

from cifar_exp import checkpoint, study
from cifar_exp.errors import UserError
from cifar_exp.resume import resume_config
from cifar_exp.validation import check_loaded, monitor_mode, validate

from helpers import check_sweep_of, compose_cfg

SYN = "dataset=synthetic"


# --- derived settings: a loss is minimized, an accuracy maximized ----------------------------
MODES = [
    (["objective=val/loss", "dataset.val_size=100", "epochs=3"], "min"),
    (["objective=test/loss"], "min"),
    (["objective=val/acc", "dataset.val_fraction=0.1"], "max"),
    (["checkpoint.monitor=train/loss_epoch"], "min"),
    (["checkpoint.monitor=time/epoch_s"], "min"),
    # a direction is the catalogue's fact, not a guess from the name's ending
    (["checkpoint.monitor=time/images_per_s"], "max"),
    (["checkpoint.monitor=time/images_per_s", "checkpoint.mode=max"], "max"),
    (["checkpoint.monitor=test/acc_class/class3"], "max"),
    (["objective=test/loss", "checkpoint.mode=min"], "min"),
    ([], "max"),
]


@pytest.mark.parametrize("overrides,mode", MODES)
def test_the_monitor_direction_is_derived_from_the_metric(overrides, mode):
    assert monitor_mode(validate(compose_cfg(SYN, *overrides))) == mode


CONTRADICTIONS = [
    (["objective=test/loss", "checkpoint.mode=max"], "checkpoint.mode='max' is invalid: must be min or null"),
    (["checkpoint.monitor=val/loss", "dataset.val_size=10", "checkpoint.mode=max"], "val/loss is minimized"),
    (["checkpoint.monitor=train/acc", "checkpoint.mode=min"], "must be max or null"),
    (["checkpoint.mode=up"], "checkpoint.mode='up'"),
]


@pytest.mark.parametrize("overrides,needle", CONTRADICTIONS)
def test_a_mode_that_contradicts_its_metric_is_refused(overrides, needle):
    with pytest.raises(UserError, match=needle):
        validate(compose_cfg(SYN, *overrides))


DIRECTIONS = [
    (None, "val/loss", "minimize"),
    (None, "test/acc", "maximize"),
    (None, "time/images_per_s", "maximize"),
    (None, "time/epoch_s", "minimize"),
    (None, "test/acc_class/floss", "maximize"),
    (None, "test/acc_class/cat_s", "maximize"),
    ("maximize", "val/acc", "maximize"),
    (["minimize"], "test/loss", "minimize"),
    ("maximize", "val/loss", "must be minimize or null"),
    ("minimize", "test/acc", "must be maximize or null"),
    (["minimize", "maximize"], "test/acc", "must be"),
    ("sideways", "test/acc", "must be maximize"),
    # several objectives: one direction each, from the catalogue
    (None, ["val/acc", "model/params"], "maximize,minimize"),
    (None, ["time/epoch_s", "test/acc_class/cat"], "minimize,maximize"),
    (["maximize", "minimize"], ["val/acc", "model/params"], "maximize,minimize"),
    ("maximize", ["val/acc", "model/params"], r"must be \[maximize,minimize\] or null"),
    (["minimize", "minimize"], ["val/acc", "model/params"], "val/acc is maximized, model/params is minimized"),
]


@pytest.mark.parametrize("configured,objective,expected", DIRECTIONS)
def test_the_study_direction_is_derived_from_the_objective(configured, objective, expected):
    names = [objective] if isinstance(objective, str) else objective
    if expected.startswith("must") or " is " in expected:
        with pytest.raises(UserError, match=expected):
            study.directions(configured, names)
    else:
        assert study.directions(configured, names) == expected.split(",")


def test_a_loss_monitored_run_keeps_the_epoch_with_the_lowest_loss_as_best(tmp_path, monkeypatch):
    """The README's advice for losses, end to end: best.pt is the lowest val/loss epoch."""
    from cifar_exp.run import run

    monkeypatch.chdir(tmp_path)
    cfg = compose_cfg(
        SYN,
        "objective=val/loss",
        "dataset.val_size=100",
        "epochs=3",
        "dataset.train_size=400",
        "optimizer.lr=0.05",
        "optimizer.momentum=0.9",
        "mlflow.enabled=false",
        "trainer.progress=false",
    )
    run(cfg)
    best = checkpoint.load(tmp_path / "checkpoints/best.pt")
    losses = [h["val/loss"] for h in best.state.history]
    last = checkpoint.load(tmp_path / "checkpoints/last.pt").state.history
    assert best.state.best == min(h["val/loss"] for h in last) == losses[-1]


# --- the metric catalogue ----------------------------------------------------------------------
METRICS = [
    (["objective=nope"], "objective='nope' is invalid: must be a metric the run logs per epoch"),
    (["checkpoint.monitor=nope"], "checkpoint.monitor='nope'"),
    (["checkpoint.monitor=test/acc_class/nope"], "test/acc_class/<class> for a class of this dataset: class0"),
    (["objective=test/acc_class/nope"], "objective='test/acc_class/nope'"),
    (["objective=test/acc_class/"], "objective='test/acc_class/'"),
    (["checkpoint.monitor=val/acc"], "val/* needs dataset.val_size or dataset.val_fraction"),
    (["objective=val/loss"], "objective='val/loss'"),
    (["objective=train/loss"], "per epoch"),  # logged per step: no epoch value to select on
    (["objective=lr"], "objective='lr'"),
    (["checkpoint.monitor=epoch"], "checkpoint.monitor='epoch'"),
    (["objective=train/grad_norm", "trainer.gradient_clip_val=1"], "objective='train/grad_norm'"),
    (["objective=test/acc_class/airplane"], "objective='test/acc_class/airplane'"),  # a CIFAR-10 name
]


@pytest.mark.parametrize("overrides,needle", METRICS)
def test_a_metric_the_run_never_logs_is_refused(overrides, needle):
    with pytest.raises(UserError, match=re.escape(needle)):
        validate(compose_cfg(SYN, *overrides))


def test_cifar10_class_names_are_known_before_loading_and_cifar100_ones_once_loaded():
    validate(compose_cfg("checkpoint.monitor=test/acc_class/cat"))
    with pytest.raises(UserError, match="for a class of this dataset: airplane, automobile"):
        validate(compose_cfg("checkpoint.monitor=test/acc_class/kitten"))
    cfg = compose_cfg("dataset=cifar100", "checkpoint.monitor=test/acc_class/kitten")
    validate(cfg)  # CIFAR-100's names are in its files: checked once the data is loaded
    with pytest.raises(UserError, match="checkpoint.monitor='test/acc_class/kitten'"):
        check_loaded(validate(cfg, paths=False), ["apple", "aquarium_fish"])
    check_loaded(
        validate(compose_cfg("dataset=cifar100", "checkpoint.monitor=test/acc_class/apple"), paths=False), ["apple"]
    )


# --- every float finite, every size within what the run can hold ------------------------------
LIMITS = [
    (["dataset.std=[inf,1,1]"], "dataset.std=[inf, 1.0, 1.0] is invalid: must be finite numbers"),
    (["dataset.mean=[nan,0.5,0.5]"], "dataset.mean"),
    (["dataset.mixup_alpha=inf"], "dataset.mixup_alpha=inf is invalid: must be a finite number"),
    (["dataset.cutmix_alpha=nan"], "dataset.cutmix_alpha"),
    (["optimizer.lr=inf"], "optimizer.lr=inf"),
    (["optimizer.lr=nan"], "optimizer.lr=nan"),
    (["scheduler.warmup_epochs=inf"], "scheduler.warmup_epochs=inf"),
    (["scheduler=onecycle", "scheduler.max_lr=inf"], "scheduler.max_lr=inf"),
    (["trainer.gradient_clip_val=inf"], "trainer.gradient_clip_val=inf"),
    (["mlflow.flush_every_s=inf"], "mlflow.flush_every_s=inf"),
    (["dataset.cutout=100"], "dataset.cutout=100 is invalid: must be an integer in [0, 16]"),
    (["dataset.cutout=17"], "dataset.cutout=17"),
    (["dataset.crop_padding=100", "dataset.pad_mode=reflect"], "dataset.crop_padding=100"),
    (["dataset.crop_padding=100"], "dataset.crop_padding=100"),
    (["trainer.eval_translate=100"], "trainer.eval_translate=100 is invalid: must be an integer in [0, 16]"),
    (["dataset.image_size=12", "trainer.eval_translate=7"], "trainer.eval_translate=7"),
    (
        ["scheduler.warmup_epochs=10", "epochs=2"],
        "scheduler.warmup_epochs=10.0 is invalid: must be shorter than the run's 32 optimizer steps",
    ),
    (["scheduler.warmup_epochs=2", "epochs=2"], "scheduler.warmup_epochs=2.0"),
    (["scheduler.warmup_epochs=1", "epochs=5", "trainer.max_steps=10"], "trainer.max_steps=10"),
    (
        ["trainer.lookahead_every=1000", "epochs=2"],
        "trainer.lookahead_every=1000 is invalid: must be at most the run's 32 optimizer steps",
    ),
    (["trainer.lookahead_every=5", "trainer.max_steps=4"], "trainer.lookahead_every=5"),
    (["trainer.lookahead_every=20", "trainer.accumulate_grad_batches=2"], "the run's 8 optimizer steps"),
    (["trainer.lookahead_every=3", "trainer.limit_train_batches=2"], "the run's 2 optimizer steps"),
    (["dataset.train_size=100000000000"], "dataset.train_size=100000000000 is invalid: must be small enough"),
    (["dataset.image_size=1024", "dataset.train_size=2000000"], "GiB as uint8"),
    (["dataset.val_size=2000"], "dataset.val_size=2000 is invalid: must be smaller than the 2000 training"),
    (["dataset.val_fraction=1.0"], "dataset.val_fraction=1.0"),
    (["dataset.val_fraction=0.0001"], "large enough to hold out one"),
    (["dataset.val_size=10", "dataset.val_fraction=0.1"], "0 when dataset.val_size is set"),
    (["dataset.batch_size=5000", "dataset.drop_last=true"], "dataset.batch_size=5000"),
    (
        ["model=speed_net", "model.widths=[8,8,8,8,8,8]"],
        "dataset.image_size=32 is invalid: must be >= 64 for model=speed_net",
    ),
    (["model=airbench94", "model.widths=[8,8,8,8,8]"], ">= 33 for model=airbench94"),
    (["dataset.image_size=12", "model=tutorial_net"], ">= 16 for model=tutorial_net"),
    (["mlflow.registered_model_name=../x"], "mlflow.registered_model_name='../x'"),
    (["mlflow.registered_model_name=a/b"], "without '/'"),
    (["mlflow.registered_model_name=a:b"], "mlflow.registered_model_name='a:b'"),
    (["mlflow.registered_model_name=' '"], "mlflow.registered_model_name"),
    (["mlflow.registered_model_name=net", "mlflow.log_model=false"], "null when mlflow.log_model=false"),
    (["trainer.sync_batchnorm=true"], "trainer.sync_batchnorm=True is invalid: must be false unless"),
    (["trainer.lookahead_decay=1.5"], "trainer.lookahead_decay"),
    (["trainer.label_smoothing=1"], "trainer.label_smoothing"),
    (["dataset.flip=sideways"], "dataset.flip"),
    (["dataset.val_fraction=-0.1"], "dataset.val_fraction=-0.1"),
    (["optimizer=muon", "optimizer.ns_steps=0"], "optimizer.ns_steps=0 is invalid: must be an integer >= 1"),
    (["optimizer=muon", "optimizer.aux_momentum=0", "optimizer.aux_nesterov=true"], "optimizer.aux_nesterov=True"),
    (["optimizer=muon", "optimizer.norm_lr_scale=64"], "optimizer.bias_lr sets"),
    (["optimizer=muon", "optimizer.bias_lr=0"], "optimizer.bias_lr=0.0"),
    (["model=airbench94", "model.whiten_bias_init=ones"], "model.whiten_bias_init='ones' is invalid: must be zeros or"),
    (["model=airbench94", "model.head_init_std=0"], "model.head_init_std=0.0"),
]


@pytest.mark.parametrize("overrides,needle", LIMITS)
def test_values_outside_what_the_run_can_hold_are_refused(overrides, needle):
    with pytest.raises(UserError) as err:
        validate(compose_cfg(SYN, *overrides))
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_presets_that_hold_out_data_work_on_every_dataset(tmp_path):
    """The search preset holds out a share, so the documented synthetic sweep composes."""
    for dataset in ("synthetic", "cifar10", "cifar100"):
        run = validate(compose_cfg("hparams_search=optuna_lr", f"dataset={dataset}"))
        assert run.dataset.val_fraction == 0.1 and run.objective == "val/acc"
    for preset in ("airbench94", "airbench94_muon", "speed_net_cpu", "resnet18_cosine"):
        validate(compose_cfg(f"experiment={preset}"))
    for debug in ("fast", "overfit", "profile"):
        validate(compose_cfg(f"debug={debug}", SYN))


# --- stored configs: plain data in every container; never where the run is tracked ------------
V1 = Path(__file__).parent / "fixtures" / "v1_tutorial_net.pt"


def _stored(tmp_path, mutate) -> Path:
    """The v1 fixture migrated to the current format (what main writes), changed by `mutate`."""
    ck = checkpoint.load(V1)
    raw = {
        "format_version": checkpoint.FORMAT_VERSION,
        "run": dict(vars(ck.state)),
        "trainer": ck.trainer,
        "policies": ck.policies,
        "rng": ck.rng,
        "config": __import__("omegaconf").OmegaConf.to_container(ck.config),
    }
    mutate(raw)
    path = tmp_path / "c.pt"
    torch.save(raw, path)
    return path


def _set(dotted: str, value):
    def mutate(raw):
        *parents, leaf = dotted.split(".")
        node = raw
        for key in parents:
            node = node[key]
        node[leaf] = value

    return mutate


def _drop(dotted: str):
    def mutate(raw):
        *parents, leaf = dotted.split(".")
        node = raw
        for key in parents:
            node = node[key]
        del node[leaf]

    return mutate


MALFORMED = {
    "interpolation in a tuple": (_set("config.dataset.mean", ("${oc.env:HOME}", 0.5, 0.5)), "refusing dataset.mean.0"),
    "target in a tuple": (_set("config.dataset.std", ({"_target_": "builtins.open"}, 1, 1)), "refusing dataset.std.0"),
    "interpolation in a set": (_set("config.mlflow.tags", {"a": {"${oc.env:HOME}"}}), "refusing mlflow.tags.a.0"),
    "recursive flag": (_set("config.model._recursive_", False), "refusing model._recursive_"),
    "eval_batch_size 0": (_set("config.dataset.eval_batch_size", 0), "dataset.eval_batch_size=0 is invalid"),
    "batch_size -1": (_set("config.dataset.batch_size", -1), "dataset.batch_size=-1"),
    "lr nan": (_set("config.optimizer.lr", math.nan), "optimizer.lr=nan"),
    "translate 100": (_set("config.trainer.eval_translate", 100), "trainer.eval_translate=100"),
    "mode against its metric": (_set("config.checkpoint.monitor", "test/loss"), "checkpoint.mode"),
    "unlogged objective": (_set("config.objective", "nope"), "objective='nope'"),
    "no model entry": (_drop("config.model"), "model.name=None is not a registered option"),
    "no dataset name": (_drop("config.dataset.name"), "dataset.name=None"),
    "config a list": (_set("config", [1, 2]), "not a mapping"),
    "no weights": (_set("trainer.model", {}), "has no model weights"),
    "weights not tensors": (_set("trainer.model", {"conv1.weight": 1}), "has no model weights"),
    "no trainer": (_drop("trainer"), "incomplete or malformed"),
    "epoch a word": (_set("run.epoch", "one"), "run.epoch='one' is invalid: must be an integer >= 0"),
    "epoch negative": (_set("run.epoch", -1), "run.epoch=-1"),
    "global_step a float": (_set("run.global_step", 2.5), "run.global_step=2.5"),
    "policy count negative": (_set("policies.early_stopping.bad_epochs", -1), "policies.early_stopping.bad_epochs=-1"),
    "policies a list": (_set("policies", [1]), "its policies are not a mapping"),
    "no classes": (_set("run.classes", []), "run.classes=[]"),
    "best a word": (_set("run.best", "good"), "run.best='good'"),
    "history a word": (_set("run.history", "x"), "run.history='x'"),
    "top malformed": (_set("run.top", [1]), "run.top=[1]"),
    "unknown run key": (_set("run.color", "red"), "incomplete or malformed"),
    "run a list": (_set("run", [1]), "incomplete or malformed"),
    "rng empty": (_set("rng", {}), "its RNG state is malformed"),
    "torch rng short": (_set("rng.torch", torch.zeros(3, dtype=torch.uint8)), "its RNG state is malformed"),
    "numpy rng a word": (_set("rng.numpy", "x"), "its RNG state is malformed"),
    "python rng a word": (_set("rng.python", "x"), "its RNG state is malformed"),
    "format a word": (_set("format_version", "2"), "format version '2'"),
}


@pytest.mark.parametrize("kind", MALFORMED)
def test_a_malformed_checkpoint_is_refused_in_one_line_naming_it(tmp_path, kind):
    mutate, needle = MALFORMED[kind]
    path = _stored(tmp_path, mutate)
    with pytest.raises(UserError) as err:
        checkpoint.load(path)
    message = str(err.value)
    assert needle in message and str(path) in message and "\n" not in message


def test_weights_that_do_not_fit_the_model_are_one_line(tmp_path):
    def shrink(raw):
        raw["trainer"]["model"]["fc3.weight"] = torch.zeros(3, 3)

    ck = checkpoint.load(_stored(tmp_path, shrink))
    with pytest.raises(UserError, match="its weights do not fit model=tutorial_net"):
        checkpoint.restore_model(ck, torch.device("cpu"))


def test_a_stored_tracking_uri_never_chooses_where_a_resumed_run_is_tracked(tmp_path):
    saved = checkpoint.load(_stored(tmp_path, _set("config.mlflow.tracking_uri", "sqlite:////tmp/crafted.db"))).config
    now = compose_cfg(SYN, f"resume={tmp_path}")
    assert resume_config(now, saved, [f"resume={tmp_path}"]).mlflow.tracking_uri is None  # $MLFLOW_TRACKING_URI
    chosen = compose_cfg(SYN, f"resume={tmp_path}", "mlflow.tracking_uri=sqlite:///mine.db")
    merged = resume_config(chosen, saved, [f"resume={tmp_path}", "mlflow.tracking_uri=sqlite:///mine.db"])
    assert merged.mlflow.tracking_uri == "sqlite:///mine.db"


@pytest.mark.slow
def test_malformed_checkpoints_are_one_line_in_resume_evaluate_and_predict(cli, workdir):
    from PIL import Image

    image = workdir / "img.png"
    Image.new("RGB", (32, 32)).save(image)
    for kind in ("interpolation in a tuple", "rng empty"):
        folder = workdir / kind.replace(" ", "_")
        folder.mkdir()
        path = _stored(folder, MALFORMED[kind][0])
        shutil.copy(path, folder / "last.pt")
        for args, module in (
            ((f"resume={path}", "mlflow.enabled=false"), "cifar_exp"),
            ((f"checkpoint={path}", "device=cpu"), "cifar_exp.evaluate"),
            ((f"checkpoint={path}", f"images=[{image}]", "device=cpu"), "cifar_exp.predict"),
        ):
            result = cli(*args, module=module)
            lines = result.stderr.strip().splitlines()
            assert result.returncode == 2 and len(lines) == 1, (kind, module, result.output[-2000:])
            assert str(path) in lines[0] and "Traceback" not in result.output


# --- sweeps: every trial config and the sweeper's settings, before the first job ---------------
OPTUNA = "hydra/sweeper=optuna"
SWEEPS = [
    (["optimizer.lr=0.01,-1"], "sweep trial optimizer.lr=-1: optimizer.lr=-1.0 is invalid"),
    (["objective=nope", "optimizer.lr=0.01,0.1"], "objective='nope'"),
    ([OPTUNA, "objective=nope"], "objective='nope'"),
    (["model=speed_net", "model.widths=[8],[8,8,8,8,8,8]"], "must be >= 64 for model=speed_net"),
    (["scheduler.warmup_epochs=0,10", "epochs=2"], "sweep trial scheduler.warmup_epochs=10"),
    (["dataset.val_size=0,5000"], "dataset.val_size=5000"),
    ([OPTUNA, "optimizer.lr=interval(0.001,inf)"], "optimizer.lr=inf"),
    ([OPTUNA, "optimizer.lr=interval(0.1,0.001)"], "low < high"),
    ([OPTUNA, "optimizer.lr=tag(log,interval(-1,0.1))"], "optimizer.lr=-1"),
    ([OPTUNA, "optimizer.weight_decay=tag(log,interval(0,0.1))"], "a log interval needs bounds > 0"),
    ([OPTUNA, "hydra/sweeper/sampler=grid", "optimizer.lr=interval(0.001,0.1)"], "sampler=grid needs choice"),
    ([OPTUNA, "hydra.sweeper.storage=garbage://x"], "hydra.sweeper.storage='garbage://x' is invalid"),
    ([OPTUNA, "hydra.sweeper.storage=sqlite:////no/such/dir/optuna.db"], "its folder /no/such/dir does not exist"),
    ([OPTUNA, "hydra.sweeper.sampler.n_startup_trials=-5"], "hydra.sweeper.sampler.n_startup_trials=-5"),
    ([OPTUNA, "hydra.sweeper.sampler.seed=-1"], "hydra.sweeper.sampler.seed=-1"),
    (
        [OPTUNA, "hydra/sweeper/pruner=median", "hydra.sweeper.pruner.n_startup_trials=-1"],
        "hydra.sweeper.pruner.n_startup_trials=-1",
    ),
    (
        [OPTUNA, "hydra/sweeper/pruner=hyperband", "hydra.sweeper.pruner.reduction_factor=1"],
        "hydra.sweeper.pruner.reduction_factor=1",
    ),
    (
        [OPTUNA, "hydra/sweeper/pruner=successive_halving", "hydra.sweeper.pruner.reduction_factor=0"],
        "reduction_factor=0",
    ),
    ([OPTUNA, "hydra.sweeper.n_trials=0"], "hydra.sweeper.n_trials=0"),
    ([OPTUNA, "hydra.sweeper.n_jobs=0"], "hydra.sweeper.n_jobs=0"),
    (
        [OPTUNA, "objective=val/loss", "dataset.val_size=10", "hydra.sweeper.direction=maximize"],
        "hydra.sweeper.direction=maximize is invalid: must be minimize",
    ),
    (["hparams_search=optuna_lr", "hydra.sweeper.direction=minimize"], "must be maximize or null"),
    (["hparams_search=optuna_lr", "dataset.val_size=100"], "0 when dataset.val_size is set"),
]


@pytest.mark.parametrize("overrides,needle", SWEEPS)
def test_a_sweep_is_refused_before_its_first_job(overrides, needle):
    with pytest.raises(UserError) as err:
        check_sweep_of(SYN, *overrides)
    assert needle in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "overrides",
    [
        ["hparams_search=optuna_lr"],
        [OPTUNA, "optimizer.lr=interval(0.001,0.1)"],
        ["model=simple_cnn,resnet18", "optimizer.lr=0.01,0.1"],
        [OPTUNA, "objective=val/loss", "dataset.val_fraction=0.2"],
    ],
)
def test_sound_sweeps_pass_the_same_checks(overrides):
    check_sweep_of(SYN, *overrides)


@pytest.mark.slow
def test_a_refused_sweep_is_one_line_and_starts_no_job(cli, workdir):
    for args in (["optimizer.lr=0.01,-1"], ["hydra/sweeper=optuna", "hydra.sweeper.storage=garbage://x"]):
        result = cli("--multirun", SYN, "mlflow.enabled=false", *args)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1, result.output
        assert lines[0].startswith("cifar-exp: error: ") and "Traceback" not in result.output
        assert not list(workdir.glob("multirun/*/*/*/.hydra")), "no job may start"


# --- the tools' arguments are typed ---------------------------------------------------------------
TOOLS = [
    ("evaluate", ["checkpoint=123"], "checkpoint 123 does not exist"),
    ("evaluate", ["checkpoint=[a,b]"], "checkpoint=['a', 'b'] is invalid"),
    ("evaluate", ["checkpoint=x", "device=[1]"], "device=[1] is invalid"),
    ("evaluate", ["checkpoint=x", "device=tpu"], "device='tpu' is invalid"),
    ("evaluate", ["checkpoint=x", "plot=5"], "plot='5' is invalid: must be a file name ending in .png"),
    ("evaluate", ["checkpoint=x", "plot=[a]"], "plot=['a'] is invalid"),
    ("evaluate", ["checkpoint=x", "dataset_root=[a]"], "dataset_root=['a'] is invalid"),
    ("evaluate", [], "checkpoint=... is required"),
    ("evaluate", ["checkpoint=x", "nope=1"], "unknown argument nope"),
    ("predict", ["checkpoint=x", "images=5"], "images=5 is invalid: must be an image path or a list"),
    ("predict", ["checkpoint=x", "images=[1,2]"], "images=[1, 2] is invalid"),
    ("predict", ["checkpoint=x", "images={a:1}"], "images={'a:1': None} is invalid"),
    ("predict", ["checkpoint=x", "images=[]"], "images=[] names no image"),
    ("predict", ["checkpoint=x", "images=[a.png]", "top=0"], "top=0 is invalid"),
    ("predict", ["checkpoint=x", "images=[a.png]", "top=abc"], "top='abc' is invalid"),
    ("predict", ["checkpoint=x", "images=[a.png]", "top=1.5"], "top=1.5 is invalid"),
    ("predict", ["checkpoint=x"], "images=... is required"),
    ("runs", ["--limit", "0"], "--limit: '0' is invalid: must be an integer from 1 to 50000"),
    ("runs", ["--limit", "-1"], "--limit: '-1' is invalid"),
    ("runs", ["--limit", "1000000"], "--limit: '1000000' is invalid: must be an integer from 1 to 50000"),
    ("runs", ["--sort", "a`b"], "--sort: 'a`b' is invalid: must be a metric name"),
    ("runs", ["--limit", "abc"], "--limit: 'abc' is invalid"),
    ("runs", ["--metrics", ""], "--metrics: '' is invalid"),
]


@pytest.mark.parametrize("tool,argv,needle", TOOLS)
def test_the_tools_arguments_are_typed_one_line_each(tool, argv, needle, capsys, workdir):
    import importlib

    main = importlib.import_module(f"cifar_exp.{tool}").main
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(lines) == 1, lines
    assert needle in lines[0] and lines[0].startswith(f"cifar-exp-{tool}: ")


def test_a_new_option_brings_its_own_rules_in_its_own_entry():
    """RMSprop: its schema's fields say their values; no check elsewhere guesses its keys,
    and its builder gets them all."""
    import torch

    from cifar_exp.optim import build_optimizer

    cfg = validate(compose_cfg(SYN, "optimizer=rmsprop", "optimizer.momentum=0.5", "optimizer.alpha=0.9"))
    optimizer = build_optimizer(cfg.optimizer, torch.nn.Linear(2, 2))
    assert isinstance(optimizer, torch.optim.RMSprop)
    assert optimizer.defaults["momentum"] == 0.5 and optimizer.defaults["alpha"] == 0.9
    with pytest.raises(UserError, match="optimizer.momentum=1.5 is invalid: must be a float in"):
        validate(compose_cfg(SYN, "optimizer=rmsprop", "optimizer.momentum=1.5"))
    with pytest.raises(UserError, match="optimizer.eps=0.0 is invalid: must be a float > 0"):
        validate(compose_cfg(SYN, "optimizer=rmsprop", "optimizer.eps=0"))


@pytest.mark.parametrize(
    "setting, refused",
    [
        ("scheduler=cosine", "scheduler=cosine"),
        ("trainer.lookahead_every=5", "trainer.lookahead_every=5"),
        ("scheduler=none", None),
    ],
)
def test_one_rule_for_changing_epochs_on_resume(setting, refused):
    """Any schedule laid over the run's length (a learning-rate schedule or lookahead's)
    keeps the epochs it was made for."""
    saved = compose_cfg(SYN, setting, "epochs=2")
    now = compose_cfg(SYN, setting, "epochs=4")
    if refused is None:
        assert resume_config(now, saved, ["epochs=4"]).epochs == 4
    else:
        with pytest.raises(UserError, match=f"epochs cannot change when resuming with {refused}"):
            resume_config(now, saved, ["epochs=4"])


@pytest.mark.slow
def test_a_resume_that_monitors_another_metric_starts_its_record_afresh(train):
    """Monitored by accuracy, then resumed monitoring the loss with a patience of 1. A run
    that learns nothing (lr 1e-6) has an accuracy near 0.1 and a loss near 2.3: judged
    against the accuracy's best, the loss would never improve and stop the run. Instead the
    first resumed epoch sets the loss's best, and best.pt follows the loss."""
    import torch

    still = [SYN, "optimizer.lr=1e-6", "trainer.progress=false", "mlflow.enabled=false"]
    first = train(*still, "epochs=2")
    ck = first.run_dir / "checkpoints"
    patient = ["checkpoint.monitor=test/loss", "trainer.early_stopping_patience=1"]
    again = train(*still, "epochs=3", f"resume={first.run_dir}", *patient)
    assert "start afresh" in again.log and "stopping early" not in again.log
    best = torch.load(ck / "best.pt", weights_only=True)["run"]
    assert best["epoch"] == 3 and best["best"] == pytest.approx(best["history"][-1]["test/loss"])
