"""Datasets become uint8 tensors; the loader batches, normalizes, augments and replays."""

from __future__ import annotations

import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cifar_exp.config_dataset import Cifar10Config, ImageFolderConfig, SyntheticConfig
from cifar_exp.data import load_dataset
from cifar_exp.errors import UserError
from cifar_exp.loader import Normalize, Split, TensorLoader

from helpers import png_tree, tensor_loader

CPU = torch.device("cpu")


def synthetic(**kw):
    return SyntheticConfig(**kw)


def test_synthetic_is_deterministic_and_class_dependent():
    a, b = load_dataset(synthetic(train_size=300), CPU), load_dataset(synthetic(train_size=300), CPU)
    assert a.train.x.dtype == torch.uint8 and a.train.x.shape == (300, 3, 32, 32)
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)
    means = torch.stack([a.train.x[a.train.y == c].float().mean(0) for c in range(10)])
    # class means differ far more than noise would make them
    assert torch.cdist(means.flatten(1), means.flatten(1)).fill_diagonal_(1e9).min() > 100


def test_validation_split_is_held_out_and_fixed():
    d = load_dataset(synthetic(train_size=300, val_size=50), CPU)
    assert len(d.train) == 250 and len(d.val) == 50
    again = load_dataset(synthetic(train_size=300, val_size=50), CPU)
    assert torch.equal(d.val.x, again.val.x)


def _loader(n=10, **kw) -> TensorLoader:
    x = torch.arange(n * 3 * 4 * 4, dtype=torch.int64).remainder(256).to(torch.uint8).view(n, 3, 4, 4)
    return tensor_loader(Split(x, torch.arange(n)), 4, Normalize([0.5] * 3, [0.5] * 3, CPU), **kw)


def test_loader_covers_every_image_once_per_epoch_and_normalizes():
    loader = _loader(shuffle=True)
    batches = list(loader.epoch(0))
    assert len(loader) == 3 and [len(y) for _, y in batches] == [4, 4, 2]  # last partial batch kept
    ys = torch.cat([y for _, y in batches])
    assert sorted(ys.tolist()) == list(range(10))
    x, y = batches[0]
    assert torch.allclose(x, loader.split.x[y].float() / 255 * 2 - 1, atol=1e-6)
    assert not torch.equal(ys, torch.cat([y for _, y in loader.epoch(1)]))  # reshuffled


def test_loader_replays_an_epoch_from_any_step():
    loader = _loader(n=20, shuffle=True, crop=True, padding=2, seed=3)
    full = list(loader.epoch(5))
    tail = list(loader.epoch(5, start_step=2))
    for (xa, ya), (xb, yb) in zip(full[2:], tail):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_augmentation_crops_and_flips_within_the_padded_image():
    img = torch.arange(16, dtype=torch.uint8).view(1, 1, 4, 4).expand(1, 3, 4, 4).contiguous()
    loader = tensor_loader(
        Split(img.repeat(64, 1, 1, 1), torch.zeros(64, dtype=torch.int64)),
        64,
        Normalize([0.0] * 3, [1 / 255] * 3, CPU),
        shuffle=True,
        crop=True,
        padding=1,
    )
    x, _ = next(loader.epoch(0))
    padded = torch.nn.functional.pad(img[0, 0].float(), (1, 1, 1, 1))
    windows = {tuple(padded[r : r + 4, c : c + 4].flatten().tolist()) for r in range(3) for c in range(3)}
    windows |= {tuple(padded[r : r + 4, c : c + 4].flip(1).flatten().tolist()) for r in range(3) for c in range(3)}
    seen = {tuple(v.round().tolist()) for v in x[:, 0].flatten(1)}
    assert seen <= windows and len(seen) > 4


def test_image_folder_decodes_caches_and_resizes(tmp_path):
    png_tree(tmp_path / "imgs", size=40)
    cfg = ImageFolderConfig(
        **{"name": "image_folder", "root": str(tmp_path / "imgs"), "cache_dir": str(tmp_path / "cache")}
    )
    d = load_dataset(cfg, CPU)
    assert d.classes == ["cat", "dog"] and d.train.x.shape == (6, 3, 32, 32)
    assert d.train.y.tolist() == [0, 0, 0, 1, 1, 1]
    assert (d.train.x[3:, 1] == 255).all()  # dog images have a saturated green channel
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1
    cached = load_dataset(cfg, CPU)
    assert torch.equal(cached.train.x, d.train.x) and cached.classes == d.classes
    Image.new("RGB", (32, 32)).save(tmp_path / "imgs/train/cat/new.png")
    assert len(load_dataset(cfg, CPU).train) == 7  # a changed tree is decoded again


def _changed_in_place(cache, part: int) -> None:
    """The cache's labels (part 1) or pixels (part 0) overwritten, its size and checksum kept."""
    blob = torch.load(cache, weights_only=True)
    tensor = blob["train"][part]
    tensor.copy_(tensor.flip(0))
    torch.save(blob, cache)


