"""Checkpoints: atomic writes, clear errors for bad files, exact resume, evaluate/predict."""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cifar_exp import checkpoint, durable
from cifar_exp.errors import UserError
from cifar_exp.policies import Policies

from helpers import FAST, cli_env, cli_process, compose_cfg, png_tree

# --- the file format -----------------------------------------------------------------------
FIXTURES = Path(__file__).parent / "fixtures"
# written by cifar_exp 0.1.0 (format 1): tutorial_net, 1 epoch of synthetic data (256/64 images)
V1 = FIXTURES / "v1_tutorial_net.pt"


def test_a_format_1_checkpoint_loads_as_run_state_and_registered_options():
    ck = checkpoint.load(V1)
    assert (ck.state.epoch, ck.state.step, ck.state.global_step) == (1, 0, 2)
    assert ck.state.classes == [f"class{i}" for i in range(10)] and len(ck.state.history) == 1
    assert ck.config.model.name == "tutorial_net" and ck.config.optimizer.name == "sgd"
    assert ck.config.optimizer.momentum == 0.9 and "global_step" not in ck.trainer
    model = checkpoint.restore_model(ck, torch.device("cpu"))
    assert sum(p.numel() for p in model.parameters()) == 62006


def _v1_with(tmp_path, **changes) -> Path:
    raw = torch.load(V1, weights_only=True)
    for dotted, value in changes.items():
        node = raw
        *parents, leaf = dotted.split("__")
        for key in parents:
            node = node[key]
        node[leaf] = value
    path = tmp_path / "c.pt"
    torch.save(raw, path)
    return path


def _v2_with(tmp_path, group: str, node: dict) -> Path:
    raw = torch.load(V1, weights_only=True)
    raw["config"]["model"] = {"name": "tutorial_net"}
    raw["config"]["optimizer"] = {"name": "sgd", "lr": 0.05}
    raw["config"][group] = node
    state = {k: raw.pop(k) for k in ("epoch", "step", "best", "history", "run_id", "classes")}
    state["global_step"] = raw["trainer"].pop("global_step")
    path = tmp_path / "c.pt"
    torch.save({**raw, "format_version": 2, "run": state}, path)
    return path


class _Evil:
    def __reduce__(self):
        return (open, ("/tmp/should-not-exist", "w"))


POISON = {
    "v1 model target": lambda t: _v1_with(
        t, config__model={"_target_": "builtins.open", "file": str(t / "x"), "mode": "w"}
    ),
    "v1 optimizer target": lambda t: _v1_with(t, config__optimizer={"_target_": "os.system", "command": "id"}),
    "nested target": lambda t: _v2_with(
        t, "model", {"name": "tutorial_net", "extra": {"_target_": "builtins.open", "file": str(t / "x")}}
    ),
    "target beside a name": lambda t: _v2_with(t, "optimizer", {"name": "sgd", "_target_": "builtins.open"}),
    "partial": lambda t: _v2_with(t, "scheduler", {"name": "none", "_partial_": True}),
    "unknown option": lambda t: _v2_with(t, "model", {"name": "builtins.open"}),
    "unknown key": lambda t: _v2_with(t, "model", {"name": "speed_net", "file": "x"}),
    "wrong type": lambda t: _v2_with(t, "optimizer", {"name": "sgd", "lr": "abc"}),
    "pickled object": lambda t: (torch.save({"format_version": 2, "x": _Evil()}, t / "c.pt"), t / "c.pt")[1],
    "v1 unregistered class": lambda t: _v1_with(
        t, config__model={"_target_": "torch.nn.Linear", "in_features": 1, "out_features": 1}
    ),
    "target in a list": lambda t: _v2_with(
        t, "dataset", {"name": "synthetic", "mean": [{"_target_": "builtins.open"}, 0.5, 0.5]}
    ),
    "target in tags": lambda t: _v2_with(t, "mlflow", {"tags": {"_target_": "builtins.exec"}}),
    "interpolation": lambda t: _v2_with(t, "dataset", {"name": "synthetic", "root": "${oc.env:HOME}"}),
    "unknown top-level key": lambda t: _v2_with(t, "hydra", {"run": {"dir": "/tmp"}}),
}


@pytest.mark.parametrize("kind", POISON)
def test_a_poisoned_checkpoint_is_refused_in_one_line(tmp_path, kind):
    path = POISON[kind](tmp_path)
    with pytest.raises(UserError) as err:
        checkpoint.load(path)
    message = str(err.value)
    assert str(path) in message and "\n" not in message and "weights_only=False" not in message
    assert not (tmp_path / "x").exists() and not Path("/tmp/should-not-exist").exists()


