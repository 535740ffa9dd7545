"""Shared test helpers: running the real CLI (and torchrun, an MLflow server) as a user
would, composing the real config in process (as a run or as a sweep), test data, and
test-only models (TEST_MODELS: model=exploding_cnn, slow_cnn, sleepy_cnn), registered by the
`test_models` fixture in process and by `python -m testing_cli` for a CLI (tests/ is on
PYTHONPATH), and `registry_restored`, which undoes any test's registrations."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import traceback
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence
from unittest import mock

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.core.config_store import ConfigStore
from torch import nn

from cifar_exp.config_model import ModelConfig
from cifar_exp.models import SimpleCNN
from cifar_exp.registry import REGISTRY, Option, register, register_configs


class ExplodingCNN(SimpleCNN):
    """SimpleCNN that raises on its 5th training forward pass."""

    def __init__(self, num_classes: int = 10, image_size: int = 32):
        super().__init__(num_classes, image_size)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.calls += 1
            if self.calls == 5:
                raise RuntimeError("boom at step 5")
        return super().forward(x)


class SlowCNN(SimpleCNN):
    """SimpleCNN that sleeps in each training step, so a test can signal it mid-epoch."""

    seconds = 0.05

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            import time

            time.sleep(self.seconds)
        return super().forward(x)


class SleepyCNN(SlowCNN):
    """A step of a whole second: two signals sent a moment apart land in the same step."""

    seconds = 1.0


@dataclass
class ExplodingCNNConfig(ModelConfig):
    name: str = "exploding_cnn"


@dataclass
class SlowCNNConfig(ModelConfig):
    name: str = "slow_cnn"


@dataclass
class SleepyCNNConfig(ModelConfig):
    name: str = "sleepy_cnn"


TEST_MODELS = (
    Option(ExplodingCNNConfig, "helpers:ExplodingCNN"),
    Option(SlowCNNConfig, "helpers:SlowCNN"),
    Option(SleepyCNNConfig, "helpers:SleepyCNN"),
)


def register_test_models() -> None:
    """model=exploding_cnn, slow_cnn and sleepy_cnn, as options of the real registry."""
    for model in TEST_MODELS:
        register("model", model)


@contextlib.contextmanager
def registry_restored():
    """The registry (and its Hydra config groups) as it was before the block, whatever the
    block registered: a test option never outlives its test, nor hides a real one."""
    saved = {group: dict(options) for group, options in REGISTRY.items()}
    try:
        yield
    finally:
        repo = ConfigStore.instance().repo
        for group, options in saved.items():
            if REGISTRY[group] == options:
                continue
            for name in set(REGISTRY[group]) - set(options):
                repo.get(group, {}).pop(f"{name}.yaml", None)
            REGISTRY[group].clear()
            for entry in options.values():
                register(group, entry)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1)


def main_in_process(*args: str, module: str = "cifar_exp") -> Result:
    """`python -m <module> *args` (the training CLI or a tool: cifar_exp.evaluate, .predict,
    .runs) run by this process, for behaviour tests where the process boundary is not the
    point (each CLI start costs ~5 s of imports): its exit code and what it printed. What a
    process would keep to itself is undone after it (argv, the environment, signal handlers,
    logging, warnings, Hydra's singletons, MLflow's stores), and what it registers to run at
    exit runs when it returns, as at the end of its process."""
    import atexit
    import importlib
    import io

    from cifar_exp import __main__ as entry
    from cifar_exp import errors

    command = entry if module == "cifar_exp" else importlib.import_module(module)

    at_exit: list = []
    out, err = io.StringIO(), io.StringIO()
    with _process_state_kept(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        with (
            mock.patch.object(sys, "argv", [module, *args]),
            mock.patch.object(atexit, "register", lambda f, *a, **k: at_exit.append((f, a, k)) or f),
        ):
            try:
                command.main()
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
            except Exception:  # the interpreter prints it and exits 1
                traceback.print_exc()
                code = 1
        for f, a, k in reversed(at_exit):
            try:
                f(*a, **k)
            except Exception:  # at exit Python prints it and goes on
                traceback.print_exc()
        entry._job_started = False
        errors.stopping.clear()
    return Result(code, out.getvalue(), err.getvalue())


@contextlib.contextmanager
def _process_state_kept():
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    environ = dict(os.environ)
    handlers = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    kept = {id(lg): (list(lg.handlers), lg.level, lg.propagate, lg.disabled) for lg in _loggers()}
    try:
        with warnings.catch_warnings():  # entering it makes warnings already shown here show again
            yield
    finally:
        os.environ.clear()
        os.environ.update(environ)
        for s, handler in handlers.items():
            signal.signal(s, handler)
        for lg in _loggers():
            before, level, propagate, disabled = kept.get(id(lg), ([], logging.NOTSET, True, False))
            for h in set(lg.handlers) - set(before):
                h.close()  # a job's log file, a stream the command set up
            lg.handlers[:] = before
            lg.level, lg.propagate, lg.disabled = level, propagate, disabled
        GlobalHydra.instance().clear()
        HydraConfig.instance().cfg = None  # type: ignore[assignment]
        _mlflow_stores_forgotten()


def _loggers() -> list[logging.Logger]:
    return [
        logging.getLogger(),
        *(v for v in logging.root.manager.loggerDict.values() if isinstance(v, logging.Logger)),
    ]


def _mlflow_stores_forgotten() -> None:
    """MLflow keeps one store and one database engine per URI for its process; the default
    URI is relative, and the next command's sqlite:///mlflow.db is another directory's file."""
    from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore as RegistryStore
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore as TrackingStore
    from mlflow.tracking._model_registry.registry import ModelRegistryStoreRegistry
    from mlflow.tracking._tracking_service.registry import TrackingStoreRegistry

    for registry in (TrackingStoreRegistry, ModelRegistryStoreRegistry):
        registry._get_store_with_resolved_uri.cache_clear()
    for store in (TrackingStore, RegistryStore):
        for engine in store._engine_map.values():
            engine.dispose()
        store._engine_map.clear()


def compose_cfg(*overrides: str):
    """The project's config composed as `python -m cifar_exp overrides` would."""
    register_configs()
    with initialize_config_module("cifar_exp.conf", version_base="1.3"):
        return compose("config", overrides=list(overrides))


