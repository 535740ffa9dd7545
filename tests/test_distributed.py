"""Data-parallel runs under torchrun (gloo on CPU): one run, one dir, one writer, and the
same accuracy a single process measures on the saved weights."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time

import pytest
import torch

from helpers import FAST, cli_env, png_tree, run_dirs, stop_session, torchrun, torchrun_agents

pytestmark = pytest.mark.slow


def accuracy(text: str) -> str:
    return re.search(r"Accuracy of the network on the 500 test images: (\d+\.\d\d) %", text).group(1)


def test_two_process_ddp_run_then_resume_with_one(cli_here, workdir):
    from mlflow.tracking import MlflowClient

    before = set(workdir.iterdir())
    done = torchrun(2, *FAST, "epochs=2", "mlflow.experiment_name=ddp", cwd=workdir)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    [run_dir] = run_dirs(workdir)  # rank 1 made no dir of its own
    assert {p.name for p in set(workdir.iterdir()) - before} <= {"outputs", "mlruns"}
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best.pt", "last.pt"]

    c = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    [run] = c.search_runs([c.get_experiment_by_name("ddp").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["world_size"] == "2"
    logged_acc = run.data.metrics["test/acc"]

    # the reduced evaluation equals a single process evaluating the saved weights
    single = cli_here(f"checkpoint={run_dir}", module="cifar_exp.evaluate")
    assert single.returncode == 0, single.output
    assert accuracy(single.stdout) == accuracy(done.stdout) == f"{100 * logged_acc:.2f}"
    loss = float(re.search(r"test loss ([\d.]+),", single.stdout).group(1))
    assert loss == pytest.approx(run.data.metrics["test/loss"], abs=1e-4)

    resumed = cli_here(f"resume={run_dir}", "epochs=3")  # one plain process
    assert resumed.returncode == 0, resumed.output
    [run] = c.search_runs([c.get_experiment_by_name("ddp").experiment_id])  # still one run
    assert run.info.status == "FINISHED"
    assert [m.value for m in c.get_metric_history(run.info.run_id, "epoch")] == [1, 2, 3]
    assert torch.load(run_dir / "checkpoints/last.pt", weights_only=True)["run"]["epoch"] == 3


def test_ddp_agrees_on_a_stop_without_a_collective_per_step(workdir):
    """Twice the steps per epoch, the same number of all-reduces: the ones a run does are
    per epoch (the epoch sums, evaluation, the stop policies' one vote), none per step."""
    counts = []
    for train_size in (1024, 2048):  # each under STOP_POLL_STEPS optimizer steps, one twice the other
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "testing_cli",
            "trainer.strategy=ddp",
            *FAST,
            f"dataset.train_size={train_size}",
            "epochs=1",
            "mlflow.enabled=false",
            "checkpoint.enabled=false",
        ]
        done = subprocess.run(
            cmd,
            cwd=workdir,
            env=cli_env(OMP_NUM_THREADS="1", CIFAR_EXP_TEST_COUNT_COLLECTIVES="1"),
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        counts.append(sorted(map(int, re.findall(r"all_reduce calls: (\d+)", done.stdout))))
    assert len(counts[0]) == 2 and counts[0] == counts[1], counts


def test_ddp_without_torchrun_is_a_user_error(cli):
    result = cli(*FAST, "trainer.strategy=ddp", "mlflow.enabled=false")
    assert result.returncode == 2 and "needs torchrun" in result.stderr


def test_sync_batchnorm_on_cpu_processes_is_one_line(workdir):
    done = torchrun(
        2,
        *FAST,
        "model=speed_net",
        "model.widths=[8,16,32]",
        "trainer.sync_batchnorm=true",
        "mlflow.enabled=false",
        cwd=workdir,
    )
    assert done.returncode != 0
    # each process says it in one line; what follows is torchrun's own report of failed children
    assert done.stderr.count("cifar-exp: error: trainer.sync_batchnorm=true needs CUDA devices") == 2
    assert "cifar_exp/" not in done.stderr  # no traceback through our code


# --- several nodes: torchrun agents meeting through a c10d rendezvous, one worker each -----------
@pytest.fixture
def agents(workdir):
    """Starts torchrun agents as separate machines would run them; stops every one of them,
    and their workers, whatever the test did."""
    started: list = []

    def _start(*args: str, **options) -> list:
        started.extend(procs := torchrun_agents(2, *args, cwd=workdir, **options))
        return procs

    yield _start
    for proc in started:
        stop_session(proc, grace=5)


def _ended(agents: list) -> list[str]:
    outputs = [proc.communicate(timeout=600)[0] for proc in agents]
    assert [proc.returncode for proc in agents] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    return outputs


def _one_run(workdir, experiment: str):
    from mlflow.tracking import MlflowClient

    c = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    [run] = c.search_runs([c.get_experiment_by_name(experiment).experiment_id])
    return c, run


def _steps(c, run_id: str, key: str) -> list[int]:
    return [m.step for m in c.get_metric_history(run_id, key)]


def test_two_nodes_train_one_run_written_once(workdir, agents, cli_here):
    """Two agents (two 'nodes') meet through c10d and train one run: one run dir, one set
    of checkpoints, one MLflow run, and the accuracy one process measures on its weights."""
    outputs = _ended(agents(*FAST, "epochs=2", "mlflow.experiment_name=nodes"))
    [run_dir] = run_dirs(workdir)  # the other node made no dir of its own
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    c, run = _one_run(workdir, "nodes")
    assert run.info.status == "FINISHED" and run.data.tags["world_size"] == "2"
    [printed] = [accuracy(o) for o in outputs if "Accuracy of the network" in o]  # rank 0's node only
    single = cli_here(f"checkpoint={run_dir}", module="cifar_exp.evaluate")
    assert single.returncode == 0, single.output
    assert accuracy(single.stdout) == printed == f"{100 * run.data.metrics['test/acc']:.2f}"
    assert _steps(c, run.info.run_id, "epoch") == [16, 32]  # each epoch's record once


def test_a_killed_worker_restarts_both_nodes_and_the_run_goes_on(workdir, agents):
    """kill -9 one node's worker mid-epoch: torchrun's agents restart the group
    (--max-restarts), the new workers resume from the last checkpoint (resume=auto in a
    fixed run dir) into the same MLflow run, which ends FINISHED with every step once."""
    import psutil

    run_dir = workdir / "elastic"
    nodes = agents(
        *FAST,
        "model=slow_cnn",
        "epochs=2",
        "checkpoint.every_n_steps=4",
        "trainer.log_every_n_steps=1",
        "mlflow.experiment_name=elastic",
        f"hydra.run.dir={run_dir}",
        "resume=auto",
        max_restarts=3,  # a loaded machine may see one failure counted on both agents
        module="testing_cli",
    )
    deadline = time.monotonic() + 300
    while not (run_dir / "checkpoints" / "last.pt").is_file():
        assert time.monotonic() < deadline and all(p.poll() is None for p in nodes), "no checkpoint came"
        time.sleep(0.2)
    [worker] = psutil.Process(nodes[1].pid).children()
    worker.kill()
    outputs = _ended(nodes)
    assert any("Restarting" in o or "restart" in o.lower() for o in outputs), outputs[0][-2000:]
    c, run = _one_run(workdir, "elastic")
    assert run.info.status == "FINISHED" and "error" not in run.data.tags
    logged = _steps(c, run.info.run_id, "train/loss")
    assert logged == list(range(1, 33)), logged  # every step of both epochs, none twice
    assert _steps(c, run.info.run_id, "epoch") == [16, 32]
    assert torch.load(run_dir / "checkpoints/last.pt", weights_only=True)["run"]["epoch"] == 2


def _refused(nodes: list) -> list[str]:
    """Each agent's output, once both ended: refused, in one line of ours each."""
    outputs = [proc.communicate(timeout=300)[0] for proc in nodes]
    assert all(proc.returncode != 0 for proc in nodes), outputs[0][-2000:]
    for out in outputs:
        assert out.count("cifar-exp: error: ") == 1 and "cifar_exp/" not in out, out[-3000:]  # no traceback of ours
    return outputs


def test_nodes_that_run_different_configs_are_refused_in_one_line(workdir, agents):
    """Two nodes started with different commands would average the gradients of two
    different runs: both refuse, naming the key."""
    outputs = _refused(agents(*FAST, "epochs=1", node_args=[["seed=0"], ["seed=7"]]))
    for out in outputs:
        assert re.search(r"rank 1's config differs from rank 0's \(seed '[07]' on rank 0, '[07]' on rank 1\)", out)


def test_nodes_that_read_different_data_are_refused_in_one_line(workdir, agents, tmp_path):
    """One command, but each node's copy of the image folder holds other images (a
    relative root, as from another working dir): the data's digests disagree."""
    for node, seed in (("a", 0), ("b", 1)):
        png_tree(tmp_path / node / "data", seed=seed)
    args = [*FAST, "dataset=image_folder", "dataset.root=data", f"hydra.run.dir={workdir / 'run'}"]
    cd = [["env", "-C", str(tmp_path / node)] for node in "ab"]
    outputs = _refused(agents(*args, node_prefix=cd))
    for out in outputs:
        assert re.search(r"rank 1's data differs from rank 0's \(test '[0-9a-f]{16}' on rank 0, '[0-9a-f]{16}'", out)


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("unshare"), reason="a node of its own filesystem needs root and unshare"
)
def test_a_run_dir_another_node_cannot_see_is_refused_in_one_line(workdir, agents):
    """The second node gets a filesystem of its own over the run dir's parent (a mount
    namespace with a tmpfs there), as a node-local disk would be: rank 0 writes
    checkpoints that the other rank would never read, so both refuse."""
    shared = workdir / "shared"
    shared.mkdir()
    local = ["unshare", "--mount", "--propagation", "private", "sh", "-c", 'mount -t tmpfs tmpfs "$0" && exec "$@"']
    outputs = _refused(agents(*FAST, f"hydra.run.dir={shared / 'run'}", node_prefix=[[], [*local, str(shared)]]))
    for out in outputs:
        assert re.search(rf"rank 1 on \S+ cannot see the run dir {shared / 'run'} that rank 0 on \S+ writes", out)


