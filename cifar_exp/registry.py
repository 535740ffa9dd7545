"""The registry: one entry per option of each group, its schema and the project function that
builds it, stored in Hydra's ConfigStore typed by the group's base schema, so
`model=speed_net model.widths=[32,64,128]` is checked key by key and an unknown key is an
error. The same registry rebuilds a config read from a file (cifar_exp.stored), so a file
can only ever name one of these options, never code. Nothing here imports torch."""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from typing import Any, Callable, Optional, cast

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cifar_exp import checks
from cifar_exp import config as c
from cifar_exp import config_dataset as dataset
from cifar_exp import config_model as model
from cifar_exp import config_optim as optim
from cifar_exp.errors import UserError, reason
from cifar_exp.settings import HEADLINE, RESUME_SAFE, fields_with


@dataclass(frozen=True)
class Option:
    schema: type[Any]
    # "module:attribute" of the project function that builds it; None builds nothing
    build: Optional[str] = None

    @property
    def name(self) -> str:
        return str(self.schema.name)


def _options(*options: Option) -> dict[str, Option]:
    return {o.name: o for o in options}


REGISTRY: dict[str, dict[str, Option]] = {
    "dataset": _options(
        Option(dataset.Cifar10Config, "cifar_exp.data:load_torchvision"),
        Option(dataset.Cifar100Config, "cifar_exp.data:load_torchvision"),
        Option(dataset.ImageFolderConfig, "cifar_exp.data:load_image_folder"),
        Option(dataset.SyntheticConfig, "cifar_exp.data:load_synthetic"),
    ),
    "model": _options(
        Option(model.SimpleCNNConfig, "cifar_exp.models:SimpleCNN"),
        Option(model.TutorialNetConfig, "cifar_exp.models:TutorialNet"),
        Option(model.ResNet18Config, "cifar_exp.models:resnet18"),
        Option(model.SpeedNetConfig, "cifar_exp.models:SpeedNet"),
        Option(model.Airbench94Config, "cifar_exp.models:Airbench94Net"),
    ),
    "optimizer": _options(
        Option(optim.SGDConfig, "cifar_exp.optim:sgd"),
        Option(optim.AdamConfig, "cifar_exp.optim:adam"),
        Option(optim.AdamWConfig, "cifar_exp.optim:adamw"),
        Option(optim.MuonConfig, "cifar_exp.optim:muon"),
        Option(optim.RMSpropConfig, "cifar_exp.optim:rmsprop"),
    ),
    "scheduler": _options(
        Option(optim.ConstantConfig),
        Option(optim.CosineConfig, "cifar_exp.optim:cosine"),
        Option(optim.OneCycleConfig, "cifar_exp.optim:onecycle"),
        Option(optim.StepConfig, "cifar_exp.optim:step"),
        Option(optim.TriangleConfig, "cifar_exp.optim:triangle"),
    ),
    # the trainer's options are one schema with other defaults: nothing to build
    "trainer": _options(Option(c.TrainerConfig), Option(c.DeterministicTrainerConfig)),
}
BASES = {
    "dataset": dataset.DatasetConfig,
    "model": model.ModelConfig,
    "optimizer": optim.OptimizerConfig,
    "scheduler": optim.SchedulerConfig,
    "trainer": c.TrainerConfig,
}


def register(group: str, option: Option) -> None:
    """Add an option to a group: the registry entry and its Hydra group option."""
    if not issubclass(option.schema, BASES[group]):
        raise TypeError(f"{option.schema.__name__} must extend {BASES[group].__name__}")
    REGISTRY[group][option.name] = option
    ConfigStore.instance().store(group=group, name=option.name, node=option.schema)


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=c.Config)
    for group, options in REGISTRY.items():
        for entry in options.values():
            register(group, entry)


def keys_with(fact: str) -> tuple[str, ...]:
    """Every key whose schema field sets `fact` (settings.setting): the run's own keys, the
    mlflow and checkpoint groups', and any registered option's."""
    schemas: list[tuple[str, type]] = [("", c.Config), ("mlflow.", c.MlflowConfig), ("checkpoint.", c.CheckpointConfig)]
    schemas += [(f"{group}.", o.schema) for group, options in REGISTRY.items() for o in options.values()]
    return tuple(sorted({prefix + f.name for prefix, s in schemas for f in fields_with(s, fact)}))


def resume_safe_keys() -> tuple[str, ...]:
    """Every key a resume may change."""
    return keys_with(RESUME_SAFE)


def headline_keys() -> tuple[str, ...]:
    """The keys every run's record holds as params: each group's option and the fields
    marked headline."""
    return tuple(sorted({f"{group}.name" for group in REGISTRY} | set(keys_with(HEADLINE))))


def defaults(plain: dict) -> dict[str, Any]:
    """The flat values a config with the options of `plain` has when nothing else is set:
    each option's schema defaults, and the run's own keys'."""
    out = {f.name: f.default for f in dataclasses.fields(c.Config) if f.default is not dataclasses.MISSING}
    for group in REGISTRY:
        out.update(flatten(dataclasses.asdict(schema(group, plain[group]["name"])()), f"{group}."))
    return out


def option(group: str, name: Any) -> Option:
    try:
        return REGISTRY[group][name]
    except (KeyError, TypeError):
        raise UserError(
            f"{group}.name={name!r} is not a registered option; expected one of {', '.join(REGISTRY[group])}"
        ) from None


def schema(group: str, name: Any) -> type:
    return option(group, name).schema


def builds(group: str, node: Any) -> bool:
    """Whether the option `node` names builds anything (the constant schedule does not)."""
    return option(group, node.name).build is not None


def builder(group: str, node: Any) -> Callable[..., Any]:
    """The project function that builds the option `node` names."""
    target = option(group, node.name).build
    if target is None:
        raise TypeError(f"{group}={node.name} builds nothing")
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)


def flatten(cfg: DictConfig | dict, prefix: str = "") -> dict[str, Any]:
    """{'optimizer': {'lr': 0.1}} -> {'optimizer.lr': 0.1}; lists stay whole values."""
    items = checks.container(cfg) if isinstance(cfg, DictConfig) else cfg
    out: dict[str, Any] = {}
    for key, value in items.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def kwargs(node: Any) -> dict[str, Any]:
    """An option's keys (a schema object's, or a stored config node's) as plain keyword
    arguments, its `name` excluded."""
    typed = dataclasses.is_dataclass(node) and not isinstance(node, type)
    values = dataclasses.asdict(node) if typed else checks.container(node)
    return {k: v for k, v in values.items() if k != "name"}


def on_schemas(plain: dict, origin: str = "") -> DictConfig:
    """A plain config (resolved, as stored or composed) rebuilt on the registered schemas:
    every group must name a registered option and every key must belong to it, with its
    type. Anything else is a UserError naming the key."""
    prefix = f"{origin}: " if origin else ""
    base = OmegaConf.structured(c.Config)
    for group in c.Config.GROUPS[:5]:  # the groups chosen in the defaults list
        node = plain.get(group)
        name = node.get("name") if isinstance(node, dict) else None
        try:
            base[group] = OmegaConf.structured(schema(group, name))
        except UserError as e:
            raise UserError(f"{prefix}{e}") from None
    try:
        return cast(DictConfig, OmegaConf.merge(base, plain))
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        raise UserError(f"{prefix}config key {key} is invalid ({reason(e)})") from None
