"""`python -m cifar_exp.evaluate checkpoint=<file or run dir>`: test accuracy, per-class
accuracy and the confusion matrix of a saved model, on the test split it was trained for."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from omegaconf import MISSING

from cifar_exp.checks import require
from cifar_exp.errors import UserError
from cifar_exp.terminal import show
from cifar_exp.tool_cli import check_device, run_tool

PLOT_SUFFIXES = (".png", ".pdf", ".svg", ".jpg")
PRECISIONS = ("run", "float32")


@dataclass
class EvaluateArgs:
    checkpoint: str = MISSING
    device: str = "auto"
    # another place for the dataset the checkpoint was trained on ("": where it was)
    dataset_root: str = ""
    # also draw the confusion matrix to this file ("": no plot)
    plot: str = ""
    # run: the precision the run's trainer.amp picks on this device (bf16 autocast where the
    # device has the units, as in training); float32: full precision
    precision: str = "run"

    def check(self) -> None:
        check_device(self.device)
        require(self.precision in PRECISIONS, "precision", " or ".join(PRECISIONS), self.precision)
        require(
            not self.plot or Path(self.plot).suffix.lower() in PLOT_SUFFIXES,
            "plot",
            f"a file name ending in {', '.join(PLOT_SUFFIXES)}",
            self.plot,
        )


USAGE = (
    "usage: python -m cifar_exp.evaluate checkpoint=<file or run dir> [device=cpu] "
    "[dataset_root=<dir>] [plot=<confusion.png>] [precision=run|float32]"
)


def confusion_table(confusion, classes: list[str]) -> str:
    width = max(6, *(len(c) for c in classes))
    head = " " * (width + 2) + " ".join(f"{c[:6]:>6}" for c in classes)
    rows = [f"{c:>{width}}  " + " ".join(f"{int(n):>6}" for n in row) for c, row in zip(classes, confusion)]
    return "\n".join(["confusion matrix (rows: true class, columns: predicted)", head, *rows])


def evaluate(args) -> dict:
    import torch

    from cifar_exp import checkpoint, plots
    from cifar_exp.data import load_dataset
    from cifar_exp.loop import Trainer
    from cifar_exp.resume import own_choices
    from cifar_exp.runtime import Precision, pick_device, pick_precision
    from cifar_exp.validation import validate

    ck = checkpoint.find(args.checkpoint, log=lambda m: show(m, file=sys.stderr))
    stored = ck.config
    own_choices(stored)  # the stored root is read from; the cache and any download are this tool's
    if args.dataset_root:
        stored.dataset.root = args.dataset_root
    cfg = validate(stored, origin=f"checkpoint {ck.path}")
    device = pick_device(args.device)
    data = load_dataset(cfg.dataset, device)
    if data.classes != ck.state.classes:
        raise UserError(f"the dataset's classes {data.classes} differ from the checkpoint's {ck.state.classes}")
    model = checkpoint.restore_model(ck, device)
    precision = (
        pick_precision(cfg.trainer.amp, device, cfg.trainer.deterministic)
        if args.precision == "run"
        else Precision(None, "precision=float32")
    )
    trainer = Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0),
        None,
        torch.nn.CrossEntropyLoss(),
        device,
        cfg.trainer,
        precision.dtype,
    )
    result = trainer.evaluate(data.loader("test", cfg.dataset.eval_batch_size), data.num_classes)
    show(f"checkpoint {ck.path} (epoch {ck.state.epoch}, step {ck.state.global_step})")
    how = "" if args.precision == "float32" else f"the run's trainer.amp={cfg.trainer.amp} here: "
    show(f"precision {precision.name} ({how}{precision.reason})")
    show(result.report(data.classes))
    show(confusion_table(result.confusion, data.classes))
    if args.plot:
        try:
            plots.confusion_matrix(result.confusion, data.classes, args.plot)
        except OSError as e:
            raise UserError(f"cannot write plot={args.plot}: {e.strerror or e}") from None
    return result.metrics("test", data.classes)


def main(argv: list[str] | None = None) -> None:
    run_tool(evaluate, EvaluateArgs, USAGE, "cifar-exp-evaluate", argv)


if __name__ == "__main__":
    main()
