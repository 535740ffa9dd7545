"""The small key=value tools' arguments (evaluate, predict), in Hydra's override style and
typed by a dataclass each: a wrong key, type or range is one line and exit code 2."""

from __future__ import annotations

import sys
from typing import Any, Callable

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cifar_exp.checks import container, require
from cifar_exp.config import DEVICE
from cifar_exp.errors import UserError, exit_with, reason


def check_device(device: str) -> None:
    require(DEVICE.ok(device), "device", DEVICE.said(), device)


def run_tool(action: Callable[[Any], Any], schema: type, usage: str, prog: str, argv: list[str] | None = None) -> None:
    """Entry point of a small key=value tool: --help prints `usage`, a UserError one line."""
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(usage)
        return
    try:
        args = parse_cli(argv, schema)
        args.check()
        action(args)
    except UserError as e:
        exit_with(str(e), prog=prog)


def parse_cli(argv: list[str], schema: type) -> Any:
    """key=value arguments as an instance of `schema` (a dataclass): an unknown key, a value of
    the wrong type or a missing required (MISSING) value is a UserError."""
    try:
        given = OmegaConf.from_dotlist(argv)
    except Exception as e:
        raise UserError(f"cannot parse arguments {argv}: {reason(e)}") from None
    fields = list(OmegaConf.structured(schema))
    for key in map(str, given):
        if key not in fields:
            raise UserError(f"unknown argument {key}=...; expected {', '.join(f'{k}=' for k in fields)}")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), given)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        raise UserError(f"{key}={OmegaConf.select(given, str(key))!r} is invalid: {reason(e)}") from None
    for key in fields:
        if OmegaConf.is_missing(merged, key):
            raise UserError(f"{key}=... is required")
    try:
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:  # an interpolation that does not resolve (${oc.env:UNSET})
        key = getattr(e, "full_key", None) or "?"
        raw = container(given, resolve=False).get(str(key))
        raise UserError(f"{key}={raw!r} is invalid: {reason(e)}") from None
