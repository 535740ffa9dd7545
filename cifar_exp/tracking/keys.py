"""Metric, param and tag keys and values as MLflow takes them."""

from __future__ import annotations

import logging
import re

log = logging.getLogger("cifar_exp")


def rounded(key: str, value: float) -> float:
    """A metric as precise as what it measures: times to the millisecond, everything else to
    float32's 7 significant digits (0.06603612, not 0.06603612005710602)."""
    value = float(value)
    if key.endswith("_s"):
        return round(value, 3)
    return float(f"{value:.7g}")


# MLflow's rules for metric, param and tag keys: these characters, at most 250 of them, and
# nothing a file path would read differently ("a//b", "./a", "a/")
KEY_CHARS = re.compile(r"[^/\w.\- :]")

MAX_KEY = 250


def valid_key(key: str) -> str:
    """`key` as MLflow takes it: other characters become _, empty and dot-only path parts
    go, and it is cut to MAX_KEY. A valid key comes back unchanged."""
    parts = [p if p.strip(".") else p.replace(".", "_") for p in KEY_CHARS.sub("_", str(key)).split("/") if p]
    return "/".join(parts)[:MAX_KEY].rstrip("/") or "_"


def valid_keys(items: dict, what: str) -> dict:
    """The items with valid keys; each renamed one is said once, by its original name."""
    out = {}
    for key, value in items.items():
        fixed = valid_key(key)
        if fixed != key and (what, key) not in _RENAMED:
            _RENAMED.add((what, key))
            log.warning("warning: MLflow does not take the %s key %r: it is logged as %r", what, key, fixed)
        out[fixed] = value
    return out


_RENAMED: set = set()
