"""Typed, bounded parameters: the one place a method or engine function declares what it accepts.

A parameter set is a frozen dataclass whose fields are made with :func:`param`: a default, bounds
and a description. The engine reads typed attributes (``p.window``), never ``**params`` dicts,
and every instance checks itself when built (type, finiteness, bounds, choices), so a value that
slipped past the service still cannot reach a tensor. The service derives its request schemas
from the same fields (``core.params``), so a bound is written once and cannot drift.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TypeVar, get_args, get_origin

from .errors import EngineError

P = TypeVar("P", bound="Params")


@dataclass(frozen=True)
class Bounds:
    """Limits of one field: numeric (``ge``/``le``/``gt``/``lt``) or a length (``max_length``)."""

    ge: float | None = None
    le: float | None = None
    gt: float | None = None
    lt: float | None = None
    max_length: int | None = None

    def check(self, name: str, value: Any) -> None:
        if isinstance(value, list | tuple):
            if self.max_length is not None and len(value) > self.max_length:
                raise EngineError("bad-parameter", f"{name} holds at most {self.max_length} items, got {len(value)}")
            return
        if isinstance(value, str):
            if self.max_length is not None and len(value) > self.max_length:
                raise EngineError("bad-parameter", f"{name} is at most {self.max_length} characters")
            return
        for limit, ok, word in ((self.ge, lambda v, b: v >= b, ">="), (self.le, lambda v, b: v <= b, "<="),
                                (self.gt, lambda v, b: v > b, ">"), (self.lt, lambda v, b: v < b, "<")):
            if limit is not None and not ok(value, limit):
                raise EngineError("bad-parameter", f"{name} must be {word} {limit:g}, got {value!r}")


def param(default: Any, *, ge: float | None = None, le: float | None = None, gt: float | None = None,
          lt: float | None = None, max_length: int | None = None, description: str = "") -> Any:
    """A dataclass field with its bounds and description (read by validation and by the schemas)."""
    bounds = Bounds(ge, le, gt, lt, max_length)
    return dataclasses.field(default=default, metadata={"bounds": bounds, "description": description})


def _hints(cls: type) -> dict[str, Any]:
    cache = cls.__dict__.get("_hints_cache")
    if cache is None:
        cache = typing.get_type_hints(cls)
        type.__setattr__(cls, "_hints_cache", cache)
    return cache


def _check_type(name: str, value: Any, hint: Any) -> None:
    origin = get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in get_args(hint):
            return
        arms = [a for a in get_args(hint) if a is not type(None)]
        errors = []
        for arm in arms:
            try:
                _check_type(name, value, arm)
                return
            except EngineError as exc:
                errors.append(str(exc))
        raise EngineError("bad-parameter", errors[0] if errors else f"{name}: bad value {value!r}")
    if origin is Literal:
        choices = list(get_args(hint))
        if value not in choices:
            raise EngineError("bad-parameter", f"{name} must be one of {choices}, got {value!r}", choices)
        return
    if origin in (tuple, list):
        if not isinstance(value, list | tuple):
            raise EngineError("bad-parameter", f"{name} must be a list, got {value!r}")
        args = [a for a in get_args(hint) if a is not Ellipsis]
        for v in value:
            _check_type(name, v, args[0] if args else Any)
        return
    if hint is bool:
        if not isinstance(value, bool):
            raise EngineError("bad-parameter", f"{name} must be true or false, got {value!r}")
    elif hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise EngineError("bad-parameter", f"{name} must be an integer, got {value!r}")
    elif hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise EngineError("bad-parameter", f"{name} must be a finite number, got {value!r}")
    elif hint is str and not isinstance(value, str):
        raise EngineError("bad-parameter", f"{name} must be a string, got {value!r}")


@dataclass(frozen=True)
class Params:
    """Base of every parameter set; validates each field against its type hint and bounds."""

    title: ClassVar[str] = ""

    def __post_init__(self) -> None:
        hints = _hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            _check_type(f.name, value, hints[f.name])
            bounds: Bounds | None = f.metadata.get("bounds")
            if bounds is not None and value is not None:
                bounds.check(f.name, value)

    @classmethod
    def build(cls: type[P], given: Params | None = None, **kwargs: Any) -> P:
        """An instance from a typed value, or from keyword arguments (captum-style calls).

        Unknown names are refused, as the service refuses them: a typo must not silently fall
        back to a default.
        """
        if given is not None:
            if not isinstance(given, cls):
                raise EngineError("bad-parameter", f"expected {cls.__name__}, got {type(given).__name__}")
            return given.replace(**kwargs) if kwargs else given
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise EngineError("bad-parameter", f"unknown parameter(s) {unknown}; this method takes {sorted(names)}",
                              sorted(names))
        return cls(**kwargs)

    def replace(self: P, **changes: Any) -> P:
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


@dataclass(frozen=True)
class NoParams(Params):
    """For methods with nothing to set beyond the shared target and layer."""


def field_specs(cls: type[Params]) -> list[tuple[str, Any, Any, Bounds, str]]:
    """``(name, type hint, default, bounds, description)`` of every field, for schema derivation."""
    hints = _hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        out.append((f.name, hints[f.name], f.default, f.metadata.get("bounds") or Bounds(),
                    f.metadata.get("description", "")))
    return out
