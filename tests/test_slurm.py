"""The SLURM path on a real SLURM: a one-node cluster (munged, slurmctld, slurmd from
Debian's slurm-wlm and munge, on loopback, state in a temp dir) runs a sweep through
hydra/launcher=slurm, and a preempted job checkpoints, is requeued and resumes."""

from __future__ import annotations

import contextlib
import glob
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from helpers import OwnedProcesses, cli_env, free_port, run_cli

# one cluster for the module's tests, on one worker
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("slurm")]

DAEMONS = ("munged", "slurmctld", "slurmd")
# CPU settings for the preset's GPU defaults; one CPU each, so the two jobs run side by side
CPU_JOBS = [
    "hydra/launcher=slurm",
    "hydra.launcher.partition=cpu",
    "hydra.launcher.gpus_per_node=0",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=1",
    "hydra.launcher.timeout_min=30",
    "hydra.launcher.results_timeout_s=1",  # one filesystem: a task's result is there or never
]
RUN = ["dataset=synthetic", "trainer.progress=false", "mlflow.log_model=false", "mlflow.system_metrics_every_s=0"]


def _daemon(path: str) -> str:
    return shutil.which(path) or next(iter(glob.glob(f"/usr/sbin/{path}")), "")


SLURM_CONF = """\
ClusterName=cifarexp
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={d}/munge.sock
CredType=cred/munge
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool/%n
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.%n.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd.%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
{nodes}
PartitionName=cpu Nodes={names} Default=YES MaxTime=INFINITE State=UP
"""
# each node a slurmd of its own (slurmd -N <name>) on its own port, all on this host
NODE = "NodeName={name} NodeHostname={host} NodeAddr=127.0.0.1 Port={port} CPUs={cpus} RealMemory=4000 State=UNKNOWN"


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A running one-node cluster; yields the environment its commands need (SLURM_CONF)."""
    yield from cluster(tmp_path_factory, ["localnode"], os.cpu_count() or 1)


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    """A running two-node cluster on this host (node1, node2: one CPU each, a slurmd each)."""
    yield from cluster(tmp_path_factory, ["node1", "node2"], 1)


def cluster(tmp_path_factory, names: list[str], cpus: int):
    """munged, slurmctld and one slurmd per node, each started here; yields the environment
    their commands need (SLURM_CONF). The daemons run in the foreground as this process's
    children, and this process adopts whatever they leave orphaned (a job step's
    slurmstepd), so at the end it stops exactly the processes it started, and checks that
    those are gone."""
    if not all(map(_daemon, DAEMONS)) or not shutil.which("sbatch"):
        pytest.skip("SLURM is not installed (apt-get install slurm-wlm munge; .ci/run installs them)")
    if os.geteuid() != 0:
        pytest.skip("a private slurmd must run as root to start jobs")
    d = tmp_path_factory.mktemp("slurm")
    d.chmod(0o700)  # munged refuses a key in a directory others can write
    for sub in ["state", "spool", *(f"spool/{n}" for n in names)]:
        (d / sub).mkdir()
    (d / "munge.key").write_bytes(os.urandom(1024))
    (d / "munge.key").chmod(0o600)
    host = socket.gethostname()
    nodes = "\n".join(NODE.format(name=n, host=host, port=free_port(), cpus=cpus) for n in names)
    (d / "slurm.conf").write_text(SLURM_CONF.format(d=d, ctld_port=free_port(), nodes=nodes, names=",".join(names)))
    env = {"SLURM_CONF": str(d / "slurm.conf")}
    daemon_env = {**os.environ, **env}
    munge = [f"--socket={d}/munge.sock", f"--key-file={d}/munge.key", f"--log-file={d}/munged.log"]
    commands = [
        [_daemon("munged"), "--foreground", "--force", *munge, f"--pid-file={d}/munged.pid", f"--seed-file={d}/seed"],
        [_daemon("slurmctld"), "-D", "-f", env["SLURM_CONF"]],
        *([_daemon("slurmd"), "-D", "-f", env["SLURM_CONF"], "-N", n] for n in names),
    ]
    with OwnedProcesses() as owned:
        try:
            for command in commands:
                node = f".{command[-1]}" if Path(command[0]).name == "slurmd" else ""
                owned.start(command, env=daemon_env, log=d / f"{Path(command[0]).name}{node}.out")
                time.sleep(0.5)  # munged's socket before slurmctld, slurmctld before slurmd
            _wait_idle(daemon_env, d, len(names))
            yield env
        finally:
            _cancel_jobs(daemon_env)


def _wait_idle(env: dict, d: Path, nodes: int) -> None:
    deadline = time.monotonic() + 60
    sinfo = ["sinfo", "-h", "-N", "-o", "%T"]
    while subprocess.run(sinfo, env=env, capture_output=True, text=True).stdout.split().count("idle") < nodes:
        if time.monotonic() > deadline:
            pytest.fail("the SLURM node never became idle:\n" + (d / "slurmctld.log").read_text()[-2000:])
        time.sleep(0.5)


def _cancel_jobs(env: dict) -> None:
    """Cancel this cluster's jobs, each step's processes included, and wait (bounded) until
    its queue is empty; what is still running after that is stopped with the daemons."""
    subprocess.run(["scancel", "--full", "--partition=cpu"], env=env, capture_output=True, timeout=30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        queue = subprocess.run(["squeue", "-h"], env=env, capture_output=True, text=True, timeout=30)
        if queue.returncode != 0 or not queue.stdout.strip():
            return
        time.sleep(0.5)


@contextlib.contextmanager
def launched(args: list[str], cwd: Path, env: dict):
    """`python -m cifar_exp ...` in a session of its own; however the test ends, that session
    (the launcher and anything it started) is stopped before the cluster is. A test that
    fails inside also cancels the cluster's jobs, so that the next test finds it empty."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "cifar_exp", *args],
        cwd=cwd,
        env=cli_env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        yield proc
    except BaseException:
        _cancel_jobs({**os.environ, **env})
        raise
    finally:
        if proc.poll() is None:
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)


