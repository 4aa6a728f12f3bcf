"""Bounded building blocks of the parameter models: finite numbers, bounded items, ordered ranges.

Every float a request can carry is finite and has both bounds, every list has a length bound and
bounded items, so the OpenAPI document states what the API accepts and nothing absurd (``1e999``
is infinity in standard JSON) reaches a worker. Cross-field rules are field validators where they
can be, so a failure names the field in ``loc``.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, ConfigDict, Field

# The config of every request model: unknown fields and non-finite floats are refused.
STRICT = ConfigDict(extra="forbid", allow_inf_nan=False)

LAYER_MAX = 200  # characters of a layer name
LayerItem = Annotated[str, Field(min_length=1, max_length=LAYER_MAX)]
Channel = Annotated[int, Field(ge=0, le=100_000)]
Weight = Annotated[float, Field(ge=0, le=1e6, allow_inf_nan=False)]


def num(lo: float, hi: float) -> Any:
    """A finite float in ``lo..hi``."""
    return Annotated[float, Field(ge=lo, le=hi, allow_inf_nan=False)]


def _ordered(v: tuple[float, float]) -> tuple[float, float]:
    if v[0] > v[1]:
        raise ValueError(f"a range (lo, hi) needs lo <= hi, got {tuple(v)}")
    return v


def ordered_range(lo: float, hi: float) -> Any:
    """``(lo, hi)``: two finite floats in ``lo..hi`` with the first at most the second."""
    item = num(lo, hi)
    return Annotated[tuple[item, item], AfterValidator(_ordered)]  # type: ignore[valid-type]


def check_weights(weights: list[float] | None, layers: list[str] | None, what: str) -> list[float] | None:
    """Per-layer weights, when both are given, need one weight per layer."""
    if weights is not None and layers is not None and len(weights) != len(layers):
        raise ValueError(f"{len(weights)} weights for {len(layers)} {what}: give one weight per layer")
    return weights


BOX_MAX = 100_000  # px: any side of an image the pixel limit admits in practice
Coord = Annotated[int, Field(ge=0, le=BOX_MAX)]


def _box_ordered(v: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = v
    if not (x0 < x1 and y0 < y1):
        raise ValueError(f"a box (x0, y0, x1, y1) needs x0 < x1 and y0 < y1, got {tuple(v)}")
    return v


Box = Annotated[tuple[Coord, Coord, Coord, Coord], AfterValidator(_box_ordered)]
