"""The one form of a refused config value, and the rules many schemas share (counts,
shares, shifts within the image). Nothing here imports torch."""

from __future__ import annotations

from typing import Any, Dict, cast

from omegaconf import OmegaConf

from cifar_exp.errors import UserError


def container(node: Any, resolve: bool = True) -> dict[str, Any]:
    """A config node's keys as plain values, resolved unless told (typed: a mapping, as
    every node this project reads as one is)."""
    values = OmegaConf.to_container(node, resolve=resolve)
    assert isinstance(values, dict), type(values)
    return cast(Dict[str, Any], values)


def require(ok: bool, key: str, allowed: str, value: Any) -> None:
    """The one form of a refused value: the key, the value and what it must be."""
    if not ok:
        shown = list(value) if isinstance(value, (list, tuple)) else value
        raise UserError(f"{key}={shown!r} is invalid: must be {allowed}")


def image_size(dataset: Any) -> int:
    """The square side of a dataset config's images (the CIFAR files are 32 px)."""
    return getattr(dataset, "image_size", 32)


def within_half_side(obj: Any, at: str, pixels: int, *keys: str) -> None:
    """Shifts and squares in pixels: at most half the image side, since more leaves mostly
    border or nothing of the image."""
    half = pixels // 2
    for key in keys:
        value = getattr(obj, key)
        allowed = f"an integer in [0, {half}] (half the {pixels} px image side; 0: off)"
        require(0 <= value <= half, f"{at}.{key}", allowed, value)


def at_least(obj: Any, at: str, minimum: int, *keys: str) -> None:
    """Counts and periods: each key an integer >= minimum (settings.AtLeast, for schemas
    whose fields do not carry their rules yet)."""
    from cifar_exp.settings import AtLeast  # settings builds on require, below

    _apply(AtLeast(minimum), obj, at, keys)


def _apply(rule: Any, obj: Any, at: str, keys: tuple[str, ...]) -> None:
    for key in keys:
        require(rule.ok(getattr(obj, key)), f"{at}.{key}", rule.said(), getattr(obj, key))


def nesterov_needs_momentum(obj: Any, at: str, nesterov: str, momentum: str) -> None:
    on = getattr(obj, nesterov)
    require(not on or getattr(obj, momentum) > 0, f"{at}.{nesterov}", f"false unless {at}.{momentum} > 0", on)