def ended(proc: subprocess.Popen, env: dict, workdir: Path, timeout: float = 300) -> str:
    """The launcher's output once it has ended; if it has not within `timeout`, the test
    fails with what the cluster held then (the queue, each job's log) rather than leaving
    pytest-timeout a stack of this wait to show."""
    try:
        return proc.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        squeue = ["squeue", "-o", "%i %T %r %S %N"]
        queue = subprocess.run(squeue, env={**os.environ, **env}, capture_output=True, text=True)
        logs = [f"--- {p}\n{p.read_text()[-1500:]}" for p in sorted(workdir.glob("multirun/*/*/.submitit/*/*_log.*"))]
        said = f"the launcher still waits after {timeout} s; squeue:\n{queue.stdout}{queue.stderr}\n"
        pytest.fail(said + "\n".join(logs))


def children_of_one_parent(workdir: Path) -> tuple:
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("cifar_exp").experiment_id])
    [parent] = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == len(runs) - 1
    return client, parent, children


def test_a_sweep_through_the_slurm_launcher(slurm, workdir):
    args = ["--multirun", *CPU_JOBS, *RUN, "epochs=1", "optimizer.lr=0.01,0.05"]
    with launched(args, workdir, slurm) as proc:
        out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    _, parent, children = children_of_one_parent(workdir)
    assert parent.info.status == "FINISHED" and len(children) == 2
    assert all(c.info.status == "FINISHED" for c in children)
    assert sorted(c.data.params["optimizer.lr"] for c in children) == ["0.01", "0.05"]
    # each ran as a SLURM job, in its own process
    assert len({c.data.tags["hydra.output_dir"] for c in children}) == 2
    assert len(list(workdir.glob("multirun/*/*/.submitit/*/*_log.out"))) == 2


# set to make the preemption test fail once its job runs: what a failed test leaves behind
FAIL_EARLY = "CIFAR_EXP_TEST_SLURM_FAIL_EARLY"