def _nested(depth: int):
    tree: list = []
    for _ in range(depth):
        tree = [tree]
    return tree


def _v2_state(tmp_path, config_tags=None, **state) -> Path:
    """A format-2 checkpoint whose run state has `state` in it (and `config_tags` as its mlflow.tags)."""
    path = _v2_with(tmp_path, "optimizer", {"name": "sgd", "lr": 0.05})
    raw = torch.load(path, weights_only=True)
    raw["run"].update(state)
    if config_tags is not None:
        raw["config"]["mlflow"] = {"tags": config_tags}
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(20_000)  # pickling a deep list recurses; reading it back does not
    try:
        torch.save(raw, path)
    finally:
        sys.setrecursionlimit(limit)
    return path


MALFORMED_STATE = {
    "history nested 5,000 deep": (lambda t: _v2_state(t, history=[{"x": _nested(5000)}]), "nest deeper than 64"),
    "config nested 5,000 deep": (lambda t: _v2_state(t, config_tags={"a": _nested(5000)}), "nest deeper than 64"),
    "string history value": (lambda t: _v2_state(t, history=[{"train/loss": "0.5"}]), "run.history"),
    "top with a name": (lambda t: _v2_state(t, top=[["a", 1]]), "run.top"),
    "top with a path for an epoch": (lambda t: _v2_state(t, top=[[0.99, "../../x"]]), "run.top"),
    "top with an epoch not run": (lambda t: _v2_state(t, top=[[0.99, 7]]), "run.top"),
    "top with one epoch twice": (lambda t: _v2_state(t, epoch=2, top=[[0.9, 1], [0.8, 1]]), "run.top"),
    "top with an infinite score": (lambda t: _v2_state(t, top=[[float("inf"), 1]]), "run.top"),
}


@pytest.mark.parametrize("kind", MALFORMED_STATE)
def test_malformed_state_is_refused_at_load_in_one_line(tmp_path, kind):
    make, needle = MALFORMED_STATE[kind]
    path = make(tmp_path)
    with pytest.raises(UserError, match=re.escape(needle)) as err:
        checkpoint.load(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "where, value",
    [
        (("optimizer", "param_groups", 0, "lr"), "0.1"),
        (("optimizer", "param_groups", 0, "momentum"), [0.9]),
        (("optimizer", "param_groups", 0, "nesterov"), "yes"),
        (("model", "weight"), [[1.0]]),
    ],
)
def test_a_type_confused_trainer_state_is_refused_before_training(where, value):
    """Checked against the run's own freshly built trainer state, key by key."""
    import copy

    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    fresh = {"model": model.state_dict(), "optimizer": opt.state_dict()}
    checkpoint.check_fits(copy.deepcopy(fresh), fresh, "checkpoint c.pt")  # its own state fits
    stored = copy.deepcopy(fresh)
    node = stored
    for key in where[:-1]:
        node = node[key]
    node[where[-1]] = value
    with pytest.raises(UserError, match="trainer." + ".".join(map(str, where))):
        checkpoint.check_fits(stored, fresh, "checkpoint c.pt")


@pytest.mark.parametrize(
    "content,needle",
    [
        (None, "does not exist"),
        (b"\x00garbage", "unreadable"),
        ("not-a-checkpoint", "not a cifar_exp checkpoint"),
        ("future", "format version 99"),
        ("incomplete", "incomplete"),
    ],
)
def test_bad_checkpoint_files_are_named_in_one_error(tmp_path, content, needle):
    path = tmp_path / "c.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content == "not-a-checkpoint":
        torch.save({"weights": torch.ones(1)}, path)
    elif content == "future":
        torch.save({"format_version": 99}, path)
    elif content == "incomplete":
        torch.save({"format_version": 2, "run": {"epoch": 1}}, path)
    with pytest.raises(UserError, match=needle) as err:
        checkpoint.load(path)
    assert str(path) in str(err.value)


def test_find_falls_back_to_the_newest_valid_checkpoint(tmp_path):
    d = tmp_path / "run" / "checkpoints"
    d.mkdir(parents=True)
    for name in ("epoch_0001.pt", "epoch_0002.pt", "last.pt"):
        shutil.copy(V1, d / name)
        time.sleep(0.01)
    (d / "last.pt").write_bytes((d / "last.pt").read_bytes()[:100])  # truncated
    said = []
    ck = checkpoint.find(tmp_path / "run", log=said.append)
    assert ck.path.name == "epoch_0002.pt" and ck.state.epoch == 1
    assert "last.pt" in said[0] and "epoch_0002.pt" in said[0]


