"""Hydra experiments for CIFAR-10 classifiers with PyTorch, MLflow and resumable checkpoints."""

__version__ = "0.1.0"
