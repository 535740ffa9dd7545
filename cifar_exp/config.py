"""The typed config: the run's root schema (`Config`) with the trainer, tracking and
checkpoint schemas; the other groups' schemas are in config_dataset.py, config_model.py
and config_optim.py, the shared rules in checks.py. Each schema is a dataclass (its keys,
types and defaults; an option's `name` field names it) with a `check` of its own values: a
new option brings its rules in its own class. `check(at, run)` gets the key prefix it sits
under and the whole run's typed config, for rules that read a neighbour (a scheduler's
floor below the optimizer's lr, a model's smallest image). Rules that tie the run together
(metrics, periods, memory) live in cifar_exp.validation; the registry of options in
cifar_exp.registry.

Nothing here imports torch: `--help` and config errors stay fast.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, Optional

from omegaconf import MISSING, OmegaConf

from cifar_exp.checks import require, within_half_side
from cifar_exp.config_dataset import DatasetConfig
from cifar_exp.config_model import ModelConfig
from cifar_exp.config_optim import OptimizerConfig, SchedulerConfig
from cifar_exp.settings import (
    AtLeast,
    Free,
    InRange,
    InUnit,
    Matches,
    NonNegative,
    OneOf,
    Positive,
    check_values,
    setting,
)


def _first(objective: Any) -> Any:
    """checkpoint.monitor's default: the objective, or the first of several (an empty list
    stays one, for the objective's own check to name)."""
    return objective if isinstance(objective, str) or not objective else str(objective[0])


OmegaConf.register_new_resolver("cifar_exp.first", _first, replace=True)


DEVICE = Matches(r"auto|cpu|mps|cuda(:\d+)?", "auto, cpu, mps, cuda or cuda:<index>")
SWITCH = OneOf(("auto", "true", "false"))