def check_sweep_of(*overrides: str) -> None:
    """The checks `python -m cifar_exp --multirun overrides` runs before its first job."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    import cifar_exp.__main__  # noqa: F401  (the project's sweeper plugin on the path)
    from cifar_exp.sweep_check import check_sweep

    register_configs()
    with initialize_config_module("cifar_exp.conf", version_base="1.3"):
        cfg = GlobalHydra.instance().hydra.compose_config(
            "config", list(overrides), run_mode=RunMode.MULTIRUN, with_log_configuration=False
        )
        check_sweep(cfg, "config")


def smooth_images(n: int = 64, seed: int = 1) -> torch.Tensor:
    """Smooth random images: neighbouring pixels and channels correlate, as in photographs."""
    noise = torch.randn(n, 3, 34, 34, generator=torch.Generator().manual_seed(seed))
    mixed = torch.einsum("ij,njhw->nihw", torch.tensor([[1.0, 0.5, 0.2], [0.5, 1.0, 0.5], [0.2, 0.5, 1.0]]), noise)
    return nn.functional.avg_pool2d(mixed, 3, stride=1)


def airbench_net(widths: tuple[int, int, int] = (64, 256, 256)) -> nn.Module:
    """The `airbench` package's make_net94 on the CPU in float32 and NCHW (it calls
    .half().cuda() and makes channels_last)."""
    from airbench import lib_airbench94 as ab

    def identity(module, *args, **kwargs):
        return module

    with mock.patch.object(nn.Module, "half", identity), mock.patch.object(nn.Module, "cuda", identity):
        net = ab.make_net94(widths=dict(zip(("block1", "block2", "block3"), widths)))
    return net.to(memory_format=torch.contiguous_format)


TESTS = Path(__file__).parent
# Small, fast runs: the synthetic set, a learning rate that learns in two epochs, no bar.
FAST = ["dataset=synthetic", "optimizer.lr=0.05", "optimizer.momentum=0.9", "trainer.progress=false"]


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


@dataclass
class Trained:
    """What an in-process run (conftest's `train`) left: its run directory, its log, its
    last metrics."""

    run_dir: Path
    log: str
    metrics: dict


def cli_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "CIFAR_EXP_"))}
    # tests/ on the path lets a run use the test-only models in tests/helpers.py
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), env.get("PYTHONPATH")]))
    env.pop("HYDRA_FULL_ERROR", None)
    env.update(extra)
    return env


def run_cli(
    *args: str, cwd: Path, module: str = "cifar_exp", python_args: tuple = (), timeout: float = 300, **env
) -> Result:
    proc = subprocess.run(
        [sys.executable, *python_args, "-m", module, *args],
        cwd=cwd,
        env=cli_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def run_dirs(root: Path) -> list[Path]:
    """Hydra output dirs (those holding .hydra/) under root, oldest first."""
    return sorted((p.parent for p in root.glob("outputs/*/*/.hydra")), key=lambda p: p.stat().st_mtime)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve_mlflow(backend_uri: str, artifacts: Path, cwd: Path, timeout: float = 180, port: int = 0):
    """A real `mlflow server` on a loopback port (a free one unless given); yields its URL."""
    port = port or free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            backend_uri,
            "--artifacts-destination",
            str(artifacts),
            "--workers",
            "1",
        ],
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
        # no background job workers: nothing here uses them
        env=cli_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2)
                break
            except OSError:
                if proc.poll() is not None:
                    pytest.fail("mlflow server exited: " + proc.stderr.read().decode()[-2000:])
                if time.monotonic() > deadline:
                    pytest.fail("mlflow server did not start")
                time.sleep(0.5)
        yield url
    finally:
        stop_session(proc)  # the server and every worker it started


def stop_session(proc: subprocess.Popen, grace: float = 30) -> None:
    """Stop a process started with start_new_session=True and everything in its session's
    process group: SIGTERM, then SIGKILL for whatever is left after `grace` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
            break
    with contextlib.suppress(ProcessLookupError):  # workers that outlived the leader
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


PR_SET_CHILD_SUBREAPER = 36  # prctl(2): orphans of this process's descendants come back to it
PR_SET_PDEATHSIG = 1  # prctl(2): the signal a child gets when its parent dies


def _children() -> dict[int, list[int]]:
    """ppid -> pids, read from /proc."""
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                # the command name may hold spaces and parentheses: fields follow the last ')'
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def descendants(pid: int) -> set[int]:
    tree, found, todo = _children(), set(), [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


class OwnedProcesses:
    """The processes a fixture starts, and everything they start, known by parentage: this
    process is made a child subreaper (prctl), so a daemon's orphaned children (a job
    step's slurmstepd) are re-parented to it instead of to init. On exit, every descendant
    that appeared inside the block is stopped and reaped, and none may be left; no other
    process on the machine is ever signalled, whatever its name."""

    def __enter__(self) -> OwnedProcesses:
        import ctypes

        self._libc = ctypes.CDLL(None, use_errno=True)
        self._libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        self.before = descendants(os.getpid())
        self.started: list[subprocess.Popen] = []
        return self

    def start(self, command: list[str], env: dict, log: Path) -> subprocess.Popen:
        """`command` in a session of its own, told to stop (SIGTERM) if this process dies
        first: a test run killed outright leaves no daemon behind either."""
        libc = self._libc

        def die_with_parent() -> None:
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)

        with open(log, "ab") as out:
            proc = subprocess.Popen(
                command,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        self.started.append(proc)
        return proc

    def mine(self) -> set[int]:
        return descendants(os.getpid()) - self.before

    def __exit__(self, *exc) -> None:
        try:
            for proc in reversed(self.started):  # newest first: slurmd before slurmctld before munged
                stop_session(proc, grace=20)
            deadline = time.monotonic() + 20
            while self.mine() and time.monotonic() < deadline:
                for pid in self.mine():
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGTERM if time.monotonic() < deadline - 10 else signal.SIGKILL)
                    with contextlib.suppress(ChildProcessError):
                        os.waitpid(pid, os.WNOHANG)  # an adopted orphan is ours to reap
                time.sleep(0.2)
            left = self.mine()
        finally:
            self._libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
        assert not left, f"processes this fixture started outlived it: {sorted(left)}"


def torchrun(nproc: int, *args: str, cwd) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "cifar_exp",
        "trainer.strategy=ddp",
        *args,
    ]
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        env=cli_env(OMP_NUM_THREADS="1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=600)
    finally:
        stop_session(proc, grace=10)  # the agent's workers too, whether it ended or timed out
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def torchrun_agents(
    nodes: int,
    *args: str,
    cwd,
    max_restarts: int = 0,
    module: str = "cifar_exp",
    node_args: Sequence[Sequence[str]] = (),
    node_prefix: Sequence[Sequence[str]] = (),
) -> list[subprocess.Popen]:
    """`nodes` torchrun agents on this host, one worker each, meeting through a c10d
    rendezvous as agents on separate machines do; each in its own session, so a fixture
    can stop an agent with its worker. Node i may add `node_args[i]` to the command, and
    run it behind `node_prefix[i]` (unshare ..., to give it a filesystem of its own)."""
    endpoint = f"127.0.0.1:{free_port()}"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nnodes={nodes}",
        "--nproc-per-node=1",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint={endpoint}",
        "--rdzv-id=cifar_exp_test",
        f"--max-restarts={max_restarts}",
        "-m",
        module,
        "trainer.strategy=ddp",
        *args,
    ]
    env = cli_env(OMP_NUM_THREADS="1")
    popen = dict(cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)

    def own(i: int, part: Sequence[Sequence[str]]) -> list[str]:
        return list(part[i]) if i < len(part) else []

    return [subprocess.Popen([*own(i, node_prefix), *cmd, *own(i, node_args)], **popen) for i in range(nodes)]


