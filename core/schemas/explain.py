"""Parameters and answers of ``POST /v1/models/{model}/explain/{method}``.

Every method has one parameter model: the shared fields of :class:`ExplainParams` plus its own,
derived from the engine's declaration (:attr:`cnnviz.attribution.Method.Params`), so a bound or a
default is written once. All are ``extra="forbid"`` and every number is bounded and finite, so a
typo or an absurd value is a 422.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StringConstraints,
    create_model,
    field_validator,
    model_validator,
)

from cnnviz.attribution import METHODS, Method
from cnnviz.params import NoParams, Params, field_specs
from cnnviz.precision import PRECISIONS
from cnnviz.render import COLORMAPS, DEFAULT_CLIP_PERCENTILE, MAP_KINDS
from core.schemas.bounds import BOX_MAX, Box, num

Colormap = Literal[COLORMAPS]  # type: ignore[valid-type]
PrecisionName = Literal[PRECISIONS]  # type: ignore[valid-type]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OutputOptions(Strict):
    """How maps come back: pictures rendered per kind of map, and (only when asked) the raw values.

    By default each method's map is drawn the way its kind reads best (:data:`cnnviz.render.DEFAULT_KIND`):
    ``positive`` maps (CAM family, Score-CAM, RISE) min-max scaled on ``jet`` and blended at 0.5;
    ``unsigned`` pixel maps (saliency, SmoothGrad, guided maps) as ``|value|`` clipped at the
    ``clip_percentile`` on ``hot``, laid over the photo in proportion to their magnitude; ``signed``
    maps (integrated gradients, input x gradient, occlusion) on the diverging ``seismic``, centred
    at zero. ``normalize`` brings back the old rendering (one scaling for every method, ``jet``,
    uniform blend) and is applied only when given. The raw values are never changed by any of this.
    """

    kind: Literal[MAP_KINDS] | None = Field(  # type: ignore[valid-type]
        None, description="how the map is rendered: positive | unsigned | signed | gradient_rgb (guided backprop, "
        "deconvnet); default: the method's kind (GET /v1/methods lists the kinds each method offers)")
    colormap: Colormap | None = Field(  # type: ignore[valid-type]
        None, description="default: the kind's (positive: jet, unsigned: hot, signed: seismic)")
    clip_percentile: float = Field(DEFAULT_CLIP_PERCENTILE, gt=0.0, le=100.0, allow_inf_nan=False,
                                   description="unsigned, signed and gradient_rgb maps are scaled by this "
                                   "percentile of |value| and clipped (100 = the maximum)")
    mode: Literal["blend", "outline"] = Field(
        "blend", description="overlay: the map blended over the photo, or the contour of its top region")
    outline_fraction: float = Field(0.25, gt=0.0, lt=1.0, allow_inf_nan=False,
                                    description="outline mode: the fraction of pixels the contour encloses")
    alpha: float | None = Field(None, ge=0.0, le=1.0, allow_inf_nan=False,
                                description="overlay opacity; default 0.5 for positive maps (uniform blend), 0.85 "
                                "at the strongest pixels of the others (opacity follows |value|)")
    normalize: Literal["minmax", "max", "signed", "none"] | None = Field(
        None, description="legacy rendering, only when given: the raw map scaled to [0,1] this way, coloured "
        "with colormap (default jet) and blended uniformly; overrides kind and clip_percentile")
    format: Literal["jpeg", "png", "webp"] = Field(
        "jpeg", description="encoding of heatmap, overlay and figure (media_type says which); png is lossless "
        "and about 5x larger")
    quality: int = Field(85, ge=1, le=100, description="jpeg / webp quality")
    figure: bool = Field(False, description="also a figure: the overlay under a title (method, class, "
                         "probability, layer) with a colour bar of raw values")
    inline: bool = Field(True, description="pictures as base64 in the answer; false: stored (needs the job "
                         "store) and linked by *_url, with the TTL and ownership of job artifacts")
    raw: bool = Field(False, description="include the raw map values at native resolution")
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


Point = tuple[num(0, BOX_MAX), num(0, BOX_MAX)]  # type: ignore[valid-type]


class RegionTargetParams(Strict):
    """A segmenter's class and region (Seg-Grad-CAM, Vinogradova et al. 2020): the class's logit summed over the
    region is explained. The region is the class's predicted mask (neither box nor polygon), a box, or a polygon,
    in the original image's pixels (the same region in every image of the request)."""

    target: int | None = Field(None, ge=0, le=100_000, description="class index; default: each image's top_k "
                               "classes with the most predicted pixels in the region (the background only when "
                               "nothing else is predicted there)")
    top_k: int = Field(1, ge=1, le=10, description="without target: how many classes per image, one forward")
    box: Box | None = Field(None, description="(x0, y0, x1, y1) in original pixels, x0 < x1, y0 < y1 (x1, y1 "
                            "exclusive), inside the image")
    polygon: list[Point] | None = Field(None, min_length=3, max_length=256,  # type: ignore[valid-type]
                                        description="3..256 (x, y) vertices in original pixels, inside the image; "
                                        "a pixel belongs to it when its centre is inside (even-odd rule)")

    @model_validator(mode="after")
    def _one_region(self) -> RegionTargetParams:
        if self.box is not None and self.polygon is not None:
            raise ValueError("give a box or a polygon, not both (neither: the class's predicted mask)")
        return self

    @property
    def source(self) -> Literal["predicted", "box", "polygon"]:
        return "box" if self.box is not None else "polygon" if self.polygon is not None else "predicted"


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
    box: Box | None = Field(None, description="(x0, y0, x1, y1) in original pixels, each 0..100000, x0 < x1, "
                            "y0 < y1 (x1, y1 exclusive)")
    tolerance: int = Field(15, ge=0, le=1000)


