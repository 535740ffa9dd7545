"""Metric, param and tag keys and values as MLflow takes them."""

from __future__ import annotations

import logging
import re

log = logging.getLogger("cifar_exp")


def rounded(value: float) -> float:
    """A metric to float32's 7 significant digits (0.06603612, not 0.06603612005710602), as
    precise as what the run computes, whatever the metric is called."""
    return float(f"{float(value):.7g}")


# the tag MLflow's UI shows as a run's (and a logged model's) description
DESCRIPTION_TAG = "mlflow.note.content"

# the longest values MLflow takes (mlflow.utils.validation)
MAX_TAG_VALUE, MAX_PARAM_VALUE = 8000, 6000


def cut(items: dict, limit: int, what: str) -> dict:
    """Values as strings of at most `limit` characters; each cut one is said once."""
    out = {}
    for key, value in items.items():
        text = str(value)
        if len(text) > limit and (what, key, "cut") not in _SAID:
            _SAID.add((what, key, "cut"))
            log.warning(
                "warning: the %s %s is %d characters; MLflow takes %d, so its end is cut", what, key, len(text), limit
            )
        out[key] = text[:limit]
    return out


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
    """The items with valid keys; each renamed one is said once, by its original name. Keys
    that are valid keep their names; a renamed one that would land on another's name (a+b
    and a_b both become a_b) takes a suffix (a_b_2), the same one for the whole run, so no
    value ever replaces another's."""
    out = {k: v for k, v in items.items() if valid_key(k) == k}
    for key, value in items.items():
        if key in out:
            continue
        fixed = _ASSIGNED.get((what, key)) or _unused(what, key, valid_key(key), out)
        if (what, key) not in _ASSIGNED:
            _ASSIGNED[(what, key)] = fixed
            log.warning("warning: MLflow does not take the %s key %r: it is logged as %r", what, key, fixed)
        out[fixed] = value
    return out


def _unused(what: str, key: str, base: str, taken: dict) -> str:
    """`base`, or base_2, base_3, ...: the first that no other key uses."""
    candidate, n = base, 1
    while candidate in taken or _OWNER.get((what, candidate), key) != key:
        n += 1
        candidate = f"{base[: MAX_KEY - len(str(n)) - 1]}_{n}"
    _OWNER[(what, candidate)] = key
    return candidate


_ASSIGNED: dict = {}  # (what, original key) -> the key it is logged as
_OWNER: dict = {}  # (what, logged key) -> the original key that took it
_SAID: set = set()
