"""How the SLURM launcher reads squeue where the cluster keeps no accounting: job arrays
and their pending ranges, states submitit would misread, and jobs squeue no longer lists."""

from __future__ import annotations

import pytest

from cifar_exp.slurm_queue import QueueWatcher


def _watching(*jobs: str) -> QueueWatcher:
    watcher = QueueWatcher(delay_s=60)
    for job in jobs:
        watcher.register_job(job)
    return watcher


def test_array_tasks_and_pending_ranges_are_read_one_by_one():
    watcher = _watching("41_0", "41_1", "41_2", "41_3")
    info = watcher.read_info(b"41_0|RUNNING\n41_1|COMPLETED\n41_[2-3%2]|PENDING\n")
    assert {job: stats["State"] for job, stats in info.items()} == {
        "41_0": "RUNNING",
        "41_1": "COMPLETED",
        "41_2": "RUNNING",  # pending: not ended
        "41_3": "RUNNING",
    }


def test_a_job_squeue_no_longer_lists_has_ended():
    watcher = _watching("7", "8")
    watcher._info_dict.update(watcher.read_info("8|FAILED\n"))
    assert watcher.is_done("7", mode="cache") and watcher.is_done("8", mode="cache")
    assert watcher.get_state("7", mode="cache") == "ENDED"


def test_states_submitit_does_not_know_are_not_an_end():
    watcher = _watching("9", "10")
    watcher._info_dict.update(watcher.read_info("9|CONFIGURING\n10|SUSPENDED\n"))
    assert not watcher.is_done("9", mode="cache") and not watcher.is_done("10", mode="cache")


def test_squeue_is_asked_only_while_a_job_is_unfinished():
    watcher = _watching("5")
    assert watcher._make_command() == ["squeue", "--me", "--states=all", "--noheader", "--format=%i|%T"]
    watcher._finished.add("5")
    assert watcher._make_command() is None


def test_the_launcher_waits_for_a_missing_result_as_long_as_it_is_told(monkeypatch):
    """hydra.launcher.results_timeout_s reaches submitit's jobs (15 s by default, its own
    wait for a result file a shared filesystem shows late)."""
    from submitit.slurm import slurm

    from hydra_plugins.cifar_exp_slurm_launcher import slurm_launcher

    monkeypatch.setattr(slurm.SlurmJob, "_results_timeout_s", slurm.SlurmJob._results_timeout_s)
    monkeypatch.setattr(slurm.SlurmJob, "watcher", slurm.SlurmJob.watcher)
    monkeypatch.setattr(slurm_launcher.HydraSlurmLauncher, "launch", lambda self, overrides, idx: [])
    assert slurm_launcher.SlurmLauncher().results_timeout_s == 15
    slurm_launcher.SlurmLauncher(results_timeout_s=2).launch([], 0)
    assert slurm.SlurmJob._results_timeout_s == 2


def test_a_negative_wait_for_results_is_refused_before_any_job():
    from cifar_exp.errors import UserError

    from helpers import check_sweep_of

    check_sweep_of("hydra/launcher=slurm", "hydra.launcher.results_timeout_s=0", "dataset=synthetic")
    with pytest.raises(UserError, match=r"hydra.launcher.results_timeout_s=-1 is invalid: .* 0 or more"):
        check_sweep_of("hydra/launcher=slurm", "hydra.launcher.results_timeout_s=-1", "dataset=synthetic")