class ReferenceBox(Strict):
    """A box to explain that need not be a detection: a ground-truth box, or one from an earlier answer."""

    box: Box = Field(description="(x0, y0, x1, y1) in the original image's pixels, x0 < x1, y0 < y1")
    label: str | int = Field(description="its class: a label of the model, or a class index")

    @field_validator("label")
    @classmethod
    def _label(cls, v: str | int) -> str | int:
        if isinstance(v, int) and not 0 <= v <= 100_000:
            raise ValueError("a class index is 0..100000")
        if isinstance(v, str) and not 0 < len(v) <= 200:
            raise ValueError("a label has 1..200 characters")
        return v


class BoxTargetParams(Strict):
    """A detector's boxes to explain: detections of the same forward by rank, reference boxes, or the top k.

    Gradient and CAM methods score a box by the summed scores of the detections with its label whose
    IoU with it is at least ``iou_threshold``; black-box methods (drise, occlusion) by D-RISE's
    similarity (IoU x cosine of class-score vectors x objectness)."""

    index: list[Annotated[int, Field(ge=0, le=999)]] | None = Field(
        None, min_length=1, max_length=20, description="detections to explain by their rank in predict's answer "
        "(0 = the best), the same for every image")
    reference: list[ReferenceBox] | None = Field(None, min_length=1, max_length=20,
                                                 description="boxes with labels to explain, for every image")
    top_k: int = Field(1, ge=1, le=20, description="without index or reference: each image's k best detections")
    score_threshold: float = Field(0.0, ge=0.0, le=1.0, allow_inf_nan=False,
                                   description="top_k counts only detections scoring at least this")
    iou_threshold: float = Field(0.5, ge=0.05, le=0.95, allow_inf_nan=False,
                                 description="a detection matches the box at this IoU or more (gradient, CAM)")

    @model_validator(mode="after")
    def _one(self) -> BoxTargetParams:
        if self.index is not None and self.reference is not None:
            raise ValueError("give index or reference, not both")
        return self


