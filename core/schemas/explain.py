"""Parameters and answers of ``POST /v1/models/{model}/explain/{method}``.

Every method has one parameter model: the shared fields of :class:`ExplainParams` plus its own,
derived from the engine's declaration (:attr:`cnnviz.attribution.Method.Params`), so a bound or a
default is written once. All are ``extra="forbid"`` and every number is bounded and finite, so a
typo or an absurd value is a 422.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from cnnviz.attribution import METHODS, Method
from cnnviz.params import NoParams, Params, field_specs
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

    def engine_params(self, method: Method) -> Params:
        """The method-specific fields as the engine's typed parameter set (checked again there)."""
        shared = set(ExplainParams.model_fields)
        return method.Params(**{k: getattr(self, k) for k in type(self).model_fields if k not in shared})


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


def _request_model(params: type[Params]) -> type[ExplainParams]:
    """The request model of every method taking ``params``: the shared fields plus the engine's own."""
    return create_model(params.__name__, __base__=ExplainParams, __doc__=(params.__doc__ or "").strip() or None,
                        **_engine_fields(params))


_BY_PARAMS = {cls: _request_model(cls) for cls in {m.Params for m in METHODS.values()} if cls is not NoParams}
# Method name -> its request model; methods without parameters of their own take ExplainParams.
METHOD_PARAMS: dict[str, type[ExplainParams]] = {name: _BY_PARAMS[m.Params] for name, m in METHODS.items()
                                                 if m.Params is not NoParams}


def params_model(method: str) -> type[ExplainParams]:
    return METHOD_PARAMS.get(method, ExplainParams)


class ExplainJobParams(Strict):
    method: str = Field(..., max_length=64, description="Any method of GET /v1/methods")
    explain: dict[str, Any] = Field(default_factory=dict, description="The method's explain parameters")



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
