"""Per-key facts on the schema fields: every key says the values it takes, and the bad-value
tests are generated from the fields themselves, so a key added without its rule fails here."""

from __future__ import annotations

import copy
import dataclasses
import functools

import pytest
from omegaconf import OmegaConf

from cifar_exp import metrics, settings
from cifar_exp.config import CheckpointConfig, Config, MlflowConfig, TrainerConfig
from cifar_exp.errors import UserError
from cifar_exp.registry import REGISTRY
from cifar_exp.resume import RESUME_SAFE
from cifar_exp.validation import validate

from helpers import compose_cfg

# the schemas whose keys all carry their facts, under the prefix they sit at
SCHEMAS = [("", Config), ("trainer.", TrainerConfig), ("mlflow.", MlflowConfig), ("checkpoint.", CheckpointConfig)]
# ... and every registered option of these groups, chosen by its own override
GROUPS = ("dataset", "model", "optimizer", "scheduler")


def _schemas():
    """(key prefix, schema, the overrides that choose it)."""
    yield from ((prefix, schema, []) for prefix, schema in SCHEMAS)
    for group in GROUPS:
        for name, option in REGISTRY[group].items():
            yield f"{group}.", option.schema, [f"{group}={name}"]


def _keys():
    """(key, field, overrides) of every key but the bools (their type says their values)
    and an option's name (the group's choice, not a value)."""
    for prefix, schema, chosen in _schemas():
        for f in dataclasses.fields(schema):
            if f.name not in Config.GROUPS and f.type not in ("bool", bool) and not (chosen and f.name == "name"):
                yield prefix + f.name, f, chosen


KEYS = [(key, f) for key, f, _ in _keys()]


@pytest.mark.parametrize("key, field", KEYS, ids=[f"{key}:{f.name}" for key, f in KEYS])
def test_every_key_says_the_values_it_takes(key, field):
    assert isinstance(field.metadata.get(settings.RULE), settings.Rule), (
        f"{key} has no rule: give it one with settings.setting(default, rule) (Free() for any value)"
    )


def _bad(rule: settings.Rule) -> list:
    """Values just outside what `rule` allows."""
    return {
        settings.AtLeast: lambda r: [r.minimum - 1],
        settings.InUnit: lambda r: [-0.1, 1.0],
        settings.NonNegative: lambda r: [-1.0],
        settings.Positive: lambda r: [0.0],
        settings.InRange: lambda r: [r.low - 1, r.high],
        settings.Within: lambda r: (
            [r.low - 0.1 if r.low_closed else r.low]
            + ([r.high + 0.1 if r.high_closed else r.high] if r.high != float("inf") else [])
        ),
        settings.OneOf: lambda r: ["sideways"],
        settings.Matches: lambda r: [" "],
        settings.Free: lambda r: [],
    }[type(rule)](rule)


@functools.cache
def _composed(chosen: tuple[str, ...]):
    """One composition per option (Hydra's compose is the slow part), copied per case."""
    return compose_cfg("dataset=synthetic", *chosen)


BAD = [(key, value, chosen) for key, f, chosen in _keys() for value in _bad(f.metadata[settings.RULE])]


@pytest.mark.parametrize("key, value, chosen", BAD, ids=[" ".join([*c, f"{k}={v}"]) for k, v, c in BAD])
def test_a_value_outside_a_key_s_rule_is_refused_naming_the_key(key, value, chosen):
    cfg = copy.deepcopy(_composed(tuple(chosen)))
    OmegaConf.update(cfg, key, value)
    with pytest.raises(UserError, match=f"^{key}={value!r} is invalid: must be "):
        validate(cfg)


def test_the_keys_a_resume_may_change_are_the_fields_marked_so():
    marked = {prefix + f.name for prefix, schema in SCHEMAS for f in settings.fields_with(schema, settings.RESUME_SAFE)}
    assert marked <= set(RESUME_SAFE)
    assert {"trainer.device", "epochs", "mlflow.tracking_uri", "dataset.root"} <= set(RESUME_SAFE)
    assert not {"trainer.max_steps", "seed", "trainer.accumulate_grad_batches"} & set(RESUME_SAFE)


def test_a_key_s_step_metrics_join_the_catalogue_while_it_is_on():
    off = metrics.catalogue(compose_cfg("dataset=synthetic"), None)
    on = metrics.catalogue(compose_cfg("dataset=synthetic", "trainer.gradient_clip_val=1.0"), None)
    assert "train/grad_norm" not in off and on["train/grad_norm"].per_epoch is False


@pytest.mark.parametrize(
    "overrides, logged",
    [([], False), (["scheduler=cosine"], True), (["scheduler.warmup_epochs=0.5"], True)],
)
def test_the_lr_is_a_curve_only_where_it_changes(overrides, logged):
    """A constant lr drew as a flat line on a -0.5..1 axis: it is the optimizer.lr param."""
    assert ("lr" in metrics.catalogue(compose_cfg("dataset=synthetic", *overrides), None)) is logged