def test_a_rank_that_dies_ends_the_other_in_one_line(workdir, agents):
    """kill -9 rank 1 mid-epoch, no restarts: rank 0 hears it in the gradient all-reduce
    and ends in one line, its run FAILED with that line as the reason."""
    import psutil

    run_dir = workdir / "run"
    nodes = agents(*FAST, "model=slow_cnn", "epochs=3", f"hydra.run.dir={run_dir}", "mlflow.experiment_name=lost",
                   "checkpoint.every_n_steps=4", module="testing_cli")  # fmt: skip
    deadline = time.monotonic() + 300
    while not (run_dir / "checkpoints" / "last.pt").is_file():
        assert time.monotonic() < deadline and all(p.poll() is None for p in nodes), "no checkpoint came"
        time.sleep(0.2)
    workers = [w for p in nodes for w in psutil.Process(p.pid).children()]
    [(rank_1, agent)] = [(w, i) for i, w in enumerate(workers) if w.environ().get("RANK") == "1"]
    rank_1.kill()
    survivor = nodes[1 - agent]
    out = survivor.communicate(timeout=300)[0]
    assert survivor.returncode != 0
    lost = r"cifar-exp: error: rank 0 on \S+ lost the process group in [a-z -]+ \(.+\): another rank"
    assert re.search(lost, out), out[-3000:]
    assert "cifar_exp/" not in out and "Traceback" not in out.split("cifar-exp: error")[0]
    c, run = _one_run(workdir, "lost")
    assert run.info.status == "FAILED" and "lost the process group" in run.data.tags["error"]


