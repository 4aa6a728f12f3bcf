"""Parameters and answers of ``POST /v1/models/{model}/explain/{method}``.

Every method has one parameter model: the shared fields of :class:`ExplainParams` plus its own.
All are ``extra="forbid"`` and every number is bounded, so a typo or an absurd value is a 422.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cnnviz.render import COLORMAPS

Colormap = Literal[COLORMAPS]  # type: ignore[valid-type]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OutputOptions(Strict):
    """How maps come back."""

    colormap: Colormap = "jet"  # type: ignore[valid-type]
    alpha: float = Field(0.5, ge=0.0, le=1.0, description="overlay opacity of the heatmap")
    normalize: Literal["minmax", "max", "signed", "none"] = Field(
        "minmax", description="how the raw map is scaled to [0,1] before colouring")
    raw: bool = Field(True, description="include the raw map values at native resolution")
    raw_normalized: bool = Field(False, description="send the raw values normalized to [0,1] instead")
    heatmap: bool = True
    overlay: bool = True
    size: tuple[int, int] | None = Field(None, description="(width, height) of heatmap and overlay, each "
                                         "1..2048; default the original size (long side capped at 2048)")

    @model_validator(mode="after")
    def _bounds(self) -> OutputOptions:
        if self.size is not None and not all(1 <= s <= 2048 for s in self.size):
            raise ValueError("size must be two integers in 1..2048")
        return self


class UnitTargetParams(Strict):
    """An intermediate unit as the target (gradient methods): a channel, or one neuron of it."""

    layer: str = Field(..., min_length=1, max_length=200)
    channel: int = Field(..., ge=0, le=100_000)
    y: int | None = Field(None, ge=0, le=10_000)
    x: int | None = Field(None, ge=0, le=10_000)


class LocalizationParams(Strict):
    """Map -> mask -> contours -> boxes, optionally refined with a dense CRF on image colour."""

    method: Literal["fraction", "otsu"] = "fraction"
    fraction: float = Field(0.5, gt=0.0, lt=1.0)
    crf: bool = False
    crf_iterations: int = Field(5, ge=1, le=20)
    min_area_fraction: float = Field(0.001, ge=0.0, le=1.0)
    max_regions: int = Field(10, ge=1, le=100)


class FaithfulnessParams(Strict):
    """Deletion/insertion AUC and, with a box, the pointing game."""

    deletion_insertion: bool = True
    steps: int = Field(16, ge=2, le=128)
    box: tuple[int, int, int, int] | None = Field(None, description="(x0, y0, x1, y1) in original pixels")
    tolerance: int = Field(15, ge=0, le=1000)


class ExplainParams(Strict):
    """Parameters shared by every explanation method."""

    target: int | None = Field(None, ge=0, le=100_000, description="class index to explain (all images)")
    targets: list[list[int]] | None = Field(None, max_length=256,
                                            description="class indices per image, in image order")
    top_k: int = Field(1, ge=1, le=10, description="explain each image's k best classes")
    unit: UnitTargetParams | None = None
    layer: str | None = Field(None, max_length=200, description="target layer; default: last spatial layer")
    resolution: int | None = Field(None, ge=32, le=1024, description="network input side in px")
    resize: Literal["stretch", "center-crop"] = "stretch"
    output: OutputOptions = Field(default_factory=OutputOptions)
    localization: LocalizationParams | None = None
    faithfulness: FaithfulnessParams | None = None

    @model_validator(mode="after")
    def _targets(self) -> ExplainParams:
        if sum(v is not None for v in (self.target, self.targets, self.unit)) > 1:
            raise ValueError("give at most one of target, targets and unit")
        if self.targets is not None:
            for row in self.targets:
                if not 1 <= len(row) <= 10 or any(not 0 <= t <= 100_000 for t in row):
                    raise ValueError("each targets row holds 1..10 class indices >= 0")
        return self

    def engine_params(self) -> dict[str, object]:
        """The method-specific fields, as keyword arguments for the engine."""
        shared = set(ExplainParams.model_fields)
        out = {k: getattr(self, k) for k in type(self).model_fields if k not in shared}
        return {k: v for k, v in out.items() if v is not None}


class BatchedParams(ExplainParams):
    batch_size: int | None = Field(None, ge=1, le=512, description="masked, ablated or perturbed inputs per "
                                      "forward batch; default 4 on CPU, 64 on CUDA")


Reduce = Literal["abs-max", "sum", "abs-sum", "l2"]


class GradientParams(ExplainParams):
    reduce: Reduce | None = Field(None, description="how the 3 colour channels become one map; "
                                  "default abs-max (saliency, guided, deconvnet) or sum (x-gradient, IG)")


class IntegratedGradientsParams(GradientParams):
    steps: int = Field(32, ge=2, le=512)
    baseline: Literal["black", "mean", "blurred"] = "black"
    sigma: float = Field(10.0, ge=0.1, le=200.0, description="blur of the blurred baseline, px")
    integration: Literal["gauss-legendre", "trapezoid"] = "gauss-legendre"
    batch_size: int | None = Field(None, ge=1, le=512, description="default 4 on CPU, 64 on CUDA")


class SmoothGradParams(GradientParams):
    base: Literal["saliency", "guided_backprop", "deconvnet", "input_x_gradient", "integrated_gradients"] = "saliency"
    samples: int = Field(25, ge=1, le=256)
    noise: float = Field(0.15, ge=0.0, le=1.0, description="noise std as a fraction of the input range")
    seed: int = Field(0, ge=0, le=2**62)
    batch_size: int | None = Field(None, ge=1, le=512, description="default 4 on CPU, 64 on CUDA")
    steps: int = Field(32, ge=2, le=512, description="only for base=integrated_gradients")
    baseline: Literal["black", "mean", "blurred"] = "black"


class OcclusionParams(BatchedParams):
    window: int = Field(32, ge=1, le=224, description="square window side at network input, px")
    stride: int = Field(16, ge=1, le=224, description="at most the window")
    fill: Literal["mean", "zero", "blur"] = "mean"
    sigma: float = Field(10.0, ge=0.1, le=200.0)


class RiseParams(BatchedParams):
    masks: int = Field(2000, ge=1, le=8000)
    cell: int = Field(7, ge=2, le=32, description="grid cells per side before upsampling")
    p: float = Field(0.5, ge=0.05, le=0.95, description="probability a cell is kept")
    seed: int = Field(0, ge=0, le=2**62)
    score: Literal["probability", "logit"] = "probability"
    fill: Literal["mean", "zero", "blur"] = Field("zero", description="zero multiplies pixels by the mask, "
                                                  "as in the paper")


METHOD_PARAMS: dict[str, type[ExplainParams]] = {
    "scorecam": BatchedParams,
    "ablationcam": BatchedParams,
    "saliency": GradientParams,
    "guided_backprop": GradientParams,
    "deconvnet": GradientParams,
    "input_x_gradient": GradientParams,
    "guided_gradcam": GradientParams,
    "integrated_gradients": IntegratedGradientsParams,
    "smoothgrad": SmoothGradParams,
    "occlusion": OcclusionParams,
    "rise": RiseParams,
}


def params_model(method: str) -> type[ExplainParams]:
    return METHOD_PARAMS.get(method, ExplainParams)


# ---- answers ---------------------------------------------------------------------------------


class TargetInfo(BaseModel):
    kind: Literal["class", "channel", "neuron"] = "class"
    index: int
    label: str | None = None
    score: float
    probability: float | None = None


class RawMap(BaseModel):
    shape: tuple[int, int]
    min: float
    max: float
    values: list[list[float]] | None = None


class Region(BaseModel):
    box: tuple[int, int, int, int]
    area: int
    score: float
    peak: tuple[int, int]
    contour: list[tuple[float, float]]


class Faithfulness(BaseModel):
    deletion_auc: float | None = None
    insertion_auc: float | None = None
    deletion_curve: list[float] | None = None
    insertion_curve: list[float] | None = None
    pointing_hit: bool | None = None


class TargetExplanation(BaseModel):
    target: TargetInfo
    map: RawMap
    heatmap_png: str | None = None
    overlay_png: str | None = None
    regions: list[Region] | None = None
    faithfulness: Faithfulness | None = None


class ImageExplanation(BaseModel):
    index: int
    width: int
    height: int
    explanations: list[TargetExplanation]


class Timings(BaseModel):
    decode_ms: float
    preprocess_ms: float
    compute_ms: float
    render_ms: float
    total_ms: float


class ExplainResponse(BaseModel):
    model: str
    method: str
    layer: str | None
    input_size: tuple[int, int]
    images: list[ImageExplanation]
    warnings: list[str]
    timings: Timings