class ExplainParams(Strict):
    """Parameters shared by every explanation method."""

    target: int | None = Field(None, ge=0, le=100_000, description="class index to explain (all images)")
    targets: list[list[int]] | None = Field(None, max_length=256,
                                            description="class indices per image, in image order")
    top_k: int = Field(1, ge=1, le=10, description="explain each image's k best classes")
    unit: UnitTargetParams | None = None
    region: RegionTargetParams | None = Field(None, description="a segmenter's class and region (class index, "
                                              "box or polygon): the class's logit summed over the region")
    box: BoxTargetParams | None = Field(None, description="a detector's boxes to explain (detection models)")
    layer: str | None = Field(None, max_length=200, description="target layer; default: last spatial layer")
    resolution: int | None = Field(None, ge=32, le=1024, description="network input side in px")
    resize: Literal["stretch", "center-crop"] | None = Field(None, description="default: the model's own "
                                                             "(stretch unless its models-file entry says otherwise)")
    output: OutputOptions = Field(default_factory=OutputOptions)
    localization: LocalizationParams | None = None
    faithfulness: FaithfulnessParams | None = None
    sanity: bool = Field(False, description="also the map of a copy of the network whose top stage (the "
                         "classifier) is re-initialized, and its similarity to the map (Spearman of |values|, "
                         "signed, SSIM): a method whose map barely changes does not explain the weights "
                         "(Adebayo et al. 2018). Class targets only; costs the method once more")
    precision: PrecisionName = Field(  # type: ignore[valid-type]
        "fp32", description="precision of the network's forward passes (torch.autocast): fp32 | bf16 | fp16. "
        "Offered where the hardware computes it natively (CPU: bf16 with AVX512-BF16 or AMX, fp16 with "
        "AVX512-FP16 or AMX-FP16; CUDA: fp16, and bf16 from compute capability 8.0); otherwise a 422 "
        "precision-unsupported listing the choices. Methods whose maps would not agree with fp32 (the gradient "
        "family except deconvnet, occlusion on the incremental engine) run fp32 and say so in warnings; the "
        "answer's precision says what ran")

    _image_sizes: tuple[tuple[int, int], ...] | None = PrivateAttr(None)
    """The decoded images' (height, width), set by the pipeline (:func:`core.explaining.run_explanation`) for a
    target kind that is ``sized``: a region's box or polygon and a reference box come in original pixels, the
    engine works in network-input pixels. Never part of a request."""

    def with_image_sizes(self, sizes: list[tuple[int, int]]) -> ExplainParams:
        """A copy that knows its images' original sizes."""
        copy = self.model_copy()
        copy._image_sizes = tuple((int(h), int(w)) for h, w in sizes)
        return copy

    @model_validator(mode="after")
    def _targets(self) -> ExplainParams:
        if sum(v is not None for v in (self.target, self.targets, self.unit, self.region, self.box)) > 1:
            raise ValueError("give at most one of target, targets, unit, region and box")
        if self.targets is not None:
            for row in self.targets:
                if not 1 <= len(row) <= 10 or any(not 0 <= t <= 100_000 for t in row):
                    raise ValueError("each targets row holds 1..10 class indices >= 0")
        return self

    def engine_params(self, method: Method) -> Params:
        """The method-specific fields as the engine's typed parameter set (checked again there)."""
        shared = set(CamExplainParams.model_fields)
        return method.Params(**{k: getattr(self, k) for k in type(self).model_fields if k not in shared})

    @property
    def sweep(self) -> list[str] | Literal["blocks"] | None:
        """The layers of a layer sweep (CAM family only), as asked; None for one layer."""
        return None


MAX_SWEEP_LAYERS = 16
SweepLayer = Annotated[str, StringConstraints(min_length=1, max_length=200)]


class CamExplainParams(ExplainParams):
    """The shared fields plus what the CAM family adds: a sweep over several layers."""

    layers: list[SweepLayer] | Literal["blocks"] | None = Field(
        None, description="explain several layers in one request (one forward, one backward per target): a "
        f"list of 1..{MAX_SWEEP_LAYERS} layer names, or \"blocks\" for the model's main stages (the last module "
        "of each run of equal output shape among its top-level modules and their children, ending at the default "
        "layer; docs/architecture.md). Each layer's map equals its lone request's; the answer carries them in "
        "each target's layers, and figure or Accept: image/png gives one captioned row of overlays")

    @model_validator(mode="after")
    def _one_or_many(self) -> CamExplainParams:
        if self.layers is not None and self.layer is not None:
            raise ValueError("give layer or layers, not both")
        if isinstance(self.layers, list) and not 1 <= len(self.layers) <= MAX_SWEEP_LAYERS:
            raise ValueError(f"layers holds 1..{MAX_SWEEP_LAYERS} layer names")
        return self

    @property
    def sweep(self) -> list[str] | Literal["blocks"] | None:
        return self.layers


