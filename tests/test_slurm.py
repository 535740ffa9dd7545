"""The SLURM path on a real SLURM: a one-node cluster (munged, slurmctld, slurmd from
Debian's slurm-wlm and munge, on loopback, state in a temp dir) runs a sweep through
hydra/launcher=slurm, and a preempted job checkpoints, is requeued and resumes."""

from __future__ import annotations

import contextlib
import glob
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

from helpers import cli_env, free_port

# one cluster per module, and its leftover-process check scans the whole machine: one worker
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
]
RUN = ["dataset=synthetic", "trainer.progress=false", "mlflow.log_model=false", "mlflow.system_metrics_every_s=0"]


def _daemon(path: str) -> str:
    return shutil.which(path) or next(iter(glob.glob(f"/usr/sbin/{path}")), "")


SLURM_CONF = """\
ClusterName=cifarexp
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={d}/munge.sock
CredType=cred/munge
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName=localnode NodeHostname={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=4000 State=UNKNOWN
PartitionName=cpu Nodes=localnode Default=YES MaxTime=INFINITE State=UP
"""


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A running one-node cluster; yields the environment its commands need (SLURM_CONF)."""
    if not all(map(_daemon, DAEMONS)) or not shutil.which("sbatch"):
        pytest.skip("SLURM is not installed (apt-get install slurm-wlm munge; .ci/run installs them)")
    if os.geteuid() != 0:
        pytest.skip("a private slurmd must run as root to start jobs")
    d = tmp_path_factory.mktemp("slurm")
    d.chmod(0o700)  # munged refuses a key in a directory others can write
    for sub in ("state", "spool"):
        (d / sub).mkdir()
    (d / "munge.key").write_bytes(os.urandom(1024))
    (d / "munge.key").chmod(0o600)
    (d / "slurm.conf").write_text(
        SLURM_CONF.format(
            d=d, ctld_port=free_port(), slurmd_port=free_port(), host=socket.gethostname(), cpus=os.cpu_count()
        )
    )
    env = {"SLURM_CONF": str(d / "slurm.conf")}
    daemon_env = {**os.environ, **env}
    started = []
    try:
        subprocess.run(
            [
                _daemon("munged"),
                "--force",
                f"--socket={d}/munge.sock",
                f"--key-file={d}/munge.key",
                f"--log-file={d}/munged.log",
                f"--pid-file={d}/munged.pid",
                f"--seed-file={d}/munge.seed",
            ],
            check=True,
            capture_output=True,
        )
        started.append(d / "munged.pid")
        subprocess.run([_daemon("slurmctld"), "-f", env["SLURM_CONF"]], check=True, env=daemon_env, capture_output=True)
        started.append(d / "slurmctld.pid")
        subprocess.run(
            [_daemon("slurmd"), "-f", env["SLURM_CONF"], "-N", "localnode"],
            check=True,
            env=daemon_env,
            capture_output=True,
        )
        started.append(d / "slurmd.pid")
        deadline = time.monotonic() + 60
        while (
            "idle"
            not in subprocess.run(["sinfo", "-h", "-o", "%T"], env=daemon_env, capture_output=True, text=True).stdout
        ):
            if time.monotonic() > deadline:
                pytest.fail("the SLURM node never became idle:\n" + (d / "slurmctld.log").read_text()[-2000:])
            time.sleep(0.5)
        yield env
    finally:
        if started:
            _drain(daemon_env)
        _stop(started)
        left = _slurm_processes()
        for pid in left:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        assert not left, f"SLURM processes outlived the cluster: {left}"


def _drain(env: dict) -> None:
    """Cancel every job, each step's processes included, and wait until none is left: a
    job step's slurmstepd outlives the daemons otherwise, holding its job script and srun."""
    subprocess.run(["scancel", "--full", "--partition=cpu"], env=env, capture_output=True)
    deadline = time.monotonic() + 60
    while subprocess.run(["squeue", "-h"], env=env, capture_output=True, text=True).stdout.strip():
        if time.monotonic() > deadline:
            break
        time.sleep(0.5)
    while _slurm_processes(("slurmstepd",)) and time.monotonic() < deadline:
        time.sleep(0.5)


def _stop(pid_files: list) -> None:
    """SIGTERM each daemon, newest first, and wait for it to exit."""
    for pid_file in reversed(pid_files):
        try:
            pid = int(pid_file.read_text())
            os.kill(pid, signal.SIGTERM)
        except (OSError, ValueError):
            continue
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            time.sleep(0.2)


def _slurm_processes(names=("slurmstepd", "slurmctld", "slurmd", "munged")) -> list[int]:
    """Pids of this machine's SLURM processes, and of srun."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                comm = (proc / "comm").read_text().strip()
                if comm in names or comm == "srun" and "slurmstepd" in names:
                    found.append(int(proc.name))
    return found


def children_of_one_parent(workdir: Path) -> tuple:
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("cifar_exp").experiment_id])
    [parent] = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == len(runs) - 1
    return client, parent, children


def test_a_sweep_through_the_slurm_launcher(slurm, workdir):
    result = subprocess.run(
        [sys.executable, "-m", "cifar_exp", "--multirun", *CPU_JOBS, *RUN, "epochs=1", "optimizer.lr=0.01,0.05"],
        cwd=workdir,
        env=cli_env(**slurm),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    _, parent, children = children_of_one_parent(workdir)
    assert parent.info.status == "FINISHED" and len(children) == 2
    assert all(c.info.status == "FINISHED" for c in children)
    assert sorted(c.data.params["optimizer.lr"] for c in children) == ["0.01", "0.05"]
    # each ran as a SLURM job, in its own process
    assert len({c.data.tags["hydra.output_dir"] for c in children}) == 2
    assert len(list(workdir.glob("multirun/*/*/.submitit/*/*_log.out"))) == 2


def test_a_preempted_job_checkpoints_requeues_and_resumes_in_the_same_run(slurm, workdir):
    """SLURM's warning signal (the one `--signal=USR2@...` sends before a time limit) reaches
    a job mid-run: it checkpoints, submitit requeues it, and resume=auto finishes it in the
    same MLflow run, every step logged once."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cifar_exp",
            "--multirun",
            *CPU_JOBS,
            *RUN,
            "resume=auto",
            "dataset.train_size=3000",
            "epochs=6",
            "trainer.log_every_n_steps=1",
            "checkpoint.every_n_steps=5",
            "optimizer.lr=0.05",
        ],
        cwd=workdir,
        env=cli_env(**slurm),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 300
    while not list(workdir.glob("multirun/*/*/0/checkpoints/last.pt")):  # mid-run, with a checkpoint
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()[-3000:]
        time.sleep(0.2)
    [job_id] = subprocess.run(
        ["squeue", "-h", "-o", "%i"], env={**os.environ, **slurm}, capture_output=True, text=True, check=True
    ).stdout.split()
    subprocess.run(["scancel", "--signal=USR2", job_id], env={**os.environ, **slurm}, check=True)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]

    client, parent, [child] = children_of_one_parent(workdir)
    assert child.info.status == "FINISHED" and parent.info.status == "FINISHED"
    assert child.data.tags["resume.count"] == "1"  # one run, two segments
    steps = [m.step for m in client.get_metric_history(child.info.run_id, "train/loss")]
    assert steps == list(range(1, 6 * 24 + 1))  # 3000 images in batches of 128: 24 steps an epoch
    log = next(workdir.glob("multirun/*/*/.submitit/*/*_log.err")).read_text()
    assert "requeu" in log.lower()
