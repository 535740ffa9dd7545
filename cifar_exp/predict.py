"""`python -m cifar_exp.predict checkpoint=<file or run dir> images=[a.png,b.jpg]`: the
predicted class and the top-3 probabilities for each image file."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import MISSING

from cifar_exp.checks import require
from cifar_exp.errors import UserError
from cifar_exp.terminal import show
from cifar_exp.tool_cli import check_device, run_tool


@dataclass
class PredictArgs:
    checkpoint: str = MISSING
    # one image path, or a list of them
    images: Any = MISSING
    device: str = "auto"
    top: int = 3

    def check(self) -> None:
        check_device(self.device)
        require(self.top >= 1, "top", "an integer >= 1", self.top)
        paths = [self.images] if isinstance(self.images, str) else self.images
        require(
            isinstance(paths, list) and all(isinstance(p, str) for p in paths),
            "images",
            "an image path or a list of them: images=[a.png,b.jpg]",
            self.images,
        )
        if not paths:
            raise UserError("images=[] names no image; give images=[a.png,b.jpg]")
        for image in paths:
            if not Path(image).is_file():
                raise UserError(f"image {image} does not exist")
        self.images = paths


USAGE = "usage: python -m cifar_exp.predict checkpoint=<file or run dir> images=[a.png,b.jpg] [top=3]"


def predict(args) -> list[list[tuple[str, float]]]:
    import torch

    from cifar_exp import checkpoint
    from cifar_exp.data import decode_image
    from cifar_exp.loader import Normalize
    from cifar_exp.runtime import pick_device
    from cifar_exp.validation import validate

    images = args.images
    device = pick_device(args.device)
    ck = checkpoint.find(args.checkpoint, log=lambda m: show(m, file=sys.stderr))
    cfg = ck.config.dataset
    size = validate(ck.config, paths=False, origin=f"checkpoint {ck.path}").dataset.pixels
    # decode_image gives PIL's read-only view: torch.tensor copies it (from_numpy warns)
    x = torch.stack([torch.tensor(decode_image(Path(p), size)).permute(2, 0, 1) for p in images])
    model = checkpoint.restore_model(ck, device)
    with torch.inference_mode():
        probs = model(Normalize(cfg.mean, cfg.std, device)(x.to(device))).float().softmax(1).cpu()
    classes, k = ck.state.classes, min(args.top, len(ck.state.classes))
    results = []
    for image, p in zip(images, probs):
        top = p.topk(k)
        ranked = [(classes[i], float(v)) for v, i in zip(top.values, top.indices)]
        results.append(ranked)
        show(f"{image}: {ranked[0][0]}  (" + ", ".join(f"{c} {100 * v:.1f}%" for c, v in ranked) + ")")
    return results


def main(argv: list[str] | None = None) -> None:
    run_tool(predict, PredictArgs, USAGE, "cifar-exp-predict", argv)


if __name__ == "__main__":
    main()