@pytest.mark.parametrize("content", [b"", b"garbage", "truncated", "wrong structure", "labels", "pixels"])
def test_a_corrupt_cache_is_rebuilt_with_a_warning(tmp_path, caplog, content):
    png_tree(tmp_path / "imgs")
    cfg = ImageFolderConfig(**{"root": str(tmp_path / "imgs"), "cache_dir": str(tmp_path / "cache")})
    good = load_dataset(cfg, CPU)
    [cache] = (tmp_path / "cache").glob("*.pt")
    if content == "truncated":
        cache.write_bytes(cache.read_bytes()[:200])
    elif content == "wrong structure":
        torch.save({"train": [torch.zeros(3)], "classes": "x"}, cache)
    elif content in ("labels", "pixels"):
        _changed_in_place(cache, 1 if content == "labels" else 0)
    else:
        cache.write_bytes(content)
    with caplog.at_level("WARNING", logger="cifar_exp"):
        again = load_dataset(cfg, CPU)
    assert torch.equal(again.train.x, good.train.x) and again.classes == good.classes
    assert "cache" in caplog.text and "decoding the images again" in caplog.text
    assert torch.equal(load_dataset(cfg, CPU).train.x, good.train.x)  # the rebuilt cache is sound


@pytest.mark.parametrize("stale", ["another size", "other classes", "another source"])
def test_a_cache_of_something_else_under_the_key_is_rebuilt_with_a_line(tmp_path, caplog, stale):
    """Valid tensors, but not of this folder at this size: never used, and never a
    RuntimeError after the run has started."""
    png_tree(tmp_path / "imgs")
    cfg = ImageFolderConfig(**{"root": str(tmp_path / "imgs"), "cache_dir": str(tmp_path / "cache")})
    good = load_dataset(cfg, CPU)
    [cache] = (tmp_path / "cache").glob("*.pt")
    blob = torch.load(cache, weights_only=True)
    if stale == "another size":
        blob["train"][0] = torch.zeros(6, 3, 40, 40, dtype=torch.uint8)
    elif stale == "other classes":
        blob["classes"] = blob["built_from"]["classes"] = ["airplane", "ship"]
    else:
        blob["built_from"]["source"] = "/somewhere/else"
    torch.save(blob, cache)
    with caplog.at_level("WARNING", logger="cifar_exp"):
        again = load_dataset(cfg, CPU)
    assert again.classes == ["cat", "dog"] and torch.equal(again.train.x, good.train.x)
    assert "is unusable" in caplog.text and "decoding the images again" in caplog.text


