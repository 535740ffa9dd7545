"""Per-key facts, kept on the schema field itself: the values a key takes, whether a resume
may change it, and the per-step metrics it adds when on. One generic check reads the
values (`check_values`, for every schema); resume.py and the metric catalogue derive their
lists from the rest. A new key is its field, with these facts, and its use.

    max_steps: int = setting(0, AtLeast(0), resume_safe=False)

Nothing here imports torch."""

from __future__ import annotations

import copy
import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

from cifar_exp.checks import require


class Rule:
    """The values a key takes: `ok(value)`, and `said()`, how a refusal names them."""

    def ok(self, value: Any) -> bool:
        raise NotImplementedError

    def said(self) -> str:
        raise NotImplementedError


@dataclass(frozen=True)
class AtLeast(Rule):
    """Counts and periods: an integer >= minimum (0 meaning off, where 0 is allowed)."""

    minimum: int

    def ok(self, value: Any) -> bool:
        return value >= self.minimum

    def said(self) -> str:
        return f"an integer >= {self.minimum}" + (" (0: off)" if self.minimum == 0 else "")


@dataclass(frozen=True)
class InUnit(Rule):
    """Shares and decays: a float in [0, 1)."""

    def ok(self, value: Any) -> bool:
        return 0 <= value < 1

    def said(self) -> str:
        return "a float in [0, 1)"


@dataclass(frozen=True)
class NonNegative(Rule):
    """Strengths and thresholds: a float >= 0, 0 meaning off."""

    def ok(self, value: Any) -> bool:
        return value >= 0

    def said(self) -> str:
        return "a float >= 0 (0: off)"


@dataclass(frozen=True)
class Positive(Rule):
    """Periods in seconds: a float > 0."""

    def ok(self, value: Any) -> bool:
        return value > 0

    def said(self) -> str:
        return "a float > 0"


@dataclass(frozen=True)
class Within(Rule):
    """Rates, factors and fractions: a float in an interval, each end open or closed (an
    infinite upper end: a lower bound only)."""

    low: float
    high: float = float("inf")
    low_closed: bool = True
    high_closed: bool = False

    def ok(self, value: Any) -> bool:
        above = value >= self.low if self.low_closed else value > self.low
        below = value <= self.high if self.high_closed else value < self.high
        return above and below

    def said(self) -> str:
        if self.high == float("inf"):
            return f"a float {'>=' if self.low_closed else '>'} {self.low:g}"
        ends = ("[" if self.low_closed else "(", "]" if self.high_closed else ")")
        return f"a float in {ends[0]}{self.low:g}, {self.high:g}{ends[1]}"


@dataclass(frozen=True)
class InRange(Rule):
    """An integer in [low, high)."""

    low: int
    high: int

    def ok(self, value: Any) -> bool:
        return self.low <= value < self.high

    def said(self) -> str:
        return f"an integer in [{self.low}, {self.high})"


@dataclass(frozen=True)
class OneOf(Rule):
    """A word from a fixed list (compared lower-case: `amp=True` reads as true)."""

    choices: tuple[str, ...]

    def ok(self, value: Any) -> bool:
        return str(value).lower() in self.choices

    def said(self) -> str:
        *first, last = self.choices
        return f"{', '.join(first)} or {last}" if first else last


@dataclass(frozen=True)
class Matches(Rule):
    """A string of a given form, `described` for the reader."""

    pattern: str
    described: str

    def ok(self, value: Any) -> bool:
        return re.fullmatch(self.pattern, str(value)) is not None

    def said(self) -> str:
        return self.described


@dataclass(frozen=True)
class Free(Rule):
    """Any value of the field's type: said outright, so that no key is without a rule by
    oversight (a test walks every field)."""

    def ok(self, value: Any) -> bool:
        return True

    def said(self) -> str:
        return "any value"


RULE, RESUME_SAFE, STEP_METRICS = "cifar_exp.rule", "cifar_exp.resume_safe", "cifar_exp.step_metrics"
HEADLINE = "cifar_exp.headline"


def setting(
    default: Any,
    rule: Optional[Rule] = None,
    *,
    resume_safe: bool = False,
    step_metrics: tuple[str, ...] = (),
    headline: bool = False,
) -> Any:
    """A schema field with its facts: `rule` (the values it takes; a bool needs none, its
    type says it), `resume_safe` (a resume may change it: it changes how a run is observed
    or how long it lasts, not what it computes), `step_metrics` (the per-step metrics it
    adds while its value is truthy) and `headline` (a param of every run's MLflow record,
    so runs compare on it even where it has its default; other keys are params where a run
    sets them)."""
    metadata = {RULE: rule, RESUME_SAFE: resume_safe, STEP_METRICS: step_metrics, HEADLINE: headline}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def check_values(schema: Any, at: str) -> None:
    """Every key of `schema` against its rule: one line naming the first key refused."""
    for f in dataclasses.fields(schema):
        rule = f.metadata.get(RULE)
        value = getattr(schema, f.name)
        if rule is not None and value is not None:
            require(rule.ok(value), f"{at}.{f.name}" if at else f.name, rule.said(), value)


def fields_with(schema: type, fact: str) -> Iterator[dataclasses.Field]:
    """The fields of `schema` whose metadata sets `fact`."""
    return (f for f in dataclasses.fields(schema) if f.metadata.get(fact))


def step_metrics(schema: type, values: Any) -> list[str]:
    """The per-step metrics the keys of `schema` add with these `values` (a schema object
    or a config node of it)."""
    on = [f for f in fields_with(schema, STEP_METRICS) if getattr(values, f.name)]
    return [metric for f in on for metric in f.metadata[STEP_METRICS]]
