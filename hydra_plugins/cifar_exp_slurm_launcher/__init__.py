"""`hydra/launcher=slurm`: Hydra's submitit launcher, which also sees a job end where SLURM keeps no accounting."""
