"""How the SLURM launcher reads squeue where the cluster keeps no accounting: job arrays
and their pending ranges, states submitit would misread, and jobs squeue no longer lists."""

from __future__ import annotations

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
