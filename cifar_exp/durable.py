"""Files written whole or not at all (a temporary file, fsync, rename, fsync of the folder),
and the digest that tells a file changed in place. Checkpoints, the decoded-image cache and
the MLflow outbox are written through these."""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch


def atomic_save(obj: Any, path: Path) -> memoryview:
    """torch.save to a temporary file beside `path`, fsync, then rename: a crash at any point
    leaves either the old file or the new one, never a torn one. The bytes are built in
    memory first, so a full disk is a plain OSError (ENOSPC) from the write; they are
    returned, for copies."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write(buffer.getbuffer(), path)
    return buffer.getbuffer()


def atomic_write_text(text: str, path: Path) -> None:
    atomic_write(text.encode(), path)


def atomic_write(data, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def digest(payload: Any) -> str:
    """sha256 of a checkpoint's contents: every tensor's dtype, shape and bytes and every
    plain value, in order. torch.load reads a file whose tensor bytes were overwritten in
    place without a word; this tells."""
    h = hashlib.sha256()
    _feed(h, payload)
    return h.hexdigest()


def _feed(h, obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"tensor {t.dtype} {tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(obj, dict):
        h.update(f"dict {len(obj)};".encode())
        for key in sorted(obj, key=str):
            h.update(f"{key!r}:".encode())
            _feed(h, obj[key])
    elif isinstance(obj, (list, tuple)):  # a stored tuple may come back a list
        h.update(f"list {len(obj)};".encode())
        for item in obj:
            _feed(h, item)
    else:  # a NumPy scalar and the Python number it loads back as read the same
        h.update(f"{obj.item() if isinstance(obj, np.generic) else obj!r};".encode())