# --- a SLURM job step's tasks -------------------------------------------------------------------
STEP = {"SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_LOCALID": "0", "SLURM_JOB_ID": "4711"}


def test_a_slurm_task_s_place_comes_from_slurm_s_own_variables():
    from cifar_exp.distributed_env import process_rank, slurm_world

    world = slurm_world({**STEP, "SLURM_LAUNCH_NODE_IPADDR": "10.0.0.5"})
    assert world == {
        "RANK": "1",
        "WORLD_SIZE": "2",
        "LOCAL_RANK": "0",
        "MASTER_ADDR": "10.0.0.5",  # the node that launched the step: the job's first
        "MASTER_PORT": str(20000 + 4711),  # the same on every task of the job
    }
    assert slurm_world({**STEP, "MASTER_ADDR": "head", "MASTER_PORT": "29500"})["MASTER_ADDR"] == "head"
    assert slurm_world({**STEP, "SLURM_NTASKS": "1"}) is None  # one task: nothing to join
    assert slurm_world({**STEP, "LOCAL_RANK": "0", "RANK": "3"}) is None  # torchrun inside: its own
    assert process_rank(STEP) == 1 and process_rank({"LOCAL_RANK": "1", "RANK": "3"}) == 3 and process_rank({}) == 0


def test_several_slurm_tasks_without_ddp_is_one_line(monkeypatch):
    from cifar_exp import distributed
    from cifar_exp.errors import UserError

    for key, value in STEP.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(UserError, match="^SLURM started 2 tasks of this job but trainer.strategy=single; add"):
        distributed.setup("single")


def test_a_round_of_restarts_forms_its_group_in_a_store_of_its_own(monkeypatch):
    """The store torchrun's agents keep through restarts still holds an earlier round's post
    (a port nobody listens on now), and rank 1 reads it before rank 0 of the new round has
    posted: rank 1 reads on until rank 0's new store answers, and both join that one."""
    import threading
    from datetime import timedelta

    import torch.distributed as dist

    from cifar_exp import distributed

    from helpers import free_port

    agents = dist.TCPStore("127.0.0.1", 0, None, True, timeout=timedelta(seconds=30), wait_for_workers=False)
    stale = free_port()
    agents.set("cifar_exp/group_store_port", str(stale))
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(agents.port))
    deadline = distributed._Deadline(30, time.monotonic() + 30)
    stores = {}

    def join(rank: int) -> None:
        stores[rank] = distributed._join(distributed._round_store(rank, deadline), rank, 2, deadline)

    follower = threading.Thread(target=join, args=(1,))
    follower.start()
    time.sleep(1)  # rank 1 has read the stale post by now
    join(0)
    follower.join(30)
    assert stores[0].port != stale
    stores[1].set("from rank 1", "seen")
    assert stores[0].get("from rank 1") == b"seen"
