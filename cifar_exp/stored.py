"""Configs read from files (a checkpoint's, a run's): plain data rebuilt on the registered
schemas. Every container is walked (dicts, lists, tuples, sets): a `_target_` or a `${...}`
anywhere is refused, so a file can only describe a run, never pick code or read the
environment. The rebuilt config then passes the same checks as the command line's."""

from __future__ import annotations

from typing import Any, Iterable

from omegaconf import DictConfig

from cifar_exp.errors import UserError
from cifar_exp.registry import on_schemas

CODE_KEYS = ("_target_", "_partial_", "_args_", "_recursive_", "_convert_")

# far deeper than anything this project writes (a checkpoint nests about 6 deep), far
# shallower than what overflows a recursive reader
MAX_DEPTH = 64


def check_depth(tree: Any, origin: str) -> None:
    """Refuse containers nested deeper than MAX_DEPTH, walked without recursion, before any
    recursive reader (a checksum, OmegaConf) meets them."""
    stack = [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        children: Iterable[Any]
        if isinstance(node, dict):
            children = node.values()
        elif isinstance(node, (list, tuple, set, frozenset)):
            children = node
        else:
            continue
        if depth > MAX_DEPTH:
            raise UserError(f"{origin}: its contents nest deeper than {MAX_DEPTH} levels (no file of ours does)")
        stack.extend((child, depth + 1) for child in children)


def from_stored(stored: Any, origin: str) -> DictConfig:
    """`stored` rebuilt on the schemas; any problem is a UserError naming `origin` and the key."""
    if not isinstance(stored, dict):
        raise UserError(f"{origin}: the stored config is not a mapping")
    check_depth(stored, origin)
    _refuse_code(stored, origin, "")
    return on_schemas(_migrated(stored), origin)


def _migrated(stored: dict) -> dict:
    """Older stored configs in today's keys. trainer.amp was a bool whose true meant
    "autocast where the device has it" (then CUDA only): that is `auto`, and false `false`.
    trainer.compile was a bool too: true and false keep their meaning as strings.
    The trainer had no name (its options share one schema): the default's schema holds any
    of its stored values."""
    trainer = stored.get("trainer")
    if isinstance(trainer, dict) and isinstance(trainer.get("amp"), bool):
        trainer = {**trainer, "amp": "auto" if trainer["amp"] else "false"}
    if isinstance(trainer, dict) and isinstance(trainer.get("compile"), bool):
        trainer = {**trainer, "compile": str(trainer["compile"]).lower()}
    if isinstance(trainer, dict) and "name" not in trainer:
        trainer = {"name": "default", **trainer}
    return {**stored, "trainer": trainer} if trainer is not None else stored


def _refuse_code(tree: Any, origin: str, path: str) -> None:
    if isinstance(tree, dict):
        for key, value in tree.items():
            if not isinstance(key, str):
                raise UserError(f"{origin}: stored config key {path}{key!r} is not a name")
            if key in CODE_KEYS:
                raise UserError(
                    f"{origin}: refusing {path}{key}={value!r}: a stored config may name "
                    f"registered options only, never code"
                )
            _refuse_code(value, origin, f"{path}{key}.")
    elif isinstance(tree, (list, tuple, set, frozenset)):
        for i, value in enumerate(tree):
            _refuse_code(value, origin, f"{path}{i}.")
    elif isinstance(tree, str) and "${" in tree:  # a resolver would run on reading
        raise UserError(f"{origin}: refusing {path.rstrip('.')}={tree!r}: a stored config holds plain values only")