def _engine_fields(params: type[Params]) -> dict[str, Any]:
    """Pydantic fields from an engine parameter set: same names, types, defaults and bounds."""
    out: dict[str, Any] = {}
    for name, hint, default, bounds, description in field_specs(params):
        limits = {k: getattr(bounds, k) for k in ("ge", "le", "gt", "lt", "max_length")
                  if getattr(bounds, k) is not None}
        if hint is float or float in get_args(hint):
            limits["allow_inf_nan"] = False
        out[name] = (hint, Field(default, description=description or None, **limits))
    return out


def _request_model(params: type[Params], base: type[ExplainParams]) -> type[ExplainParams]:
    """The request model of every method taking ``params``: the shared fields plus the engine's own."""
    if params is NoParams:
        return base
    name = params.__name__ if base is ExplainParams else f"Cam{params.__name__}"
    return create_model(name, __base__=base, __doc__=(params.__doc__ or "").strip() or None,
                        **_engine_fields(params))


def _base(method: Method) -> type[ExplainParams]:
    """The shared fields a method takes: the CAM family's (a layer sweep) where it sweeps layers."""
    return CamExplainParams if method.sweeps_layers else ExplainParams


_BY_PARAMS = {key: _request_model(*key) for key in {(m.Params, _base(m)) for m in METHODS.values()}}
# Method name -> its request model; methods without parameters of their own take ExplainParams
# (CamExplainParams in the CAM family).
METHOD_PARAMS: dict[str, type[ExplainParams]] = {name: _BY_PARAMS[m.Params, _base(m)] for name, m in METHODS.items()
                                                 if _BY_PARAMS[m.Params, _base(m)] is not ExplainParams}


def params_model(method: str) -> type[ExplainParams]:
    return METHOD_PARAMS.get(method, ExplainParams)


class ExplainJobParams(Strict):
    """An explanation run as a job (any method; what an inline explain over the budget is handed off to)."""

    method: str = Field(..., max_length=64, description="Any method of GET /v1/methods")
    explain: dict[str, Any] = Field(default_factory=dict, description="The method's explain parameters")



# ---- answers ---------------------------------------------------------------------------------


class TargetInfo(BaseModel):
    kind: Literal["class", "channel", "neuron", "region", "box"] = "class"
    index: int = Field(description="the class index, the channel, or (region, box) the target's class index")
    label: str | None = None
    score: float = Field(description="logit, unit value, (region) the class's logit summed over the region, or (box) "
                         "the detection's score (1 for a reference box)")
    probability: float | None = None
    box: tuple[float, float, float, float] | None = Field(None, description="the explained box, x0, y0, x1, y1 in "
                                                          "the original image's pixels")
    detection: int | None = Field(None, description="the box's rank among the detections (null: a reference box)")


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
    pointing_hit: bool | None = Field(None, description="whether the map's maximum lies in faithfulness.box (grown "
                                      "by tolerance) or else, for a region target, in the region, for a box target "
                                      "in the explained box (both grown by tolerance)")
    energy_in_region: float | None = Field(None, description="region targets: the share of the map's positive mass "
                                           "inside the region (energy-based pointing game, Wang et al. 2020)")
    energy_in_box: float | None = Field(None, description="box targets: the share of the map's positive mass inside "
                                        "faithfulness.box or else the explained box (energy-based pointing game)")


class Rendering(BaseModel):
    """How the pictures were drawn: display 0 is raw ``lo``, display 1 raw ``hi`` (``center`` is 0 for
    signed maps: the colormap's middle colour)."""

    kind: str | None = Field(None, description="positive | unsigned | signed | gradient_rgb; null with normalize")
    normalize: str | None = None
    colormap: str | None = None
    mode: str = "blend"
    lo: float
    hi: float
    center: float | None = None
    clip_percentile: float | None = None
    saturated: float = Field(0.0, description="fraction of values at or beyond the clipped ends")


class Completeness(BaseModel):
    """Integrated gradients' axiom, checked: the attributions sum to the score difference along the path."""

    attribution_sum: float
    score_difference: float
    relative_error: float
    steps: int = Field(..., description="path points of the final estimate")
    adaptive: bool = Field(..., description="whether adaptive quadrature chose the points")