def test_a_cache_that_cannot_be_written_costs_only_the_cache(tmp_path, caplog, monkeypatch):
    import errno

    from cifar_exp import durable

    def full(obj, path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(durable, "atomic_save", full)
    png_tree(tmp_path / "imgs")
    cfg = ImageFolderConfig(**{"root": str(tmp_path / "imgs"), "cache_dir": str(tmp_path / "cache")})
    with caplog.at_level("WARNING", logger="cifar_exp"):
        d = load_dataset(cfg, CPU)
    assert d.classes == ["cat", "dog"] and len(d.train) == 6
    [line] = [r.getMessage() for r in caplog.records]
    assert "cannot write the decoded-image cache" in line and str(tmp_path / "cache") in line
    assert "No space left on device" in line


def test_image_folder_rejects_an_unreadable_image(tmp_path):
    png_tree(tmp_path / "imgs")
    (tmp_path / "imgs/train/cat/broken.png").write_bytes(b"not an image")
    cfg = ImageFolderConfig(**{"name": "image_folder", "root": str(tmp_path / "imgs"), "cache_dir": None})
    with pytest.raises(UserError, match="broken.png"):
        load_dataset(cfg, CPU)


def _fake_cifar10(root: Path, per_batch=4) -> None:
    """The original python-pickle layout, as cifar-10-python.tar.gz unpacks."""
    rng = np.random.default_rng(0)
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)

    def batch(name, n):
        labels = [int(i % 10) for i in range(n)]
        data = rng.integers(0, 255, (n, 3072), dtype=np.uint8)
        with open(base / name, "wb") as f:
            pickle.dump({"data": data, "labels": labels}, f)

    for i in range(1, 6):
        batch(f"data_batch_{i}", per_batch)
    batch("test_batch", 10)
    with open(base / "batches.meta", "wb") as f:
        pickle.dump(
            {"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]},
            f,
        )
    with tarfile.open(root / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(base, arcname="cifar-10-batches-py")


def test_cifar10_loader_reads_the_original_archive_offline(tmp_path, monkeypatch):
    import shutil

    import torchvision.datasets.cifar
    import torchvision.datasets.utils

    _fake_cifar10(tmp_path)
    shutil.rmtree(tmp_path / "cifar-10-batches-py")  # only the archive, as a user would place it
    # the fake files cannot match the published checksums
    for module in (torchvision.datasets.cifar, torchvision.datasets.utils):
        monkeypatch.setattr(module, "check_integrity", lambda path, md5=None: Path(path).is_file())
    cfg = Cifar10Config(**{"name": "cifar10", "root": str(tmp_path), "download": True})
    d = load_dataset(cfg, CPU)
    assert d.train.x.shape == (20, 3, 32, 32) and d.test.x.shape == (10, 3, 32, 32)
    assert d.classes[0] == "airplane" and d.test.y.tolist() == list(range(10))
    with open(tmp_path / "cifar-10-batches-py/data_batch_1", "rb") as f:
        first = pickle.load(f)["data"][0]
    assert torch.equal(d.train.x[0].flatten(), torch.from_numpy(first))  # CHW order kept


def test_missing_cifar_without_download_is_a_user_error(tmp_path):
    cfg = Cifar10Config(**{"name": "cifar10", "root": str(tmp_path), "download": False})
    with pytest.raises(UserError, match="dataset=synthetic"):
        load_dataset(cfg, CPU)


def _mixing(**kw) -> TensorLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8, generator=g)
    return tensor_loader(
        Split(x, torch.arange(64) % 4),
        16,
        Normalize([0.5] * 3, [0.5] * 3, CPU),
        shuffle=True,
        seed=2,
        num_classes=4,
        **kw,
    )


@pytest.mark.parametrize(
    "kw", [{"mixup_alpha": 0.4}, {"cutmix_alpha": 1.0}, {"mixup_alpha": 0.4, "cutmix_alpha": 1.0}, {"cutout": 4}]
)
def test_batch_augmentations_replay_exactly_from_any_step(kw):
    loader = _mixing(crop=True, padding=2, **kw)
    full, tail = list(loader.epoch(3)), list(loader.epoch(3, start_step=2))
    for (xa, ya), (xb, yb) in zip(full[2:], tail):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(full[0][0], list(loader.epoch(4))[0][0])


def test_mixed_batches_have_soft_targets_that_sum_to_one():
    for kw in ({"mixup_alpha": 0.4}, {"cutmix_alpha": 1.0}):
        for _x, y in _mixing(**kw).epoch(0):
            assert y.shape == (16, 4) and torch.allclose(y.sum(1), torch.ones(16))
            assert ((y > 0).sum(1) <= 2).all()  # each image mixes with one partner
    plain = next(_mixing().epoch(0))[1]
    assert plain.dtype == torch.int64 and plain.dim() == 1


def test_cutout_zeroes_one_square_per_image():
    loader = _mixing(cutout=4)
    x, _ = next(loader.epoch(0))
    reference, _ = next(_mixing().epoch(0))
    zeroed = (x == 0) & (reference != 0)
    per_image = zeroed.any(1).flatten(1).sum(1)
    assert (per_image <= 16).all() and (per_image > 0).sum() >= 12  # squares may hang over the edge


def test_reflect_padding_alternate_flips_and_drop_last():
    x = torch.randint(0, 256, (10, 3, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    split = Split(x, torch.arange(10))  # the label names the image
    loader = tensor_loader(
        split,
        4,
        Normalize([0.0] * 3, [1 / 255] * 3, CPU),
        shuffle=True,
        crop=True,
        padding=1,
        pad_mode="reflect",
        flip="alternate",
        drop_last=True,
    )
    assert len(loader) == 2  # 10 images in batches of 4: the partial third batch is dropped
    assert torch.equal(loader.padded, torch.nn.functional.pad(x.float(), (1, 1, 1, 1), mode="reflect").byte())

    def flipped(epoch: int) -> dict[int, bool]:
        """Per image seen in `epoch`: whether its crop came out mirrored."""
        batches = list(loader.epoch(epoch))
        assert sum(len(y) for _, y in batches) == 8
        out = {}
        for img, label in zip(torch.cat([b for b, _ in batches]).round().byte(), torch.cat([y for _, y in batches])):
            padded = loader.padded[label]
            out[int(label)] = not any(
                torch.equal(img, padded[:, r : r + 4, c : c + 4]) for r in range(3) for c in range(3)
            )
        return out

    # drawn once per image for the run, whatever order the epoch shuffles the images into:
    # every image is mirrored on exactly one of any two consecutive epochs
    seen = [flipped(e) for e in range(6)]
    for a, b in zip(seen, seen[1:]):
        assert all(a[i] != b[i] for i in a.keys() & b.keys())
    assert all(seen[0][i] == seen[4][i] for i in seen[0].keys() & seen[4].keys())
    assert 0 < sum(seen[0].values()) < 8  # a random draw, not all the same