def png_tree(root: Path, classes=("cat", "dog"), per_class=3, size=32, seed: int = 0) -> None:
    """An image folder of random PNGs, each class with one saturated channel."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split in ("train", "test"):
        for i, c in enumerate(classes):
            (root / split / c).mkdir(parents=True)
            for k in range(per_class):
                arr = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
                arr[..., i] = 255
                Image.fromarray(arr).save(root / split / c / f"{k}.png")


def cli_process(module: str, *args: str, cwd: Path, merged: bool = False, **options) -> subprocess.Popen:
    """`python -m module args` started as a user would, its output read line by line as it
    comes (stderr folded into stdout when `merged`); keyword options other than Popen's
    are environment variables."""
    popen = {k: options.pop(k) for k in ("start_new_session", "preexec_fn") if k in options}
    return subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=cli_env(**options),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if merged else subprocess.PIPE,
        text=True,
        **popen,
    )


def tensor_loader(split, batch_size: int, normalize, **keys):
    """A TensorLoader from flat keys, each given to Sampling or Augmentation by its name."""
    from dataclasses import fields

    from cifar_exp.loader import Augmentation, Sampling, TensorLoader

    def take(cls):
        return cls(**{f.name: keys.pop(f.name) for f in fields(cls) if f.name in keys})

    sampling, augmentation = take(Sampling), take(Augmentation)
    assert not keys, f"neither sampling nor augmentation: {sorted(keys)}"
    return TensorLoader(split, batch_size, normalize, sampling, augmentation)


@contextlib.contextmanager
def lease_held_elsewhere(storage: str, name: str):
    """Another process holding the sweep lease of study `name` on `storage`, until the block ends."""
    code = (
        "import sys; from cifar_exp.study_storage import take_lease; "
        "take_lease(sys.argv[1], sys.argv[2], 'the first sweep'); print('held', flush=True); sys.stdin.read()"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, storage, name],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=cli_env(),
        start_new_session=True,
    )
    try:
        assert proc.stdout.readline().strip() == "held", "the lease was not taken"
        yield proc
    finally:
        proc.stdin.close()
        stop_session(proc, grace=10)
