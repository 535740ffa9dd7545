"""Hydra callbacks: config validation before Hydra creates an output dir."""

from __future__ import annotations

from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from cifar_exp.config import validate
from cifar_exp.errors import UserError, exit_with


class ValidateConfig(Callback):
    """Checks ranges and paths before a single run starts, so a bad value leaves no output
    dir or MLflow run behind. Hydra turns a callback's exceptions into warnings, so a user
    error exits here directly."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            validate(config)
        except UserError as e:
            exit_with(str(e))