@dataclass
class TrainerConfig:
    name: str = setting("default", Free())
    # auto picks cuda, then mps, then cpu
    device: str = setting("auto", DEVICE, resume_safe=True)
    # autocast: auto (on for CUDA and for CPUs with native bf16, off elsewhere and under
    # deterministic), true (forced; refused where the device has no such units), false
    amp: str = setting("auto", SWITCH)
    log_every_n_steps: int = setting(50, AtLeast(1), resume_safe=True)
    # evaluate (val, test) after every n-th epoch and after the last; early stopping, best
    # checkpoints and Optuna's pruning see only the evaluated epochs
    eval_every_n_epochs: int = setting(1, AtLeast(1))
    deterministic: bool = False
    # torch.compile: auto (on CUDA; off on CPU, where inductor measured slower here), true, false
    compile: str = setting("false", SWITCH, resume_safe=True)
    # NHWC layout for model and batches: faster for conv nets with BatchNorm on CPU and GPU
    channels_last: bool = False
    # a progress bar on a terminal; a line per quarter epoch otherwise
    progress: bool = setting(True, resume_safe=True)
    label_smoothing: float = setting(0.0, InUnit())
    # evaluate on each image and its mirror image, averaging the logits
    eval_flip: bool = False
    # test-time augmentation: also average over the images shifted by this many pixels
    # (up-left and down-right, reflected edges); with eval_flip, each shift is flip-averaged too
    eval_translate: int = setting(0, AtLeast(0))
    # the test-time views (eval_flip, eval_translate) in every evaluation; false: only in the
    # last epoch's and the run-end evaluation, since they multiply evaluation's cost by up to 6
    tta_every_eval: bool = False
    # lookahead: every n optimizer steps the weights move to an average of themselves and
    # their slow copy (weight lookahead_decay x (progress)^3 on the slow copy); 0 = off
    lookahead_every: int = setting(0, AtLeast(0))
    lookahead_decay: float = setting(0.7737809375, InUnit())
    # stop after this many optimizer steps in all (the last epoch may be partial); 0 = off
    max_steps: int = setting(0, AtLeast(0))
    # single process, or ddp under torchrun
    strategy: str = setting("single", OneOf(("single", "ddp")))
    # under DDP: how long the processes wait for one another, to form the group and at each
    # collective, before the ones waiting stop in one line naming who is missing
    ddp_timeout_s: int = setting(300, AtLeast(1), resume_safe=True)
    # BatchNorm statistics over all processes under DDP
    sync_batchnorm: bool = False
    # sum the gradients of this many batches into one optimizer step
    accumulate_grad_batches: int = setting(1, AtLeast(1))
    # clip the gradient norm to this (0 = off); the norm before clipping is logged
    gradient_clip_val: float = setting(0.0, NonNegative(), step_metrics=("train/grad_norm",))
    # warn when a logged step's gradient norm (before clipping) exceeds this (0 = off): a
    # sign of a learning rate too high for the model, seen before the loss diverges
    grad_norm_warn: float = setting(0.0, NonNegative(), resume_safe=True, step_metrics=("train/grad_norm",))
    # exponential moving average of the weights, evaluated and saved (0 = off; e.g. 0.999)
    ema_decay: float = setting(0.0, InUnit())
    # stop after this many epochs without improvement of checkpoint.monitor (0 = off); with
    # eval_every_n_epochs > 1 and a val/test monitor, this many evaluations
    early_stopping_patience: int = setting(0, AtLeast(0), resume_safe=True)
    # debugging: train/evaluate on only this many batches per epoch (0 = all) ...
    limit_train_batches: int = setting(0, AtLeast(0))
    limit_eval_batches: int = setting(0, AtLeast(0))
    # ... or train on the same first N batches every epoch, to see the loss reach ~0
    overfit_batches: int = setting(0, AtLeast(0))
    # trace this many training steps with torch.profiler (0 = off)
    profile_steps: int = setting(0, AtLeast(0), resume_safe=True)

    def check(self, at: str, run: Config) -> None:
        """The rules between keys (each key's own values: settings.check_values)."""
        require(
            not self.sync_batchnorm or self.strategy == "ddp",
            f"{at}.sync_batchnorm",
            f"false unless {at}.strategy=ddp (it syncs statistics across processes)",
            self.sync_batchnorm,
        )
        require(
            not (self.overfit_batches and self.limit_train_batches),
            f"{at}.overfit_batches",
            f"0 when {at}.limit_train_batches is set (one or the other)",
            self.overfit_batches,
        )
        within_half_side(self, at, run.dataset.pixels, "eval_translate")


@dataclass
class DeterministicTrainerConfig(TrainerConfig):
    """Bit-reproducible runs: deterministic kernels and float32 (no autocast)."""

    name: str = "deterministic"
    deterministic: bool = True
    amp: str = "false"


# MLflow's registered-model names: no '/' or ':', and a name that stays itself as a path
MODEL_NAME_FORBIDDEN = ("/", ":")