class _Trainer:
    def state_dict(self) -> dict:
        return {"model": {}}


NO_POLICIES = Policies()


def _writer_config(**checkpoint_keys):
    from cifar_exp.validation import validate

    keys = {"keep_last": 0, "save_best": True, "save_top_k": 0, "mode": "max", **checkpoint_keys}
    return validate(compose_cfg("dataset=synthetic", *(f"checkpoint.{k}={v}" for k, v in keys.items())))


def test_checkpointer_keeps_last_k_top_k_and_best_and_flushes_first(tmp_path):
    flushed = []
    writer = checkpoint.Checkpointer(
        tmp_path,
        _writer_config(keep_last=2, save_top_k=2),
        enabled=True,
        before_write=lambda: flushed.append(len(list(tmp_path.rglob("last.pt")))),
    )
    state = checkpoint.RunState(classes=["a", "b"])
    for acc in [0.1, 0.5, 0.3, 0.2]:
        is_best = state.end_epoch({"acc": acc}, "acc", "max")
        writer.save(state, _Trainer(), NO_POLICIES, epoch_end=True, is_best=is_best, score=acc)
    names = sorted(p.name for p in (tmp_path / "checkpoints").glob("*.pt"))
    assert names == ["best.pt", "epoch_0003.pt", "epoch_0004.pt", "last.pt", "top_epoch_0002.pt", "top_epoch_0003.pt"]
    best = torch.load(tmp_path / "checkpoints/best.pt", weights_only=True)["run"]
    assert best["best"] == 0.5 and best["epoch"] == 2 and state.best == 0.5
    assert torch.load(tmp_path / "checkpoints/top_epoch_0003.pt", weights_only=True)["run"]["epoch"] == 3
    assert state.top == [[0.5, 2], [0.3, 3]]
    assert flushed == [0, 1, 1, 1]  # the flush precedes each write


class _WeightsTrainer:
    """A trainer state with real tensor bytes, large enough to damage in the middle."""

    def __init__(self, seed: int):
        self.weight = torch.randn(50_000, generator=torch.Generator().manual_seed(seed))

    def state_dict(self) -> dict:
        return {"model": {"w": self.weight}}


def _three_epochs(tmp_path) -> Path:
    """last.pt, best.pt and epoch_0002/0003.pt of a run whose epochs 1-3 have seeds 1-3."""

    writer = checkpoint.Checkpointer(tmp_path, _writer_config(keep_last=2), enabled=True)
    state = checkpoint.RunState(classes=[f"class{i}" for i in range(10)])
    for epoch, acc in enumerate([0.1, 0.5, 0.6], start=1):
        is_best = state.end_epoch({"test/acc": acc}, "test/acc", "max")
        writer.save(state, _WeightsTrainer(epoch), NO_POLICIES, epoch_end=True, is_best=is_best, score=acc)
        time.sleep(0.01)  # the fall-back order is by time
    return tmp_path / "checkpoints"