def test_a_preempted_job_checkpoints_requeues_and_resumes_in_the_same_run(slurm, workdir):
    """SLURM's warning signal (the one `--signal=USR2@...` sends before a time limit) reaches
    a job mid-run: it checkpoints, submitit requeues it, and resume=auto finishes it in the
    same MLflow run, every step logged once."""
    args = [
        "--multirun",
        *CPU_JOBS,
        *RUN,
        "resume=auto",
        "dataset.train_size=3000",
        "epochs=6",
        "trainer.log_every_n_steps=1",
        "checkpoint.every_n_steps=5",
        "optimizer.lr=0.05",
    ]
    squeue = ["squeue", "-h", "-o", "%i"]
    with launched(args, workdir, slurm) as proc:
        deadline = time.monotonic() + 300
        while not list(workdir.glob("multirun/*/*/0/checkpoints/last.pt")):  # mid-run, with a checkpoint
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()[-3000:]
            time.sleep(0.2)
        if os.environ.get(FAIL_EARLY):
            pytest.fail(f"failed on purpose ({FAIL_EARLY} is set), with a job running")
        [job_id] = subprocess.run(squeue, env={**os.environ, **slurm}, capture_output=True, text=True).stdout.split()
        subprocess.run(["scancel", "--signal=USR2", job_id], env={**os.environ, **slurm}, check=True)
        release_when_requeued(job_id, {**os.environ, **slurm})
        out = ended(proc, slurm, workdir, timeout=240)
    assert proc.returncode == 0, out[-3000:] + "\nslurmctld:\n" + cluster_said(slurm, job_id)

    client, parent, [child] = children_of_one_parent(workdir)
    assert child.info.status == "FINISHED" and parent.info.status == "FINISHED"
    assert child.data.tags["resume.count"] == "1"  # one run, two segments
    steps = [m.step for m in client.get_metric_history(child.info.run_id, "train/loss")]
    assert steps == list(range(1, 6 * 24 + 1))  # 3000 images in batches of 128: 24 steps an epoch
    log = next(workdir.glob("multirun/*/*/.submitit/*/*_log.err")).read_text()
    assert "requeu" in log.lower()


def release_when_requeued(job_id: str, env: dict) -> None:
    """Once the job is back in the queue and its node has cleaned up after it, let it start
    at once: SLURM holds a requeued job for two minutes (its BeginTime), a wait that tells
    the test nothing. The hold keeps a job off a node still ending its last run, so the
    release waits for that. It also waits for the next whole second: slurmd revoked the
    job's credentials when the requeue killed it, and refuses, as revoked, any credential
    created in the same second (ctime <= revoked), which fails the relaunch at once."""
    deadline = time.monotonic() + 120
    state = ["squeue", "-h", "-j", job_id, "-o", "%T %r"]
    while subprocess.run(state, env=env, capture_output=True, text=True).stdout.split() != ["PENDING", "BeginTime"]:
        assert time.monotonic() < deadline, "the job was not requeued"
        time.sleep(0.2)
    revoked_by = math.floor(time.time())  # the requeue, and so the revocation, came before this
    nodes = ["sinfo", "-h", "-N", "-o", "%T"]
    while any(
        node.startswith(("completing", "draining"))  # a job still ending on it
        for node in subprocess.run(nodes, env=env, capture_output=True, text=True).stdout.split()
    ) or _steps_left(job_id):
        assert time.monotonic() < deadline, "a node never ended the job's last run"
        time.sleep(0.2)
    time.sleep(max(0.0, revoked_by + 1.05 - time.time()))
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], env=env, check=True)


def _steps_left(job_id: str) -> bool:
    """Whether a slurmstepd of the job's last run is still alive on this host (every node
    of the test cluster is): the node can list itself idle while it still runs."""
    found = subprocess.run(["pgrep", "-f", rf"^slurmstepd: \[{job_id}\."], capture_output=True)
    return found.returncode == 0


