"""Parameters and answers of ``POST /v1/models/{model}/inspect/{view}``."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field, model_validator

from core.schemas.bounds import STRICT, Channel, num
from core.schemas.explain import Colormap
from core.schemas.training import NAME_PATTERN

Shift = Annotated[int, Field(ge=-512, le=512)]
Scale = num(0.1, 4.0)
Rotation = num(-360.0, 360.0)


class FiltersParams(BaseModel):
    model_config = STRICT

    layer: str | None = Field(None, max_length=200, description="a Conv2d; default the first one")
    scale: int = Field(8, ge=1, le=32, description="pixels per filter weight in the picture")
    per_filter: bool = Field(True, description="normalize each filter to its own range")
    max_filters: int = Field(256, ge=1, le=1024)


class ActivationsParams(BaseModel):
    model_config = STRICT

    layer: str | None = Field(None, max_length=200)
    top: int = Field(16, ge=1, le=256, description="the strongest channels to show")
    channels: list[Channel] | None = Field(None, max_length=256, description="these channels instead of the top ones")
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


class EmbedParams(BaseModel):
    model_config = STRICT

    layer: str | None = Field(None, max_length=200, description="default: the model's default layer")
    pool: Literal["avg", "max"] = "avg"
    resolution: int | None = Field(None, ge=32, le=1024)
    head: str | None = Field(None, pattern=NAME_PATTERN, description="a trained embedding head "
                             "(GET /v1/embedders): its layer, input size and head instead of the raw features")

    @model_validator(mode="after")
    def _head_alone(self) -> EmbedParams:
        if self.head is not None and (self.layer is not None or self.pool != "avg"):
            raise ValueError("a head brings its own layer and pooling; do not give layer or pool with it")
        return self


class VerifyParams(EmbedParams):
    threshold: float | None = Field(None, ge=0.0, le=2.0, description="same when the distance is under this; "
                                    "default the head's calibrated threshold, else 0.9")
    metric: Literal["euclidean", "cosine"] = "euclidean"
    verifier: str | None = Field(None, pattern=NAME_PATTERN, description="a trained verification head (GET "
                                 "/v1/verifiers): the answer's probability is its sigmoid unit on the two embeddings "
                                 "of its layer, and same is probability >= 0.5")

    @model_validator(mode="after")
    def _verifier_alone(self) -> VerifyParams:
        if self.verifier is not None and (self.head is not None or self.layer is not None or self.pool != "avg"
                                          or self.threshold is not None or self.resolution is not None):
            raise ValueError("a verifier brings its own layer, size and decision; give none of head, layer, pool, "
                             "resolution or threshold with it")
        return self


class InvarianceParams(BaseModel):
    model_config = STRICT

    layer: str | None = Field(None, max_length=200)
    shifts: list[Shift] = Field([0, 4, 8, 16, 32, 48, 64], max_length=32, description="px, each -512..512")
    scales: list[Scale] = Field([0.5, 0.7, 0.85, 1.0, 1.2, 1.4, 1.7], max_length=32, description="each 0.1..4")
    rotations: list[Rotation] = Field([0, 5, 10, 20, 45, 90, 180], max_length=32,
                                      description="degrees, each -360..360")
    shift_axis: Literal["x", "y"] = "y"
    resolution: int | None = Field(None, ge=32, le=512)


class EmbedResponse(BaseModel):
    model: str
    layer: str
    head: str | None = None
    dim: int
    embeddings: list[list[float]]


class VerifyResponse(BaseModel):
    model: str
    layer: str
    head: str | None = None
    verifier: str | None = None
    metric: str
    distance: float
    threshold: float
    same: bool = Field(..., description="distance under threshold; with a verifier, probability >= 0.5")
    probability: float | None = Field(None, description="with a verifier: its probability that the two are the same")


class InvarianceResponse(BaseModel):
    model: str
    curves: dict
    plot_png: str
