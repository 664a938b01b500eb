"""Range checks for every configuration value, run before any work starts.

Each rule names what a field may hold; ``check`` walks a configuration (nested dataclasses) and
raises ``ConfigError`` with one line naming the field, the value and the allowed range. Rules live
beside the classes they check (``RULES``, keyed by class), and a test makes sure every numeric or
text field of a run's configuration has one, so a new setting cannot skip validation.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any


class ConfigError(ValueError):
    """A configuration value out of its range; the message names the field and what it accepts.
    ``field`` is the dotted path of the value when one field is at fault."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


Rule = Callable[[Any], str | None]  # None when the value is acceptable, else what is allowed


def integer(low: int | None = None, high: int | None = None) -> Rule:
    def rule(value: Any) -> str | None:
        ok = isinstance(value, int) and not isinstance(value, bool)
        ok = ok and (low is None or value >= low) and (high is None or value <= high)
        return None if ok else f"an integer{_range(low, high)}"

    return rule


def number(low: float | None = None, high: float | None = None, *, above: float | None = None) -> Rule:
    """A finite number in [low, high] (or > above)."""

    def rule(value: Any) -> str | None:
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        ok = ok and (low is None or value >= low) and (high is None or value <= high)
        ok = ok and (above is None or value > above)
        limits = f" > {above}" if above is not None else _range(low, high)
        return None if ok else f"a finite number{limits}"

    return rule


def choice(options: Iterable[Any]) -> Rule:
    """One of ``options``; a registry (a dict) is read when checking, so later entries count."""
    options = options if isinstance(options, Mapping) else tuple(options)

    def rule(value: Any) -> str | None:
        return None if value in options else f"one of {', '.join(map(str, options))}"

    return rule


def optional(inner: Rule) -> Rule:
    def rule(value: Any) -> str | None:
        return None if value is None else inner(value)

    return rule


def each(inner: Rule) -> Rule:
    """A non-empty sequence whose items all pass ``inner``."""

    def rule(value: Any) -> str | None:
        if not isinstance(value, tuple | list) or not value:
            return "a non-empty list"
        for item in value:
            wrong = inner(item)
            if wrong:
                return f"a non-empty list with each item {wrong} ({item!r} is not)"
        return None

    return rule


def anything(value: Any) -> None:
    """For fields whose value is checked where it is used (paths: their reader names the file)."""
    return None


def _range(low: float | None, high: float | None) -> str:
    if low is not None and high is not None:
        return f" in [{low}, {high}]"
    if low is not None:
        return f" >= {low}"
    if high is not None:
        return f" <= {high}"
    return ""


POSITIVE = integer(1)
NON_NEGATIVE = integer(0)
RATE = number(above=0.0)  # learning rates, step sizes
PROBABILITY = number(0.0, 1.0)

RULES: dict[type, dict[str, Rule]] = {}


def rules_for(cls: type, rules: dict[str, Rule]) -> None:
    """Register the rules of a configuration class (one call per class, beside its definition or here)."""
    RULES[cls] = rules


def check(config: Any, prefix: str = "") -> None:
    """Raise ConfigError for the first value out of range in ``config`` and the dataclasses it holds."""
    if not dataclasses.is_dataclass(config):
        return
    rules = RULES.get(type(config), {})
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        name = f"{prefix}{field.name}"
        if dataclasses.is_dataclass(value):
            check(value, f"{name}.")
            continue
        rule = rules.get(field.name)
        if rule is None:
            continue
        wrong = rule(value)
        if wrong:
            raise ConfigError(f"{name}={value!r} is out of range: it must be {wrong}", field=name)


def unchecked_fields(config: Any, prefix: str = "") -> list[str]:
    """Fields of ``config`` (recursively) that no rule covers: a test keeps this list empty."""
    if not dataclasses.is_dataclass(config):
        return []
    rules = RULES.get(type(config), {})
    missing = []
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(value):
            missing += unchecked_fields(value, f"{prefix}{field.name}.")
        elif field.name not in rules:
            missing.append(f"{prefix}{field.name}")
    return missing
