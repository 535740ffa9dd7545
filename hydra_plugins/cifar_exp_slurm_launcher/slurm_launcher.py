"""Hydra's SLURM launcher (submitit) with a job watcher that also works where the cluster
keeps no accounting (cifar_exp.slurm_queue says why), and a setting for how long a job's
missing result is waited for. Hydra imports every plugin module at start: this one imports
submitit only when it launches. (No postponed annotations here: Hydra runs the module
before it is in sys.modules, where a dataclass cannot resolve them.)"""

from dataclasses import dataclass
from typing import Any, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn

from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as HydraSlurmLauncher


@dataclass
class SlurmConf(SlurmQueueConf):
    _target_: str = "hydra_plugins.cifar_exp_slurm_launcher.slurm_launcher.SlurmLauncher"
    # After a job ended, how long to wait for a task's result file before reporting that
    # the task left none: a shared filesystem can show a file written on a compute node
    # late. submitit's own wait; 0 on a filesystem every node sees at once.
    results_timeout_s: int = 15


ConfigStore.instance().store(group="hydra/launcher", name="cifar_exp_slurm", node=SlurmConf, provider="cifar_exp")


class SlurmLauncher(HydraSlurmLauncher):
    def __init__(self, results_timeout_s: int = SlurmConf.results_timeout_s, **params: Any) -> None:
        super().__init__(**params)  # submitit's own parameters only
        self.results_timeout_s = results_timeout_s

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from submitit.slurm import slurm

        from cifar_exp.slurm_queue import QueueWatcher, keeps_accounting

        # every SlurmJob asks its class for these; nothing else lets a launcher choose them
        slurm.SlurmJob._results_timeout_s = self.results_timeout_s
        if not keeps_accounting():
            slurm.SlurmJob.watcher = QueueWatcher(delay_s=60)
        return super().launch(job_overrides, initial_job_idx)
