"""Answers of the model catalog routes and of ``predict``."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from core.schemas.bounds import STRICT

CompileState = Literal["off", "compiling", "ready", "failed"]
"""A model's compiled predict forward (core/compiled.py)."""
ForwardKind = Literal["compiled", "eager"]
"""Which forward a predict ran."""


class LayerOut(BaseModel):
    name: str
    kind: str
    output_shape: list[int] | None
    spatial: bool
    grid: Literal["chw", "nhwc", "tokens"] | None = Field(
        None, description="how the output is a spatial grid: a [C,h,w] map, channels last [h,w,C] (Swin), or "
        "patch tokens [P+h*w,C] after P prefix tokens (ViT); the CAM family uses any of them")
    usable_by: list[Literal["cam", "gradient", "perturbation"]] = Field(
        default_factory=list, description="method families that can use this layer: cam (as the target layer), "
        "gradient and perturbation (for unit targets)")


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
    default_layer: str | None = Field(description="the CAM family's default target layer; null where the model "
                                      "exposes no layer outputs (a TorchScript archive)")
    layers: list[LayerOut]
    labels: list[str]
    head: Literal["softmax", "sigmoid"] = "softmax"
    gradients: bool = Field(True, description="false: only gradient-free methods answer")
    methods: list[str] = Field(default_factory=list, description="explanation methods available for this model")
    compiled: CompileState = Field(
        "off", description="the compiled forward of predict and the CAM family at the default layer (images "
                           "at the input size): off, compiling in the background, ready, or failed (they stay eager)")
    compiled_reason: str = Field("", description="why it is in that state")


class ModelList(BaseModel):
    models: list[ModelSummary]
    default: str


class PredictParams(BaseModel):
    model_config = STRICT

    top_k: int = Field(5, ge=1, le=100)
    resolution: int | None = Field(None, ge=32, le=1024)
    resize: Literal["stretch", "center-crop"] | None = Field(None, description="default: the model's own "
                                                             "(stretch unless its models-file entry says otherwise)")
    masks: bool = Field(False, description="a segmenter: also one mask PNG per predicted class")


class Prediction(BaseModel):
    index: int
    label: str
    probability: float
    logit: float


class ClassArea(BaseModel):
    """How much of the image a segmenter gives one class."""

    index: int
    label: str
    pixels: int = Field(..., description="pixels of the original image predicted as the class")
    fraction: float = Field(..., description="pixels over the image's pixels")


class ClassMask(BaseModel):
    index: int
    label: str
    mask_png: str = Field(..., description="base64 1-bit PNG at the original size: white where the class is predicted")


class Segmentation(BaseModel):
    """A segmenter's answer for one image, at the original image's size."""

    label_map_png: str = Field(..., description="base64 PNG of each pixel's class: a palette PNG whose pixel values "
                               "are the class indices (PASCAL VOC's colours), 16-bit grey above 256 classes")
    classes: list[ClassArea] = Field(..., description="every predicted class, largest area first")
    masks: list[ClassMask] | None = Field(None, description="with masks: true, one mask per predicted class")


class ImagePredictions(BaseModel):
    index: int
    width: int
    height: int
    predictions: list[Prediction]
    segmentation: Segmentation | None = Field(None, description="a segmenter's label map and class areas")


class PredictResponse(BaseModel):
    model: str
    input_size: tuple[int, int]
    images: list[ImagePredictions]
    forward: ForwardKind = Field("eager", description="the forward pass that ran: the model's "
                                                 "compiled one (see GET /v1/models/{model}) or the eager module")
    timings: dict[str, float]
