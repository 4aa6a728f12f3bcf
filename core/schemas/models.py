"""Answers of the model catalog routes and of ``predict``."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from core.schemas.bounds import STRICT
from core.schemas.explain import RawMap

CompileState = Literal["off", "compiling", "ready", "failed"]
"""A model's compiled predict forward (core/compiled.py)."""
ForwardKind = Literal["compiled", "eager"]
"""Which forward a predict ran."""


class LayerOut(BaseModel):
    name: str
    kind: str
    output_shape: list[int] | None
    spatial: bool
    grid: Literal["chw", "nhwc", "tokens", "cl", "cdhw"] | None = Field(
        None, description="how the output is a spatial grid: a [C,h,w] map, a 1-D convnet's [C,l] (cl) or a "
        "3-D one's [C,d,h,w] (cdhw), channels last [h,w,C] (Swin), or "
        "patch tokens [P+h*w,C] after P prefix tokens (ViT); the CAM family uses any of them")
    usable_by: list[Literal["cam", "gradient", "perturbation"]] = Field(
        default_factory=list, description="method families that can use this layer: cam (as the target layer), "
        "gradient and perturbation (for unit targets)")


Task = Literal["classification", "multilabel", "detection", "segmentation"]
"""What the model's output is (the models file's ``task``; cnnviz/models/specs.py)."""


class ModelSummary(BaseModel):
    name: str
    task: Task = Field("classification", description="classification (softmax over classes), multilabel "
                       "(per-class sigmoid), detection (boxes, labels, scores) or segmentation (a class map)")
    arch: str
    description: str
    input_size: int
    num_labels: int
    default: bool
    loaded: bool
    input: Literal["image", "signal", "volume"] = Field("image", description="what the network takes (models file "
                                                        "`input`): upload images, signals or volumes accordingly")
    input_shape: list[int] = Field(default_factory=list, description="one input without the batch: [3, S, S], "
                                   "[C, L] or [C, D, H, W]")


class ModelDetail(ModelSummary):
    mean: tuple[float, ...] = Field(description="per channel (3 for an image model)")
    std: tuple[float, ...]
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
    ready: bool = Field(True, description="KServe V1 model readiness: the model is loaded and answers (the "
                        "fields name and ready are KServe's shape of this answer)")


class ModelList(BaseModel):
    models: list[ModelSummary]
    default: str


class PredictExplain(BaseModel):
    """A CAM-family map of each predicted class, from the forward pass that predicted it."""

    model_config = STRICT

    method: str = Field(..., max_length=64, description="a CAM-family method of GET /v1/methods (gradcam, "
                        "gradcampp, xgradcam, hirescam, layercam, eigencam, cam, scorecam, ablationcam)")
    layer: str | None = Field(None, max_length=200, description="target layer; default: the model's default layer")
    overlay: bool = Field(False, description="also each map blended over the image, as a base64 PNG")
    options: dict[str, Any] = Field(default_factory=dict, description="the method's own parameters (e.g. "
                                    "batch_size), checked by its explain request model")


class PredictParams(BaseModel):
    model_config = STRICT

    top_k: int | None = Field(None, ge=1, le=100, description="classes per image (default 5), or a detector's "
                              "highest-scoring boxes per image (default 100)")
    score_threshold: float = Field(0.0, ge=0.0, le=1.0, allow_inf_nan=False,
                                   description="a detector's boxes scoring below this are left out")
    resolution: int | None = Field(None, ge=32, le=1024)
    resize: Literal["stretch", "center-crop"] | None = Field(None, description="default: the model's own "
                                                             "(stretch unless its models-file entry says otherwise)")
    explain: PredictExplain | None = Field(None, description="also a map of each of the top_k classes (at most 10) "
                                           "from the same forward: one engine call instead of predict then explain")
    masks: bool = Field(False, description="a segmenter: also one mask PNG per predicted class")


class Prediction(BaseModel):
    index: int
    label: str
    probability: float
    logit: float


class PredictedMap(BaseModel):
    """The map of one predicted class: raw values at the layer's resolution, and the overlay when asked."""

    index: int
    map: RawMap
    overlay_png: str | None = None


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


class Detection(BaseModel):
    """One box of a detector, in the original image's pixels."""

    index: int = Field(description="its rank in the detector's output (what a box target's 'box' names)")
    box: tuple[float, float, float, float] = Field(description="x0, y0, x1, y1 in the original image's pixels")
    label: str
    class_index: int
    score: float


class ImagePredictions(BaseModel):
    index: int
    width: int
    height: int
    predictions: list[Prediction] = Field(default_factory=list, description="a classifier's top-k classes")
    maps: list[PredictedMap] | None = Field(None, description="with explain: one map per prediction, same order")
    detections: list[Detection] | None = Field(None, description="a detector's boxes, best first")
    segmentation: Segmentation | None = Field(None, description="a segmenter's label map and class areas")


class PredictResponse(BaseModel):
    model: str
    task: Task = "classification"
    warnings: list[str] = Field(default_factory=list)
    input_size: tuple[int, int]
    images: list[ImagePredictions]
    forward: ForwardKind = Field("eager", description="the forward pass that ran: the model's "
                                                 "compiled one (see GET /v1/models/{model}) or the eager module")
    timings: dict[str, float]
    method: str | None = Field(None, description="with explain: the method of the maps")
    layer: str | None = Field(None, description="with explain: the layer the maps were taken at")