def cluster_said(env: dict, job_id: str) -> str:
    """slurmctld's and each slurmd's lines about a job: why SLURM failed or held it, for a
    test's message (a refused launch is only in the node's log)."""
    marks = (f"JobId={job_id} ", f"JobId={job_id}.", f"Job {job_id} ", f"[{job_id}.", f"JOB {job_id} ")
    said = []
    for log in sorted(Path(env["SLURM_CONF"]).parent.glob("slurm*.log")):
        lines = log.read_text(errors="replace").splitlines()
        said += [f"{log.name}:"] + [line for line in lines if any(mark in line for mark in marks)][-20:]
    return "\n".join(said)


def test_a_ddp_job_spans_two_nodes(two_nodes, workdir):
    """hydra.launcher.nodes=2: one job whose two tasks, one on each node, find their ranks
    and their master in SLURM's variables and train one run: rank 0 writes the checkpoint
    and the MLflow run, each node's log lies beside the run's. Its metrics are those of
    one process with the same global batch, up to float reduction order."""
    same = [*RUN, "epochs=2", "optimizer.lr=0.01", "trainer.amp=false"]
    args = ["--multirun", *CPU_JOBS, *same, "hydra.launcher.nodes=2", "hydra.launcher.tasks_per_node=1",
            "trainer.strategy=ddp"]  # fmt: skip
    with launched(args, workdir, two_nodes) as proc:
        out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    client, parent, [child] = children_of_one_parent(workdir)
    assert child.info.status == "FINISHED" and child.data.tags["world_size"] == "2"
    run_dir = Path(child.data.tags["hydra.output_dir"])
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    assert [m.step for m in client.get_metric_history(child.info.run_id, "epoch")] == [16, 32]  # each once
    # one task on each node (submitit's own account of where it ran), each with its log
    logs = [p.read_text() for p in sorted(run_dir.parent.glob(".submitit/*/*_log.out"))]
    assert len(logs) == 2 and "node=0(2), global_rank=0(2)" in logs[0] and "node=1(2), global_rank=1(2)" in logs[1]
    assert "epoch 2/2" in logs[1] and "in the MLflow UI" in logs[0] and "in the MLflow UI" not in logs[1]

    alone = run_cli(*same, "mlflow.experiment_name=alone", cwd=workdir)
    assert alone.returncode == 0, alone.output[-3000:]
    [single] = client.search_runs([client.get_experiment_by_name("alone").experiment_id])
    for key in ("test/loss", "train/loss_epoch"):
        assert child.data.metrics[key] == pytest.approx(single.data.metrics[key], rel=1e-4), key
    assert child.data.metrics["test/acc"] == single.data.metrics["test/acc"]


def test_a_task_killed_outside_python_ends_the_sweep_in_one_line(two_nodes, workdir):
    """kill -9 of node2's task of a two-node job, mid-run, on this cluster that keeps no
    accounting: rank 0 ends in one line and its run is FAILED; the launcher sees the job
    leave the queue (squeue, where sacct knows nothing) and names the task that left no
    result, where it used to wait forever for that task's result file. Nothing is left
    running."""
    import psutil

    args = ["--multirun", *CPU_JOBS, *RUN, "dataset.train_size=3000", "epochs=6", "checkpoint.every_n_steps=5",
            "hydra.launcher.nodes=2", "hydra.launcher.tasks_per_node=1", "trainer.strategy=ddp"]  # fmt: skip
    with launched(args, workdir, two_nodes) as proc:
        deadline = time.monotonic() + 300
        while not list(workdir.glob("multirun/*/*/0/checkpoints/last.pt")):  # mid-run
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()[-3000:]
            time.sleep(0.2)
        [task] = [p for p in psutil.process_iter(["cmdline"]) if _task_of_rank(p, 1)]
        job_id = task.environ()["SLURM_JOB_ID"]
        task.kill()
        out = ended(proc, two_nodes, workdir, timeout=240)
    assert proc.returncode == 1, out[-3000:]
    assert out.count("cifar-exp: error: ") == 1 and "Traceback" not in out, out[-3000:]
    [said] = [line for line in out.splitlines() if line.startswith("cifar-exp: error: ")]
    assert said.startswith(f"cifar-exp: error: SLURM job {job_id}'s task 1 ended without a result (state FAILED)")
    assert Path(said.split("its log: ")[1]).is_file()
    client, parent, [child] = children_of_one_parent(workdir)
    assert child.info.status == "FAILED" and "lost the process group" in child.data.tags["error"]
    assert parent.info.status == "FAILED"
    queue = subprocess.run(["squeue", "-h"], env={**os.environ, **two_nodes}, capture_output=True, text=True)
    assert queue.stdout.strip() == ""
    assert not [p for p in psutil.process_iter(["cmdline"]) if _task_of_rank(p, 0) or _task_of_rank(p, 1)]


