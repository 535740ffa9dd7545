"""`python -m cifar_exp.predict checkpoint=<file or run dir> images=[a.png,b.jpg]`: the
predicted class and the top-3 probabilities for each image file."""

from __future__ import annotations

import sys
from pathlib import Path

from cifar_exp.config import image_size, run_tool
from cifar_exp.errors import UserError

DEFAULTS = {"checkpoint": None, "images": None, "device": "auto", "top": 3}
USAGE = "usage: python -m cifar_exp.predict checkpoint=<file or run dir> images=[a.png,b.jpg] [top=3]"


def predict(args) -> list[list[tuple[str, float]]]:
    import torch

    from cifar_exp import checkpoint
    from cifar_exp.data import Normalize, decode_image
    from cifar_exp.runtime import pick_device

    images = [args.images] if isinstance(args.images, str) else list(args.images)
    if not images:
        raise UserError("images=[] names no image; give images=[a.png,b.jpg]")
    if not isinstance(args.top, int) or isinstance(args.top, bool) or args.top < 1:
        raise UserError(f"top={args.top!r} is invalid: must be an integer >= 1")
    for image in images:
        if not Path(image).is_file():
            raise UserError(f"image {image} does not exist")
    device = pick_device(args.device)
    ck = checkpoint.find(args.checkpoint, log=lambda m: print(m, file=sys.stderr))
    cfg = ck.config.dataset
    size = image_size(cfg)
    x = torch.stack([torch.from_numpy(decode_image(Path(p), size)).permute(2, 0, 1) for p in images])
    model = checkpoint.restore_model(ck, device)
    with torch.inference_mode():
        probs = model(Normalize(cfg.mean, cfg.std, device)(x.to(device))).float().softmax(1).cpu()
    classes, k = ck.state.classes, min(args.top, len(ck.state.classes))
    results = []
    for image, p in zip(images, probs):
        top = p.topk(k)
        ranked = [(classes[i], float(v)) for v, i in zip(top.values, top.indices)]
        results.append(ranked)
        print(f"{image}: {ranked[0][0]}  (" + ", ".join(f"{c} {100 * v:.1f}%" for c, v in ranked) + ")")
    return results


def main(argv: list[str] | None = None) -> None:
    run_tool(predict, DEFAULTS, USAGE, "cifar-exp-predict", argv)


if __name__ == "__main__":
    main()
