"""Training steps and evaluation. Running sums stay on the device, so a step never waits
for the device unless a log line or a checkpoint asks for a number."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import nn

from cifar_exp.config import TrainerConfig
from cifar_exp.distributed import all_reduce_sum, collective
from cifar_exp.errors import UserError
from cifar_exp.loader import TensorLoader, pad_images
from cifar_exp.runtime import Precision


def autocast_for(device: torch.device, dtype: Optional[torch.dtype]):
    """Autocast to `dtype` on the device (None: float32 throughout); fp16 gets a gradient
    scaler, bf16 has float32's range and needs none."""
    if dtype is None:
        return contextlib.nullcontext, None
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    return (lambda: torch.autocast(device.type, dtype=dtype)), scaler


class EpochMeter:
    """Sums over the epoch (loss, correct, seen) and over the current logging window."""

    def __init__(self, device: torch.device):
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self.correct = torch.zeros((), dtype=torch.int64, device=self.device)
        self.seen = 0
        self.window_loss = torch.zeros((), dtype=torch.float64, device=self.device)
        self.window_steps = 0

    def update(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        loss = loss.detach().double()
        self.loss_sum += loss * len(y)
        # mixed (soft) targets count as their dominant class
        self.correct += (logits.detach().argmax(1) == (y if y.dim() == 1 else y.argmax(1))).sum()
        self.seen += len(y)
        self.window_loss += loss
        self.window_steps += 1

    def pop_window(self) -> float:
        value = (self.window_loss / max(self.window_steps, 1)).item()
        self.window_loss.zero_()
        self.window_steps = 0
        return value

    def summary(self) -> dict[str, float]:
        """The epoch's mean loss and accuracy, over every process's images."""
        sums = all_reduce_sum(
            torch.stack(
                [
                    self.loss_sum,
                    self.correct.double(),
                    torch.tensor(float(self.seen), dtype=torch.float64, device=self.device),
                ]
            )
        )
        loss_sum, correct, seen = sums.tolist()
        return {"loss": loss_sum / max(seen, 1), "acc": round(correct) / max(round(seen), 1)}

    def state_dict(self) -> dict:
        return {
            "loss_sum": self.loss_sum.cpu(),
            "correct": self.correct.cpu(),
            "seen": self.seen,
            "window_loss": self.window_loss.cpu(),
            "window_steps": self.window_steps,
        }

    def load_state_dict(self, state: dict) -> None:
        self.loss_sum = state["loss_sum"].to(self.device)
        self.correct = state["correct"].to(self.device)
        self.window_loss = state["window_loss"].to(self.device)
        self.seen, self.window_steps = state["seen"], state["window_steps"]


class Lookahead:
    """airbench's lookahead: every `every` optimizer steps the slow copy moves toward the
    weights, lerp(slow, weights, 1 - d), and the weights jump to it. d = decay x progress^3
    starts at 0 (no averaging while the weights move fast) and grows to `decay`; at the last
    step the weights become the slow copy. BatchNorm's running statistics are averaged too."""

    def __init__(self, module: nn.Module, every: int, decay: float, total_steps: int):
        self.module, self.every, self.decay, self.total = module, every, decay, total_steps
        self.slow = {k: v.detach().clone() for k, v in module.state_dict().items() if v.is_floating_point()}
        self.count = 0  # optimizer steps so far

    @torch.no_grad()
    def _pull(self, decay: float) -> None:
        weights = self.module.state_dict()
        for key, slow in self.slow.items():
            slow.lerp_(weights[key], 1 - decay)
            weights[key].copy_(slow)

    def step(self) -> None:
        self.count += 1
        if self.count % self.every == 0:
            self._pull(self.decay * min(self.count / self.total, 1.0) ** 3)
        if self.count == self.total:
            self._pull(1.0)

    def state_dict(self) -> dict:
        return {"slow": {k: v.cpu() for k, v in self.slow.items()}, "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.count = state["count"]
        for key, value in state["slow"].items():
            self.slow[key].copy_(value)


@dataclass
class Trainer:
    """Steps, evaluates and saves one model as the trainer schema (`trainer.*`) says."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Optional[torch.optim.lr_scheduler.LRScheduler]
    loss_fn: nn.Module
    device: torch.device
    settings: TrainerConfig = field(default_factory=TrainerConfig)
    # autocast dtype of forward passes, training and evaluation (None: float32)
    autocast_dtype: Optional[torch.dtype] = None
    total_steps: int = 0  # optimizer steps the run plans (lookahead's progress)

    def __post_init__(self):
        s = self.settings
        self.autocast, self.scaler = autocast_for(self.device, self.autocast_dtype)
        self.meter = EpochMeter(self.device)
        # torch.compile and DDP wrap the module; checkpoints hold the plain module's weights
        module = getattr(self.model, "_orig_mod", self.model)
        self.ddp = module if isinstance(module, nn.parallel.DistributedDataParallel) else None
        self.module = module.module if self.ddp is not None else module
        self.parameter_count = sum(p.numel() for p in self.module.parameters() if p.requires_grad)
        # EMA: torch's AveragedModel, averaging BatchNorm's running statistics too
        self.ema = (
            torch.optim.swa_utils.AveragedModel(
                self.module, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(s.ema_decay), use_buffers=True
            )
            if s.ema_decay > 0
            else None
        )
        # evaluation runs the same forward on every rank: DDP's wrapper adds nothing there
        if self.ema is not None:
            self.eval_model = self.ema.module
        else:
            self.eval_model = self.module if self.ddp is not None else self.model
        self.lookahead = (
            Lookahead(self.module, s.lookahead_every, s.lookahead_decay, self.total_steps)
            if s.lookahead_every
            else None
        )
        self.accumulate = s.accumulate_grad_batches
        self.micro = 0  # batches accumulated since the last optimizer step
        self.grad_norm: Optional[torch.Tensor] = None  # before clipping, at the last optimizer step

    @property
    def at_boundary(self) -> bool:
        """No gradients are pending: the state can be saved and resumed exactly."""
        return self.micro == 0

    def step(self, x: torch.Tensor, y: torch.Tensor, closes: bool = False) -> bool:
        """Forward and backward one batch; every `accumulate` batches, and at a batch that
        `closes` the epoch, one optimizer step: returns whether it made one."""
        last = closes or self.micro + 1 == self.accumulate
        # DDP averages gradients across processes only on the batch that completes a step
        sync = self.ddp.no_sync() if self.ddp is not None and not last else contextlib.nullcontext()
        with sync:
            with self.autocast():
                logits = self.model(x)
                loss = self.loss_fn(logits, y)
            # each batch's mean loss weighs 1/k: k batches of b images step like one of k*b
            scaled = loss / self.accumulate if self.accumulate > 1 else loss
            # under DDP the gradients are averaged as the backward pass runs
            with collective("the gradient all-reduce"):
                if self.scaler is not None:
                    self.scaler.scale(scaled).backward()
                else:
                    scaled.backward()
        self.meter.update(loss, logits, y)
        self.micro += 1
        if last:
            self.optimizer_step()
        return last

    def optimizer_step(self) -> None:
        """Apply the accumulated gradients (also for a shorter group at an epoch's end)."""
        clip, warn = self.settings.gradient_clip_val, self.settings.grad_norm_warn
        if clip > 0 or warn > 0:  # the norm is measured for either; an infinite bound clips nothing
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
            self.grad_norm = torch.nn.utils.clip_grad_norm_(self.module.parameters(), clip or float("inf"))
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.scheduler is not None:
            self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.module)
        if self.lookahead is not None:
            self.lookahead.step()
        self.micro = 0

    def end_epoch(self) -> bool:
        """An epoch ends on an optimizer step: a partial group of batches still pending (the
        caller did not say which batch closes the epoch) is applied. Returns whether it was."""
        if self.micro:
            self.optimizer_step()
            return True
        return False

    def begin_epoch(self, epoch: int, start_step: int) -> None:
        """Training mode; the epoch's sums start afresh unless resuming inside the epoch; a
        model with a schedule of its own (which layers train when) is told the epoch."""
        self.model.train()
        if hasattr(self.module, "begin_epoch"):
            self.module.begin_epoch(epoch)
        if start_step == 0:
            self.meter.reset()

    def finite(self) -> bool:
        """Whether the weights and the epoch's loss sum are all finite (a device sync: only
        before a checkpoint)."""
        params = [p.detach() for p in self.module.parameters()]
        if self.ema is not None:
            params += [p.detach() for p in self.ema.module.parameters()]
        return bool(torch.isfinite(self.meter.loss_sum)) and all(bool(torch.isfinite(p).all()) for p in params)

    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    @torch.inference_mode()
    def evaluate(self, loader: TensorLoader, num_classes: int, tta: bool = True) -> Evaluation:
        """Loss and confusion matrix over `loader`, with the configured test-time views
        unless `tta` is false."""
        model = self.eval_model
        model.eval()
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        confusion = torch.zeros(num_classes * num_classes, dtype=torch.int64, device=self.device)
        for x, y in loader.epoch(0):
            with self.autocast():
                logits = self.tta_logits(model, x) if tta else model(x).float()
                loss_sum += self.loss_fn(logits, y).double() * len(y)
            confusion += torch.bincount(y * num_classes + logits.argmax(1), minlength=num_classes**2)
        all_reduce_sum(confusion)
        all_reduce_sum(loss_sum)
        confusion = confusion.view(num_classes, num_classes).cpu()
        loss = loss_sum.item() / max(int(confusion.sum()), 1)
        return Evaluation(loss, confusion, Precision(self.autocast_dtype, "").name)

    def tta_logits(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Logits averaged over the test-time views: the image and its mirror (eval_flip);
        with eval_translate = t, half weight on those and half on the same views of the image
        shifted t pixels up-left and down-right (reflected edges), as airbench does."""

        def views(images: torch.Tensor) -> torch.Tensor:
            logits = model(images).float()
            return (logits + model(images.flip(3)).float()) / 2 if self.settings.eval_flip else logits

        logits = views(x)
        t = self.settings.eval_translate
        if t:
            h, w = x.shape[2:]
            padded = pad_images(x, t, "reflect")
            shifted = (views(padded[:, :, :h, :w]) + views(padded[:, :, 2 * t :, 2 * t :])) / 2
            logits = (logits + shifted) / 2
        return logits

    @torch.inference_mode()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Predicted classes of a normalized batch, on the batch's device."""
        self.eval_model.eval()
        with self.autocast():
            return self.eval_model(x).argmax(1)

    def state_dict(self) -> dict:
        return {
            "model": self.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "meter": self.meter.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "lookahead": self.lookahead.state_dict() if self.lookahead is not None else None,
        }

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state["scaler"] is not None:
            self.scaler.load_state_dict(state["scaler"])
        self.meter.load_state_dict(state["meter"])
        if self.ema is not None:
            if state.get("ema") is None:
                raise UserError("the checkpoint has no EMA weights: trainer.ema_decay must match the run's")
            self.ema.load_state_dict(state["ema"])
        if self.lookahead is not None:
            if state.get("lookahead") is None:
                raise UserError("the checkpoint has no lookahead state: trainer.lookahead_every must match the run's")
            self.lookahead.load_state_dict(state["lookahead"])

    @property
    def final_module(self) -> nn.Module:
        """The weights a run ends with: the EMA's when it keeps one."""
        return self.ema.module if self.ema is not None else self.module


@dataclass
class Evaluation:
    loss: float
    confusion: torch.Tensor  # [true, predicted] counts
    precision: str = "float32"  # of the forward passes: one test image may go either way between two

    # Accuracies are ratios of Python integers: 494 of 500 is reported as 0.988, not as the
    # float32 0.98799997...

    @property
    def acc(self) -> float:
        return int(self.confusion.diag().sum()) / max(int(self.confusion.sum()), 1)

    @property
    def per_class_acc(self) -> list[float]:
        return [int(c) / max(int(n), 1) for c, n in zip(self.confusion.diag(), self.confusion.sum(1))]

    def metrics(self, prefix: str, classes: list[str]) -> dict[str, float]:
        out = {f"{prefix}/loss": self.loss, f"{prefix}/acc": self.acc}
        if prefix == "test":
            out.update({f"test/acc_class/{c}": a for c, a in zip(classes, self.per_class_acc)})
        return out

    def report(self, classes: list[str]) -> str:
        lines = [
            f"Accuracy of the network on the {int(self.confusion.sum())} test images: "
            f"{100 * self.acc:.2f} % (test loss {self.loss:.4f}, {self.precision})"
        ]
        lines += [f"Accuracy for class: {c:10s} is {100 * a:.1f} %" for c, a in zip(classes, self.per_class_acc)]
        return "\n".join(lines)