def _task_of_rank(process, rank: int) -> bool:
    """Whether `process` is a submitit task of a SLURM job step, of that rank."""
    import psutil

    if "submitit.core._submit" not in " ".join(process.info["cmdline"] or []):
        return False
    try:
        return process.environ().get("SLURM_PROCID") == str(rank)
    except psutil.Error:
        return False


def test_a_task_that_never_joins_is_named_in_one_line(two_nodes, workdir):
    """A two-task step whose second task never starts: rank 0 waits trainer.ddp_timeout_s
    and names the rank and the node nothing came from; a task whose rank 0 never starts
    says it cannot reach it. Each alone, with the variables srun gives a task of a job
    on node1 and node2 (this cluster's scontrol expands the node list)."""
    step = {"SLURM_NTASKS": "2", "SLURM_JOB_ID": "77", "SLURM_JOB_NODELIST": "node[1-2]", "SLURM_LOCALID": "0",
            "SLURM_LAUNCH_NODE_IPADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), **two_nodes}  # fmt: skip
    args = [*RUN, "trainer.strategy=ddp", "trainer.ddp_timeout_s=2"]
    alone = run_cli(*args, cwd=workdir, SLURM_PROCID="0", SLURMD_NODENAME="node1", **step)
    assert alone.returncode == 2 and alone.stderr.count("\n") == 1, alone.output[-3000:]
    assert alone.stderr == (
        "cifar-exp: error: the process group did not form within trainer.ddp_timeout_s=2: rank 1 of 2 never "
        "joined (nothing came from node node2); joined: rank 0 on node1\n"
    )
    orphan = run_cli(*args, cwd=workdir, SLURM_PROCID="1", SLURMD_NODENAME="node2", **step)
    assert orphan.returncode == 2 and orphan.stderr.count("\n") == 1, orphan.output[-3000:]
    assert orphan.stderr.startswith(
        f"cifar-exp: error: rank 1 on node2 could not reach rank 0's group store at 127.0.0.1:{step['MASTER_PORT']} "
    )


def test_what_the_cluster_cannot_give_is_one_line(two_nodes, workdir):
    """More nodes than the partition has (SLURM would queue the job forever) is refused
    before anything is submitted; a partition SLURM does not know, by sbatch itself."""
    sweep = ["--multirun", *CPU_JOBS, *RUN, "trainer.strategy=ddp"]
    for asked, said in [
        (["hydra.launcher.nodes=3"], "hydra.launcher.nodes=3, but SLURM's partition cpu has 2 nodes (node1, node2)"),
        (["hydra.launcher.partition=gpu"], "the cluster refused the sweep's jobs (sbatch: error: "),
    ]:
        with launched([*sweep, *asked], workdir, two_nodes) as proc:
            out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 2, out[-3000:]
        assert out.count("cifar-exp: error: ") == 1 and "Traceback" not in out, out[-3000:]
        assert f"cifar-exp: error: {said}" in out
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")  # the second sweep's parent had opened
    assert {r.info.status for r in client.search_runs([client.get_experiment_by_name("cifar_exp").experiment_id])} == {
        "FAILED"
    }


def test_an_optuna_sweep_across_two_nodes_outlives_a_drained_node(two_nodes, workdir, postgres):
    """hydra/sweeper=optuna, its study on PostgreSQL, two trials at a time: one on each
    node. Mid-sweep node2 is drained (scontrol ... State=DRAIN) and its job warned off
    (USR2, as before maintenance): it checkpoints, is requeued, waits for node1 and
    resumes there in its own MLflow run. Every trial ends COMPLETE, under one parent."""
    storage = postgres.replace("postgresql://", "postgresql+psycopg://")
    args = ["--multirun", *CPU_JOBS, *RUN, "hydra/sweeper=optuna", "hydra.sweeper.n_trials=2",
            "hydra.sweeper.n_jobs=2", "hydra.sweeper.direction=maximize", f"hydra.sweeper.storage={storage}",
            "objective=val/acc", "dataset.val_size=500", "optimizer.lr=choice(0.01,0.05)", "resume=auto",
            "dataset.train_size=3000", "epochs=6", "trainer.log_every_n_steps=1",
            "checkpoint.every_n_steps=5"]  # fmt: skip
    env = {**os.environ, **two_nodes}
    try:
        with launched(args, workdir, two_nodes) as proc:
            deadline = time.monotonic() + 300
            while len(list(workdir.glob("multirun/*/*/*/checkpoints/last.pt"))) < 2:  # both trials mid-run
                assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()[-3000:]
                time.sleep(0.2)
            queue = subprocess.run(["squeue", "-h", "-o", "%i %N"], env=env, capture_output=True, text=True).stdout
            assert sorted(line.split()[1] for line in queue.splitlines()) == ["node1", "node2"], queue
            [job_id] = [line.split()[0] for line in queue.splitlines() if line.split()[1] == "node2"]
            drain = ["scontrol", "update", "NodeName=node2", "State=DRAIN", "Reason=maintenance"]
            subprocess.run(drain, env=env, check=True)
            subprocess.run(["scancel", "--signal=USR2", job_id], env=env, check=True)
            release_when_requeued(job_id, env)
            out, _ = proc.communicate(timeout=600)
    finally:
        subprocess.run(["scontrol", "update", "NodeName=node2", "State=RESUME"], env=env, capture_output=True)
    assert proc.returncode == 0, out[-3000:]

    import optuna

    [summary] = optuna.get_all_study_summaries(storage)
    trials = optuna.load_study(study_name=summary.study_name, storage=storage).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    client, parent, children = children_of_one_parent(workdir)
    assert parent.info.status == "FINISHED" and {c.info.status for c in children} == {"FINISHED"}
    [moved] = [c for c in children if c.data.tags.get("resume.count") == "1"]
    assert moved.data.tags["node"] == "node2" and moved.data.tags["resume.1.node"] == "node1"
    steps = [m.step for m in client.get_metric_history(moved.info.run_id, "train/loss")]
    assert steps == list(range(1, 6 * 20 + 1))  # 2500 training images: 20 steps an epoch, each once


def test_a_job_cancelled_on_the_cluster_is_not_the_launcher_s_stop(slurm, workdir):
    """scancel (SIGTERM to the job, as at a time limit without warning): the job checkpoints
    and ends KILLED; the sweep says that its job was stopped where it ran, with the command
    that resumes the job, and exits 1: nobody stopped the launcher."""
    args = ["--multirun", *CPU_JOBS, *RUN, "dataset.train_size=3000", "epochs=6", "checkpoint.every_n_steps=5"]
    env = {**os.environ, **slurm}
    with launched(args, workdir, slurm) as proc:
        deadline = time.monotonic() + 300
        while not list(workdir.glob("multirun/*/*/0/checkpoints/last.pt")):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()[-3000:]
            time.sleep(0.2)
        [job_id] = subprocess.run(["squeue", "-h", "-o", "%i"], env=env, capture_output=True, text=True).stdout.split()
        subprocess.run(["scancel", job_id], env=env, check=True)
        out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 1, out[-3000:]
    [run_dir] = workdir.glob("multirun/*/*/0")
    said = "cifar-exp: a job of this sweep was stopped by signal 15 (SIGTERM) where it ran; resume with:\n  "
    assert said + f"python -m cifar_exp resume={run_dir.resolve()}" in out, out[-3000:]
    _, parent, [child] = children_of_one_parent(workdir)
    assert child.info.status == "KILLED" and parent.info.status != "RUNNING"
