"""The ``evaluate`` job: which explanation method can be trusted on a labelled collection.

Parameters name the collection, the methods (each with its own explain parameters), how the
collection's labels map to the model's classes, and the metric settings; every number is bounded.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from core.schemas.bounds import STRICT, LayerItem
from core.schemas.collections import Label

ClassName = Annotated[str, Field(min_length=1, max_length=200)]
ClassIndex = Annotated[int, Field(ge=0, le=100_000)]

EVALUATE_FIELDS = ("layer", "precision")
"""Shared explain fields a method entry may carry besides the method's own parameters."""


class MethodEntry(BaseModel):
    """One method to evaluate, with its parameters (as ``POST .../explain/{method}`` takes them)."""

    model_config = STRICT

    method: str = Field(..., min_length=1, max_length=64, description="any method of GET /v1/methods")
    params: dict[str, Any] = Field(default_factory=dict, description="the method's own parameters, and layer "
                                   "or precision; targets, output and the rest are the evaluation's")
    name: str | None = Field(None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:+-]+$",
                             description="how the report names it (default: the method; needed when a method "
                             "is evaluated twice with different parameters)")


class EvaluateParams(BaseModel):
    """Evaluate explanation methods on a labelled collection (faithfulness, pointing, randomization, cost)."""

    model_config = STRICT

    collection: str = Field(..., min_length=1, max_length=64, pattern=r"^[a-f0-9]+$",
                            description="a collection uploaded with labels (and optionally boxes)")
    methods: list[MethodEntry] = Field(..., min_length=1, max_length=8)
    classes: dict[Label, ClassName | ClassIndex] | None = Field(
        None, max_length=1000, description="collection label -> the model's class (its label or index); a label "
        "not listed must be a class label of the model (or a class index)")
    size: int | None = Field(None, ge=32, le=512, description="network input side in px (default the model's); "
                             "images are stretched to it, so maps and boxes cover the whole photo")
    steps: int = Field(16, ge=2, le=64, description="deletion / insertion: equal steps from none to all pixels")
    tolerance: int = Field(15, ge=0, le=1000, description="pointing game: px a box is grown by")
    randomization: Literal["both", "cascading", "independent", "none"] = "both"
    stages: list[LayerItem] | None = Field(None, min_length=1, max_length=64, description="modules randomized as "
                                           "one stage each (default: the network's main stages)")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="random weights and the random pixel order")
    flag_threshold: float = Field(0.5, ge=0.0, le=1.0, allow_inf_nan=False, description="flag a method whose "
                                  "Spearman correlation of |map| to the original, averaged over images and the "
                                  "cascading randomization steps, is at least this")
    grid_image: int = Field(0, ge=0, le=999, description="the image the cascading-randomization grid shows")
    batch_size: int = Field(32, ge=1, le=256, description="inputs per forward of the deletion / insertion steps")