@dataclass
class MlflowConfig:
    """How a run is recorded: every key may change on resume."""

    enabled: bool = setting(True, resume_safe=True)
    # null: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the launch directory
    tracking_uri: Optional[str] = setting(None, Free(), resume_safe=True)
    experiment_name: str = setting("cifar_exp", Matches(r"(?s).*\S.*", "a non-empty name"), resume_safe=True)
    # null: derived from the command-line overrides
    run_name: Optional[str] = setting(None, Free(), resume_safe=True)
    log_model: bool = setting(True, resume_safe=True)
    # buffered metrics are written at least this often (and at every epoch end and checkpoint)
    flush_every_s: float = setting(30.0, Positive(), resume_safe=True)
    # how long the end of a run keeps trying an unreachable store before it leaves its
    # writes in the run dir's outbox for `cifar_exp.runs --deliver`; 0: one try
    finish_retry_s: float = setting(20.0, NonNegative(), resume_safe=True)
    tags: Dict[str, str] = setting({}, Free(), resume_safe=True)
    # CPU, memory (and GPU) use, sampled by MLflow's own monitor this often; 0 turns it off
    system_metrics_every_s: float = setting(10.0, NonNegative(), resume_safe=True)
    # also register the logged model under this name in the Model Registry
    registered_model_name: Optional[str] = setting(None, Free(), resume_safe=True)

    def check(self, at: str, run: Config) -> None:
        from cifar_exp.tracking.keys import MAX_KEY

        for key in self.tags:
            require(
                not key.startswith("mlflow."),
                f"{at}.tags.{key}",
                f"a tag of your own: MLflow's mlflow.* tags are the run's (the name is {at}.run_name)",
                self.tags[key],
            )
            require(
                len(key) <= MAX_KEY,
                f"{at}.tags",
                f"keys of at most {MAX_KEY} characters (MLflow's limit)",
                key[:57] + "...",
            )
        name = self.registered_model_name
        if name is not None:
            plain = name.strip() and not any(c in name for c in MODEL_NAME_FORBIDDEN)
            require(
                bool(plain) and os.path.normpath(name) == name and not name.startswith("."),
                f"{at}.registered_model_name",
                "a non-empty name without '/', ':' or a leading '.' (or null)",
                name,
            )
            require(
                self.log_model,
                f"{at}.registered_model_name",
                f"null when {at}.log_model=false (only a logged model can be registered)",
                name,
            )


@dataclass
class CheckpointConfig:
    """What a run keeps on disk: every key may change on resume."""

    enabled: bool = setting(True, resume_safe=True)
    every_n_epochs: int = setting(1, AtLeast(1), resume_safe=True)
    # 0 disables mid-epoch checkpoints
    every_n_steps: int = setting(0, AtLeast(0), resume_safe=True)
    # epoch checkpoints kept beside last.pt and best.pt; 0 keeps none
    keep_last: int = setting(0, AtLeast(0), resume_safe=True)
    save_best: bool = setting(True, resume_safe=True)
    # also keep the k best epoch checkpoints by monitor (0 = off)
    save_top_k: int = setting(0, AtLeast(0), resume_safe=True)
    # follows the run's objective (the first of several) unless set; a metric of the
    # catalogue (validation.check_metrics)
    monitor: str = setting("${cifar_exp.first:${objective}}", Free(), resume_safe=True)
    # null: derived from the monitored metric (a loss is minimized, an accuracy maximized);
    # set, it must agree
    mode: Optional[str] = setting(None, OneOf(("min", "max")), resume_safe=True)

    def check(self, at: str, run: Config) -> None:
        """Each key's own values are all: settings.check_values."""


SEED_LIMIT = 2**32


@dataclass
class Config:
    dataset: DatasetConfig = MISSING
    model: ModelConfig = MISSING
    optimizer: OptimizerConfig = MISSING
    scheduler: SchedulerConfig = MISSING
    trainer: TrainerConfig = MISSING
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    epochs: int = setting(1, AtLeast(1), resume_safe=True)
    seed: int = setting(0, InRange(0, SEED_LIMIT), headline=True)  # NumPy's seeds are 32-bit
    # a checkpoint file, a run output dir, or "auto" (this run's dir if it holds one)
    resume: Optional[str] = setting(None, Free(), resume_safe=True)
    # the metric @hydra.main returns to a sweeper, or a list of them for a multi-objective
    # search: objective=[val/acc,model/params] (validation.check_objective)
    objective: Any = setting("test/acc", Free(), resume_safe=True)

    GROUPS: ClassVar[tuple[str, ...]] = (
        "dataset",
        "model",
        "optimizer",
        "scheduler",
        "trainer",
        "mlflow",
        "checkpoint",
    )

    def check(self) -> None:
        """Every group's own rules, in the order a reader meets them, then the run's keys."""
        for group in self.GROUPS:
            schema = getattr(self, group)
            check_values(schema, group)
            schema.check(group, self)
        check_values(self, "")


def plain_config(config: Config) -> dict[str, Any]:
    """The typed config as plain values (nested dicts and lists): what a checkpoint stores,
    the run's params are made of and a resume's config.yaml shows."""
    return dataclasses.asdict(config)
