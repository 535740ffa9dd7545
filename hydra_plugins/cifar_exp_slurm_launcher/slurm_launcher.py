"""Hydra's SLURM launcher (submitit) with a job watcher that also works where the cluster
keeps no accounting (cifar_exp.slurm_queue says why). Hydra imports every plugin module
at start: this one imports submitit only when it launches."""

from __future__ import annotations

from typing import Sequence

from hydra.core.utils import JobReturn

from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as HydraSlurmLauncher


class SlurmLauncher(HydraSlurmLauncher):
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from submitit.slurm import slurm

        from cifar_exp.slurm_queue import QueueWatcher, keeps_accounting

        if not keeps_accounting():
            # every SlurmJob asks the one watcher its class holds; nothing else lets a launcher choose it
            slurm.SlurmJob.watcher = QueueWatcher(delay_s=60)
        return super().launch(job_overrides, initial_job_idx)
