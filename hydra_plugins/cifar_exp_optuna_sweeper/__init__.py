"""`hydra/sweeper=optuna`: cifar_exp's Optuna 5 sweeper (persistent, resumable, pruning)."""
