"""How `hydra/launcher=slurm` sees a job end on a cluster that keeps no accounting.
submitit learns that a job ended from `sacct`; where SLURM keeps no accounting
(AccountingStorageType=accounting_storage/none, as on many small clusters) sacct answers
nothing, and submitit waits for the result file of every task of the job. A task killed
outside Python (kill -9, the kernel's OOM killer, a lost node) never writes one, so the
sweep waited forever. There, the launcher asks `squeue`: a job that SLURM lists as ended,
or no longer lists, has ended, and submitit reads what results it left."""

from __future__ import annotations

import subprocess

from submitit.slurm import slurm

# squeue's states of a job that will not run again (`man squeue`, JOB STATE CODES)
ENDED = {"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY", "TIMEOUT"}


def keeps_accounting() -> bool:
    """Whether sacct can tell this cluster's jobs' ends (unknown counts as yes: submitit's
    own way is kept)."""
    try:
        done = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return True
    return "accounting_storage/none" not in done.stdout


class QueueWatcher(slurm.SlurmInfoWatcher):
    """submitit's job watcher, reading squeue instead of sacct. A job squeue does not list
    (it forgets ended jobs after MinJobAge) has ended too."""

    def _make_command(self) -> list[str] | None:
        if not self._registered - self._finished:
            return None
        return ["squeue", "--me", "--states=all", "--noheader", "--format=%i|%T"]

    def read_info(self, string: bytes | str) -> dict[str, dict[str, str]]:
        text = string.decode() if isinstance(string, bytes) else string
        listed = super().read_info("JobID|State\n" + text)  # sacct's layout, so submitit parses job arrays
        info = {job: {**stats, "State": _state(stats["State"])} for job, stats in listed.items()}
        gone = {job: {"JobID": job, "State": "ENDED"} for job in self._registered - self._finished if job not in info}
        return {**info, **gone}


def _state(squeue_state: str) -> str:
    """The state as submitit reads it: an ended one as it is, any other as RUNNING (squeue
    has states, CONFIGURING or SUSPENDED say, that submitit's list of unfinished ones lacks)."""
    return squeue_state if squeue_state in ENDED else "RUNNING"
