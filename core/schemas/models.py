"""Answers of the model catalog routes and of ``predict``."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class LayerOut(BaseModel):
    name: str
    kind: str
    output_shape: list[int] | None
    spatial: bool


class ModelSummary(BaseModel):
    name: str
    arch: str
    description: str
    input_size: int
    num_labels: int
    default: bool
    loaded: bool


class ModelDetail(ModelSummary):
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    default_layer: str
    layers: list[LayerOut]
    labels: list[str]


class ModelList(BaseModel):
    models: list[ModelSummary]
    default: str


class PredictParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    top_k: int = Field(5, ge=1, le=100)
    resolution: int | None = Field(None, ge=32, le=1024)
    resize: Literal["stretch", "center-crop"] = "stretch"


class Prediction(BaseModel):
    index: int
    label: str
    probability: float
    logit: float


class ImagePredictions(BaseModel):
    index: int
    width: int
    height: int
    predictions: list[Prediction]


class PredictResponse(BaseModel):
    model: str
    input_size: tuple[int, int]
    images: list[ImagePredictions]
    timings: dict[str, float]
