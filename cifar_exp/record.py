"""What a run's MLflow record holds of its config, and under which keys: params for what it
computes (write-once), tags for the keys a resume may change. A sweep's parent uses the same
keys as its jobs."""

from __future__ import annotations

from typing import Any, Optional

from cifar_exp.job import parse_override
from cifar_exp.registry import REGISTRY, headline_keys
from cifar_exp.resume import is_safe, key_touched

# The safe keys that runs are compared by. MLflow params are write-once, so these are logged
# as tags, which each resume updates; the other safe keys are in the logged config only.
COMPARED = ("epochs", "objective", "trainer.early_stopping_patience", "checkpoint.monitor", "checkpoint.mode")
HEADLINE = headline_keys()


def config_key(override_key: str) -> str:
    """The config key an override sets: a group's choice (model=resnet18) sets model.name."""
    return f"{override_key}.name" if override_key in REGISTRY else override_key


def record(flat: dict, defaults: dict, overrides: Optional[list[str]]) -> tuple[dict, dict]:
    """A run's flattened config as MLflow params and tags (the COMPARED keys). The params
    are the headline keys, the keys the command set and those its options set apart from
    their defaults: what tells runs apart, not 50 constants (the whole config is in
    hydra/config.yaml)."""
    set_here = sorted({config_key(parse_override(o)[0]) for o in overrides or []})
    params = {
        k: v
        for k, v in flat.items()
        if not is_safe(k) and (k in HEADLINE or v != defaults.get(k) or key_touched(k, set_here))
    }
    return params, {k: flat[k] for k in COMPARED if k in flat}


def sweep_record(overrides: list[str], swept: list[str], flat: dict[str, Any]) -> tuple[dict, dict]:
    """A sweep parent's params and tags under its jobs' keys (`flat`: the sweep's config):
    what the jobs share as params, each swept key as sweep.<key> (its values or search
    space, so the jobs' own column holds numbers only), the COMPARED keys as tags. Presets
    and hydra.* settings are in the hydra.overrides tag only."""
    params, tags = {}, {}
    for key, value in map(parse_override, overrides):
        name = config_key(key)
        if key in swept:
            params[f"sweep.{name}"] = value
        elif name in COMPARED:
            tags[name] = flat.get(name, value)
        elif name in flat and not is_safe(name):
            params[name] = flat[name]
    return params, tags