@pytest.mark.parametrize("damage", ["truncate", "overwrite"])
def test_in_place_damage_of_the_newest_checkpoint_falls_back_and_spares_the_others(tmp_path, damage):
    """Each file is its own copy (no shared inode) and carries a checksum: torch.load reads
    tensor bytes overwritten in place without a word, the checksum does not."""
    d = _three_epochs(tmp_path)
    files = sorted(d.glob("*.pt"))
    assert [p.name for p in files] == ["best.pt", "epoch_0002.pt", "epoch_0003.pt", "last.pt"]
    assert len({p.stat().st_ino for p in files}) == 4 and all(p.stat().st_nlink == 1 for p in files)
    last = d / "last.pt"
    if damage == "truncate":
        os.truncate(last, 100_000)
    else:
        with open(last, "r+b") as f:  # the middle of the weights, in place
            f.seek(last.stat().st_size // 2)
            f.write(b"\xff" * 64)
    said = []
    ck = checkpoint.find(tmp_path, log=said.append)
    [line] = said
    assert "last.pt" in line and ck.path.name in line and "newest valid" in line
    assert ck.state.epoch == 3 and torch.equal(ck.trainer["model"]["w"], _WeightsTrainer(3).weight)
    for name in ("best.pt", "epoch_0002.pt", "epoch_0003.pt"):
        checkpoint.load(d / name)  # intact
    if damage == "overwrite":
        with pytest.raises(UserError, match="damaged: its contents do not match its checksum"):
            checkpoint.load(last)


def test_foreign_entries_among_the_checkpoints_are_skipped_with_a_line(tmp_path):
    d = _three_epochs(tmp_path)
    (d / "extra.pt").symlink_to(tmp_path / "gone.pt")  # dangling
    (d / "folder.pt").mkdir()
    said = []
    ck = checkpoint.find(tmp_path, log=said.append)
    assert ck.path.name == "last.pt" and ck.state.epoch == 3
    assert sorted(line.split()[1] for line in said) == [str(d / "extra.pt"), str(d / "folder.pt")]
    assert all("not a checkpoint file" in line for line in said)
    assert checkpoint.has_checkpoint(tmp_path)


# --- resume, end to end ----------------------------------------------------------------------
# a warmup makes the lr a logged curve, and its state part of what a resume must restore
EXACT = [
    *FAST,
    "trainer=deterministic",
    "trainer.log_every_n_steps=1",
    "dataset.train_size=1000",
    "scheduler.warmup_epochs=0.5",
]
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
def straight(train, workdir):
    """Four epochs without interruption: the reference for every resume test."""
    run_dir = train(*EXACT, "epochs=4", "mlflow.experiment_name=straight", run_dir="straight").run_dir
    return run_dir, histories(workdir, "straight")[1]


@pytest.mark.slow
def test_two_epochs_then_resume_to_four_is_bit_identical(train, workdir, straight):
    ref_dir, ref_metrics = straight
    first = train(*EXACT, "epochs=2", "mlflow.experiment_name=resumed", run_dir="first").run_dir
    train(f"resume={first}", *EXACT, "epochs=4", "mlflow.experiment_name=resumed", run_dir="first")
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
    args = [
        sys.executable,
        "-m",
        "testing_cli",
        *EXACT,
        "epochs=4",
        "checkpoint.every_n_steps=3",
        "checkpoint.every_n_epochs=4",
        "checkpoint.save_best=false",
        "model=slow_cnn",
        "mlflow.experiment_name=killed",
        f"hydra.run.dir={run_dir}",
        "resume=auto",
    ]
    proc = subprocess.Popen(args, cwd=workdir, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not (run_dir / "checkpoints/last.pt").exists():
        assert proc.poll() is None, "finished before the first checkpoint"
        time.sleep(0.05)
    time.sleep(random.uniform(0.0, 1.0))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = torch.load(run_dir / "checkpoints/last.pt", weights_only=True)["run"]["global_step"]
    assert 0 < killed_at < 32
    done = subprocess.run(args, cwd=workdir, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "resuming from" in done.stdout
    assert same_weights(weights(run_dir), weights(ref_dir))
    status, metrics = histories(workdir, "killed")
    assert status == "FINISHED" and metrics == ref_metrics


@pytest.mark.slow
def test_truncated_last_checkpoint_falls_back_when_resuming_from_the_dir(cli, train):
    command = [*FAST, "checkpoint.keep_last=2", "mlflow.enabled=false"]
    first = train(*command, "epochs=2").run_dir
    last = first / "checkpoints/last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    resumed = train(f"resume={first}", *command, "epochs=3")
    assert "skipped invalid checkpoint" in resumed.log and "epoch_0002.pt" in resumed.log
    assert torch.load(last, weights_only=True)["run"]["epoch"] == 3

    last.write_bytes(b"junk")  # a file named explicitly is never swapped for another
    direct = cli(f"resume={last}", "mlflow.enabled=false")
    assert direct.returncode == 2 and str(last) in direct.stderr and "unreadable" in direct.stderr


@pytest.mark.slow
def test_resume_refuses_a_change_of_model_or_optimizer(cli_here, train):
    """The resume rules, in this process: a malformed checkpoint's resume (test_validation)
    is the real process whose one line and exit code these share."""
    first = train(*FAST, "mlflow.enabled=false", run_dir="first").run_dir
    for override, key in (
        ("model=tutorial_net", "model.name"),
        ("optimizer=adam", "optimizer.name"),
        ("dataset.batch_size=64", "dataset.batch_size"),
    ):
        result = cli_here(f"resume={first}", "epochs=2", override, "mlflow.enabled=false")
        assert result.returncode == 2, result.output
        assert f"cannot change {key}" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def _resigned(path: Path, edit) -> Path:
    """The checkpoint with `edit` applied to its payload and a valid checksum again, as
    anyone can make one: the checksum has no key."""
    raw = torch.load(path, weights_only=True)
    edit(raw)
    raw.pop("sha256")
    raw["sha256"] = durable.digest(raw)
    torch.save(raw, path)
    return path


@pytest.mark.slow
def test_a_stored_cache_dir_or_store_never_chooses_where_a_job_writes(train, workdir, capsys):
    """A re-signed checkpoint names a cache dir and a tracking store of its own: evaluate and
    a resume read its images where it says, but write the cache where this job says."""
    from cifar_exp import evaluate

    png_tree(workdir / "imgs")
    data = ["dataset=image_folder", f"dataset.root={workdir / 'imgs'}", *FAST[1:]]
    run = train(*data, "dataset.cache_dir=cache")
    last = run.run_dir / "checkpoints" / "last.pt"

    def plant(raw):
        raw["config"]["dataset"]["cache_dir"] = str(workdir / "planted" / "deep")
        raw["config"]["mlflow"]["tracking_uri"] = f"sqlite:///{workdir / 'planted.db'}"

    _resigned(last, plant)
    evaluate.main([f"checkpoint={last}", "device=cpu"])
    assert "confusion matrix" in capsys.readouterr().out
    assert Path("data/cache").is_dir()  # the tool's own default, in its launch dir
    train(f"resume={run.run_dir}", "epochs=2", "dataset.cache_dir=mine", *data, run_dir="again")
    assert (workdir / "again" / "mine").is_dir()
    assert not (workdir / "planted").exists() and not (workdir / "planted.db").exists()


@pytest.mark.slow
def test_evaluate_and_predict_from_a_checkpoint(cli_here, train, workdir):
    from PIL import Image

    trained = train(*FAST, "epochs=2", "mlflow.enabled=false")
    run, logged = trained.run_dir, f"{100 * trained.metrics['test/acc']:.2f}"
    result = cli_here(f"checkpoint={run}", module="cifar_exp.evaluate")
    assert result.returncode == 0, result.output
    assert f"Accuracy of the network on the 500 test images: {logged} %" in result.stdout
    assert "confusion matrix" in result.stdout and "Accuracy for class: class9" in result.stdout

    from cifar_exp.config_dataset import SyntheticConfig
    from cifar_exp.data import load_dataset

    test = load_dataset(SyntheticConfig(), torch.device("cpu")).test
    paths = []
    for i in range(2):
        paths.append(workdir / f"img{i}.png")
        Image.fromarray(test.x[i].permute(1, 2, 0).numpy()).save(paths[-1])
    result = cli_here(
        f"checkpoint={run / 'checkpoints/best.pt'}", f"images=[{paths[0]},{paths[1]}]", module="cifar_exp.predict"
    )
    assert result.returncode == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"{paths[0]}: class")
    assert result.stderr == ""  # no library warning (NumPy's "not writable") around the answer
    assert len(re.findall(r"class\d \d+\.\d%", lines[0])) == 3
    bad = cli_here("checkpoint=/nope.pt", f"images=[{paths[0]}]", module="cifar_exp.predict")
    assert bad.returncode == 2 and "/nope.pt does not exist" in bad.stderr


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["v1 model target", "nested target", "pickled object"])
def test_poisoned_checkpoints_run_nothing_through_resume_evaluate_or_predict(cli_here, workdir, kind):
    """Each tool reads the poisoned file, refuses it in one line, exits non-zero, and
    creates nothing: no file the config names, no run dir, no MLflow run."""
    poisoned = workdir / "poison"
    poisoned.mkdir()
    path = POISON[kind](poisoned)
    image = workdir / "img.png"
    from PIL import Image

    Image.new("RGB", (32, 32)).save(image)
    before = set(workdir.rglob("*"))
    for args, module in (
        ((f"resume={path}",), "cifar_exp"),
        ((f"resume={poisoned}",), "cifar_exp"),
        ((f"checkpoint={path}",), "cifar_exp.evaluate"),
        ((f"checkpoint={path}", f"images=[{image}]"), "cifar_exp.predict"),
    ):
        result = cli_here(*args, "mlflow.enabled=false" if module == "cifar_exp" else "device=cpu", module=module)
        assert result.returncode == 2, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in result.output, result.stderr
        assert str(path) in lines[0] or str(poisoned) in lines[0]
        assert "weights_only=False" not in result.output
    created = {p for p in set(workdir.rglob("*")) - before if "outputs" not in p.parts}
    assert not (poisoned / "x").exists() and not Path("/tmp/should-not-exist").exists()
    assert created == set(), created


def _bomb(path: Path) -> Path:
    """A small PNG file that decodes to 196 million pixels: PIL refuses it as a bomb."""
    from PIL import Image

    Image.new("1", (14000, 14000)).save(path)
    return path


TOOL_BAD_INPUTS = [
    ("cifar_exp.evaluate", ["device=tpu"], "device='tpu'"),
    ("cifar_exp.evaluate", ["plot=/proc/no/such/dir/c.png"], "plot=/proc/no/such/dir/c.png"),
    ("cifar_exp.evaluate", ["checkpoint_dir=x"], "unknown argument checkpoint_dir"),
    ("cifar_exp.predict", ["images=[IMG]", "top=0"], "top=0"),
    ("cifar_exp.predict", ["images=[IMG]", "top=-1"], "top=-1"),
    ("cifar_exp.predict", ["images=[IMG]", "top=abc"], "top='abc'"),
    ("cifar_exp.predict", ["images=[]"], "images=[]"),
    ("cifar_exp.predict", ["images=[BOMB]"], "cannot read image"),
    ("cifar_exp.predict", ["images=[/no/such.png]"], "/no/such.png does not exist"),
]


@pytest.mark.slow
def test_bad_tool_inputs_are_one_line_and_exit_2(cli, workdir):
    from PIL import Image

    image = workdir / "img.png"
    Image.new("RGB", (32, 32)).save(image)
    bomb = _bomb(workdir / "bomb.png")
    for module, args, needle in TOOL_BAD_INPUTS:
        args = [a.replace("IMG", str(image)).replace("BOMB", str(bomb)) for a in args]
        result = cli(f"checkpoint={V1}", *args, module=module)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1, (args, result.output)
        assert needle in lines[0] and "Traceback" not in result.output, (args, lines)


def test_a_full_disk_keeps_the_previous_checkpoint_and_says_why(tmp_path, monkeypatch):
    import errno

    writer = checkpoint.Checkpointer(tmp_path, _writer_config(), enabled=True)
    state = checkpoint.RunState(classes=["a"], epoch=1, global_step=10)
    writer.save(state, _Trainer(), NO_POLICIES, epoch_end=True, is_best=False)

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(durable.os, "fsync", full)
    state.epoch, state.global_step = 2, 20
    with pytest.raises(UserError) as err:
        writer.save(state, _Trainer(), NO_POLICIES, epoch_end=True, is_best=False)
    monkeypatch.undo()
    assert "No space left on device" in str(err.value) and "(step 10)" in str(err.value)
    assert torch.load(tmp_path / "checkpoints/last.pt", weights_only=True)["run"]["epoch"] == 1
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["last.pt"]


def _immutable(path: Path) -> bool:
    return subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode == 0


@pytest.mark.slow
@pytest.mark.parametrize("how", ["a file in the way", "an immutable dir", "a read-only run dir", "a folder as last.pt"])
def test_unwritable_output_is_one_line_before_training(cli, workdir, how):
    run_dir = workdir / "run"
    run_dir.mkdir()
    target = run_dir / "checkpoints"
    if how == "a file in the way":
        target.write_text("not a directory")
    elif how == "an immutable dir":
        target.mkdir()
        if not _immutable(target):
            pytest.skip("chattr +i is not permitted here")
    elif how == "a folder as last.pt":
        target = target / "last.pt"
        target.mkdir(parents=True)
    else:
        run_dir = target = Path("/sys/kernel/cifar_exp_run")  # sysfs refuses new entries, even to root
    try:
        result = cli(*FAST, f"hydra.run.dir={run_dir}", "resume=auto")
    finally:
        subprocess.run(["chattr", "-i", str(target)], capture_output=True)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.output[-2000:]
    assert str(target) in lines[0] and "Traceback" not in result.output
    assert "epoch 1" not in result.stdout
    from mlflow.tracking import MlflowClient

    store = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    assert store.search_runs([e.experiment_id for e in store.search_experiments()]) == []  # no run opened


@pytest.mark.slow
def test_resuming_a_loose_checkpoint_file_writes_beside_the_new_run(cli, workdir):
    loose = workdir / "kept" / "model.pt"
    loose.parent.mkdir()
    shutil.copy(V1, loose)
    run_dir = workdir / "continued"
    result = cli(f"resume={loose}", "epochs=2", "mlflow.enabled=false", f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.output[-2000:]
    assert torch.load(run_dir / "checkpoints/last.pt", weights_only=True)["run"]["epoch"] == 2
    assert sorted(p.name for p in workdir.iterdir() if p.is_dir()) == ["continued", "kept"]
    assert [p.name for p in loose.parent.iterdir()] == ["model.pt"]


@pytest.mark.slow
def test_resume_with_ema_accumulation_and_mixup_is_bit_identical(train, workdir):
    features = [
        *EXACT,
        "trainer.ema_decay=0.9",
        "trainer.accumulate_grad_batches=3",
        "dataset.mixup_alpha=0.4",
        "dataset.cutmix_alpha=1.0",
        "dataset.augment=true",
        "dataset.cutout=8",
        "mlflow.log_model=false",
    ]
    straight, split, old = workdir / "straight", workdir / "split", workdir / "old"
    train(*features, "epochs=3", "mlflow.experiment_name=straight", run_dir="straight")
    train(*features, "epochs=1", "mlflow.experiment_name=split", run_dir="split")
    shutil.copytree(split / "checkpoints", old / "checkpoints")
    as_format_2(old / "checkpoints/last.pt", batches_per_epoch=8)  # what main wrote before steps were optimizer steps
    train(f"resume={split}", *features, "epochs=3", "mlflow.experiment_name=split", run_dir="split")
    train(f"resume={old}", *features, "epochs=3", "mlflow.enabled=false", run_dir="old")
    a, b, c = (torch.load(d / "checkpoints/last.pt", weights_only=True) for d in (straight, split, old))
    # 8 batches an epoch in groups of 3, 3 and 2: 3 optimizer steps an epoch
    assert a["run"]["global_step"] == b["run"]["global_step"] == c["run"]["global_step"] == 9
    for other in (b, c):
        assert same_weights(a["trainer"]["model"], other["trainer"]["model"])
        assert same_weights(a["trainer"]["ema"], other["trainer"]["ema"])
    assert a["trainer"]["optimizer"]["state"].keys() == b["trainer"]["optimizer"]["state"].keys()
    ref, resumed = histories(workdir, "straight")[1], histories(workdir, "split")[1]
    for key in COMPARED:
        assert resumed[key] == ref[key], key
    assert [step for step, _ in ref["train/loss"]] == list(range(1, 10))  # one point per optimizer step


@pytest.mark.slow
def test_a_format_2_run_with_accumulation_logs_every_later_metric(train, workdir):
    """Format 2 logged at batch counts: its store holds steps up to 8 after one epoch of 8
    batches. Resumed, the run counts optimizer steps (3 an epoch) and logs them after the
    steps the store holds; not one later point is dropped."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    run_dir = workdir / "old"
    features = [*EXACT, "trainer.accumulate_grad_batches=3", "mlflow.log_model=false"]
    train(*features, "epochs=1", "mlflow.experiment_name=old", run_dir="old")
    c = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    [run] = c.search_runs([c.get_experiment_by_name("old").experiment_id])
    rid = run.info.run_id
    c.log_batch(rid, metrics=[Metric("train/loss", 1.0, 0, step) for step in range(4, 9)])  # batch units, as then
    as_format_2(run_dir / "checkpoints/last.pt", batches_per_epoch=8)
    train(f"resume={run_dir}", *features, "epochs=3", "mlflow.experiment_name=old", run_dir="old")
    logged = [m.step for m in sorted(c.get_metric_history(rid, "train/loss"), key=lambda m: m.step)]
    assert logged == list(range(1, 9)) + list(range(9, 15))  # 6 more optimizer steps, after step 8
    assert [m.step for m in c.get_metric_history(rid, "epoch")][-2:] == [11, 14]


def as_format_2(path: Path, batches_per_epoch: int) -> None:
    """Rewrite a checkpoint as format 2 wrote it: batches as global_step, early stopping's
    count in the run state, no policies."""
    raw = torch.load(path, weights_only=True)
    run = raw["run"]
    run["global_step"] = run["epoch"] * batches_per_epoch + run["step"]
    run["bad_epochs"] = raw.pop("policies")["early_stopping"]["bad_epochs"]
    raw["format_version"] = 2
    del raw["sha256"]
    raw["sha256"] = durable.digest(raw)
    torch.save(raw, path)


@pytest.mark.slow
def test_the_airbench_recipe_resumes_bit_identically(train, workdir):
    """Lookahead, the whitening layer (init from data, bias frozen after epoch 1), alternating
    flips, reflected crops, drop_last and a max_steps end inside epoch 3, with a SIGTERM
    in epoch 2 and a resume."""
    recipe = [
        *EXACT,
        "experiment=airbench94",
        "model.widths=[8,16,16]",
        "model.whiten_bias_epochs=1",
        "dataset.batch_size=128",
        "trainer.max_steps=20",
        "epochs=4",
        "mlflow.log_model=false",
    ]
    straight, split = workdir / "straight", workdir / "split"
    train(*recipe, "mlflow.experiment_name=straight", run_dir="straight")
    proc = cli_process(
        "cifar_exp", *recipe, "mlflow.experiment_name=split", f"hydra.run.dir={split}", cwd=workdir, merged=True
    )
    for line in proc.stdout:
        if line.startswith("epoch 1/4:"):
            proc.send_signal(signal.SIGTERM)
            break
    proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM
    train(f"resume={split}", *recipe, "mlflow.experiment_name=split", run_dir="split")
    a, b = (torch.load(d / "checkpoints/last.pt", weights_only=True) for d in (straight, split))
    assert a["run"]["global_step"] == b["run"]["global_step"] == 20 and a["run"]["epoch"] == 3
    assert same_weights(a["trainer"]["model"], b["trainer"]["model"])
    assert same_weights(a["trainer"]["lookahead"]["slow"], b["trainer"]["lookahead"]["slow"])
    ref, resumed = histories(workdir, "straight")[1], histories(workdir, "split")[1]
    for key in COMPARED:
        assert resumed[key] == ref[key], key
    assert [s for s, _ in ref["test/acc"]] == [7, 14, 20]  # two full epochs of 7 batches, then 6


@pytest.mark.parametrize(
    "key, stored, now",
    [("amp", True, "auto"), ("amp", False, "false"), ("compile", True, "true"), ("compile", False, "false")],
)
def test_a_stored_bool_reads_as_what_it_meant(key, stored, now):
    """trainer.amp was a bool: true meant autocast where the device has it (then CUDA
    only), which is today's auto; trainer.compile was a bool too. A checkpoint of then must
    resume as it ran."""
    from omegaconf import OmegaConf

    from cifar_exp.stored import from_stored

    from helpers import compose_cfg

    config = OmegaConf.to_container(compose_cfg("dataset=synthetic"), resolve=True)
    config["trainer"][key] = stored
    assert from_stored(config, "test").trainer[key] == now


def test_class_names_from_a_file_reach_the_terminal_escaped(tmp_path, capsys):
    """A class name (a folder name, a stored string) holding an ANSI sequence is shown, not obeyed."""
    from PIL import Image

    from cifar_exp import predict

    names = ["\x1b[2J\x1b[31mred", "car\rriage", *(f"class{i}" for i in range(2, 10))]
    path = _v1_with(tmp_path, classes=names)
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    predict.main([f"checkpoint={path}", f"images=[{tmp_path / 'a.png'}]", "device=cpu", "top=10"])
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\r" not in out
    assert "\\x1b[2J\\x1b[31mred" in out and "car\\rriage" in out


def test_the_console_log_escapes_what_the_run_log_keeps():
    import logging

    from cifar_exp.terminal import ConsoleFormatter

    record = logging.LogRecord("cifar_exp", logging.INFO, __file__, 1, "class %s\nnext", ("\x1b[31mcat",), None)
    assert ConsoleFormatter("%(message)s").format(record) == "class \\x1b[31mcat\nnext"


@pytest.mark.slow
def test_evaluate_uses_the_run_s_precision_and_says_which(train, capsys):
    """Evaluated as the run evaluated itself (bf16 autocast where this CPU has the units),
    the test loss is the run's own; precision=float32 is there for full precision."""
    from cifar_exp import evaluate
    from cifar_exp.runtime import pick_precision
    from cifar_exp.tool_cli import parse_cli

    run = train(*FAST, "trainer.amp=auto")
    last = run.run_dir / "checkpoints" / "last.pt"
    expected = pick_precision("auto", torch.device("cpu")).name
    same = evaluate.evaluate(parse_cli([f"checkpoint={last}", "device=cpu"], evaluate.EvaluateArgs))
    assert same["test/loss"] == pytest.approx(run.metrics["test/loss"], abs=1e-6)
    assert f"precision {expected} (the run's trainer.amp=auto here: " in capsys.readouterr().out
    evaluate.evaluate(parse_cli([f"checkpoint={last}", "device=cpu", "precision=float32"], evaluate.EvaluateArgs))
    assert "precision float32 (precision=float32)" in capsys.readouterr().out