class SanityAnswer(BaseModel):
    """The map of the network with its top stage randomized (``sanity: true``), beside the original."""

    stage: str = Field(..., description="the randomized stage's modules")
    spearman_abs: float = Field(..., description="Spearman rank correlation of |map| with the original")
    spearman: float = Field(..., description="of the signed maps")
    ssim: float = Field(..., description="SSIM of the |map|s, each scaled to [0, 1] by its maximum")
    similar: bool = Field(..., description="spearman_abs >= 0.5: the map barely depends on the classifier's weights")
    map: RawMap
    heatmap_png: str | None = Field(None, description="base64 heatmap of the randomized map, drawn as the original's")
    heatmap_url: str | None = None


class LayerExplanation(BaseModel):
    """One layer of a layer sweep: its map and pictures, drawn as a lone request's would be."""

    layer: str
    shape: tuple[int, int] = Field(..., description="the layer's grid (height, width): the map's resolution")
    map: RawMap
    rendering: Rendering | None = None
    heatmap_png: str | None = Field(None, description="base64, in the target's media_type")
    overlay_png: str | None = None
    heatmap_url: str | None = None
    overlay_url: str | None = None


class RegionInfo(BaseModel):
    """The region a region target explained, in the original image's pixels (its outline is drawn on the overlay)."""

    source: Literal["predicted", "box", "polygon"] = Field(..., description="the class's predicted mask, or the "
                                                           "request's box or polygon")
    box: tuple[int, int, int, int] | None = Field(..., description="bounding box (x0, y0, x1, y1), x1/y1 exclusive")
    area: int = Field(..., description="pixels of the region")
    fraction: float = Field(..., description="area over the image's pixels")
    predicted_fraction: float = Field(..., description="share of the region's pixels predicted as the class")


class TargetExplanation(BaseModel):
    target: TargetInfo
    region: RegionInfo | None = None
    map: RawMap
    rendering: Rendering | None = None
    media_type: str | None = Field(None, description="of heatmap, overlay and figure (output.format)")
    heatmap_png: str | None = Field(None, description="base64 heatmap, in media_type (the name predates formats)")
    overlay_png: str | None = Field(None, description="base64 overlay, in media_type")
    figure_png: str | None = Field(None, description="base64 figure (output.figure), in media_type")
    heatmap_url: str | None = Field(None, description="output.inline false: where the heatmap is stored")
    overlay_url: str | None = None
    figure_url: str | None = None
    regions: list[Region] | None = None
    faithfulness: Faithfulness | None = None
    completeness: Completeness | None = Field(None, description="integrated gradients: how close the map's sum "
                                              "is to score(x) - score(baseline)")
    sanity: SanityAnswer | None = Field(None, description="sanity: true: the top-stage randomization check")
    layers: list[LayerExplanation] | None = Field(
        None, description="a layer sweep (layers): every layer's map and pictures, in the order asked; the target's "
        "own map is then the last layer's, its figure the captioned row of all overlays")


class ImageExplanation(BaseModel):
    index: int
    width: int
    height: int
    explanations: list[TargetExplanation]


class Timings(BaseModel):
    """Where the time went; the parts add up to about ``total_ms``."""

    decode_ms: float
    preprocess_ms: float
    compute_ms: float = Field(..., description="the method itself")
    localization_ms: float = 0.0
    faithfulness_ms: float = 0.0
    render_ms: float = Field(..., description="drawing heatmaps, overlays and figures")
    encode_ms: float = Field(0.0, description="image encoding and base64 (or storing)")
    total_ms: float


class ExplainResponse(BaseModel):
    model: str
    method: str
    layer: str | None
    layers: list[str] | None = Field(None, description="a layer sweep: the layers explained, in order")
    input_size: tuple[int, int]
    images: list[ImageExplanation]
    warnings: list[str]
    precision: PrecisionName = Field(  # type: ignore[valid-type]
        "fp32", description="the precision the forward passes ran in: the one asked, or fp32 where the method "
        "declines it (warnings say why)")
    details: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="what the method reports about its run, for example occlusion's "
        "window, stride, windows and engine (incremental or full)")
    timings: Timings
