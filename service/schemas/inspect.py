"""Parameters and answers of ``POST /v1/models/{model}/inspect/{view}``."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from .explain import Colormap


class FiltersParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    layer: str | None = Field(None, max_length=200, description="a Conv2d; default the first one")
    scale: int = Field(8, ge=1, le=32, description="pixels per filter weight in the picture")
    per_filter: bool = Field(True, description="normalize each filter to its own range")
    max_filters: int = Field(256, ge=1, le=1024)


class ActivationsParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    layer: str | None = Field(None, max_length=200)
    top: int = Field(16, ge=1, le=256, description="the strongest channels to show")
    channels: list[int] | None = Field(None, max_length=256, description="these channels instead of the top ones")
    rank_by: Literal["mean", "max"] = "mean"
    colormap: Colormap = "viridis"  # type: ignore[valid-type]
    tile: int = Field(96, ge=8, le=512, description="side of each channel's tile, px")
    resolution: int | None = Field(None, ge=32, le=1024)
    values: bool = Field(False, description="include raw values of the selected channels")


class FiltersResponse(BaseModel):
    model: str
    layer: str
    shape: list[int]
    grid_png: str


class ChannelOut(BaseModel):
    channel: int
    mean: float
    max: float
    active_fraction: float
    values: list[list[float]] | None = None


class ActivationsResponse(BaseModel):
    model: str
    layer: str
    shape: list[int]
    channels: list[ChannelOut]
    grid_png: str
