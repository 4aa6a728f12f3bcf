"""Typed answers of the cnnviz API, as plain dataclasses.

They are built from the JSON the service sends, tolerating members this version does not know
(every result keeps the whole document in ``raw``), so a newer server does not break an older
client. Nothing here needs numpy or PIL: maps are nested lists of floats and images are the PNG
bytes decoded from base64; ``to_numpy()`` / ``to_pil()`` helpers import those lazily.
"""

from __future__ import annotations

import base64
import io
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

from ._saving import save_picture, write_bytes

__all__ = [
    "Artifact", "ArtifactLink", "Collection", "Event", "ExplainResult", "Explanation", "IdentifyResult",
    "ImageExplanation", "ImagePredictions", "InspectResult", "JobError", "JobProgress", "JobStatus", "Layer",
    "MethodInfo", "MethodList", "ModelDetail", "ModelSummary", "Prediction", "PredictResult", "RawMap",
    "Segmentation", "StyleResult", "Target", "TrainedInfo", "Detection", "region",
]


def region(target: int | None = None, *, box: tuple[int, int, int, int] | None = None,
           polygon: list[tuple[float, float]] | None = None, top_k: int | None = None) -> dict[str, Any]:
    """A segmenter's region target for ``explain(..., region=region(1, box=(10, 10, 40, 40)))``.

    ``target`` is the class index (None: the ``top_k`` classes with the most predicted pixels in the region);
    the region is the class's predicted mask, or ``box`` (x0, y0, x1, y1) or ``polygon`` [(x, y), ...] in the
    original image's pixels. The explained score is the class's logit summed over the region (Seg-Grad-CAM).
    """
    out: dict[str, Any] = {}
    if target is not None:
        out["target"] = int(target)
    if top_k is not None:
        out["top_k"] = int(top_k)
    if box is not None:
        out["box"] = [int(v) for v in box]
    if polygon is not None:
        out["polygon"] = [[float(x), float(y)] for x, y in polygon]
    return out

T = TypeVar("T")
TERMINAL = frozenset({"succeeded", "failed", "canceled"})


def _build(cls: type[T], data: Mapping[str, Any], **override: Any) -> T:
    """``cls`` from the members of ``data`` it has fields for; unknown members are ignored."""
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    kwargs = {k: v for k, v in data.items() if k in names}
    kwargs.update(override)
    if "raw" in names:
        kwargs["raw"] = dict(data)
    return cls(**kwargs)


def _b64(value: str | None) -> bytes | None:
    return base64.b64decode(value) if value else None


def _pil(png: bytes) -> Any:
    try:
        from PIL import Image
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("to_pil() needs Pillow: pip install 'cnnviz-client[pil]'") from exc
    img = Image.open(io.BytesIO(png))
    img.load()
    return img


# ---- catalog ---------------------------------------------------------------------------------


@dataclass
class ModelSummary:
    name: str
    arch: str = ""
    description: str = ""
    input_size: int = 0
    num_labels: int = 0
    default: bool = False
    loaded: bool = False
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ModelSummary:
        return _build(cls, data)


@dataclass
class Layer:
    name: str
    kind: str = ""
    output_shape: list[int] | None = None
    spatial: bool = False
    grid: str | None = None  # "chw", "nhwc" (Swin) or "tokens" (ViT): what the CAM family can use
    usable_by: list[str] = field(default_factory=list)  # method families: cam, gradient, perturbation


@dataclass
class ModelDetail(ModelSummary):
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    default_layer: str | None = ""  # None: the model exposes no layer outputs (a TorchScript archive)
    layers: list[Layer] = field(default_factory=list, repr=False)
    labels: list[str] = field(default_factory=list, repr=False)
    head: str = "softmax"  # or "sigmoid" (binary and multi-label heads)
    gradients: bool = True  # False: only gradient-free methods answer
    methods: list[str] = field(default_factory=list)  # explanation methods available for this model

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ModelDetail:
        return _build(cls, data, layers=[_build(Layer, li) for li in data.get("layers") or []],
                      mean=tuple(data.get("mean") or ()), std=tuple(data.get("std") or ()))

    def layer(self, name: str) -> Layer:
        for li in self.layers:
            if li.name == name:
                return li
        raise KeyError(name)

    def label_index(self, label: str) -> int:
        """The class index of a label (exact, then case-insensitive substring)."""
        if label in self.labels:
            return self.labels.index(label)
        low = label.lower()
        for i, name in enumerate(self.labels):
            if low in name.lower():
                return i
        raise KeyError(label)


@dataclass
class MethodInfo:
    name: str
    title: str = ""
    family: str = ""
    kind: str = "explain"  # "explain" (an explain method) or "job" (a job type)
    inline: bool = False
    cost_hint: float = 0.0
    uses_layer: bool = False
    supports_units: bool = False
    params_schema: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class MethodList:
    """``GET /v1/methods``: explain methods and job types; iterable, and indexable by name."""

    methods: list[MethodInfo]
    inline_budget: float = 0.0
    cost_unit: str = ""
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> MethodList:
        return _build(cls, data, methods=[_build(MethodInfo, m) for m in data.get("methods") or []])

    def __iter__(self) -> Iterator[MethodInfo]:
        return iter(self.methods)

    def __len__(self) -> int:
        return len(self.methods)

    def __getitem__(self, name: str) -> MethodInfo:
        for m in self.methods:
            if m.name == name:
                return m
        raise KeyError(name)

    def __contains__(self, name: object) -> bool:
        return any(m.name == name for m in self.methods)

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.methods]


# ---- predict -----------------------------------------------------------------------------------


@dataclass
class Prediction:
    index: int
    label: str
    probability: float
    logit: float = 0.0


@dataclass
class ClassArea:
    index: int
    label: str
    pixels: int
    fraction: float


@dataclass
class Segmentation:
    """A segmenter's answer for one image: the label map PNG (pixel values are class indices), each class's area,
    and one mask PNG per class when ``masks=True`` was asked."""

    label_map: bytes = field(repr=False)
    classes: list[ClassArea] = field(default_factory=list)
    masks: dict[int, bytes] | None = field(default=None, repr=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Segmentation:
        masks = data.get("masks")
        return cls(label_map=_b64(data.get("label_map_png")) or b"",
                   classes=[_build(ClassArea, c) for c in data.get("classes") or []],
                   masks={m["index"]: _b64(m["mask_png"]) or b"" for m in masks} if masks is not None else None)

    def labels(self) -> Any:
        """The label map as a numpy array ``[H, W]`` of class indices (needs Pillow and numpy)."""
        import numpy as np  # optional: pip install 'cnnviz-client[numpy]'

        return np.asarray(_pil(self.label_map))

    def save(self, path: str | os.PathLike[str]) -> str:
        """Write the label map PNG (a palette PNG: coloured for a person, class indices for a program)."""
        return write_bytes(path, self.label_map)


@dataclass
class Detection:
    """A detector's box: x0, y0, x1, y1 in the original image's pixels; ``index`` is its rank (a box target's)."""

    index: int
    box: tuple[float, float, float, float]
    label: str
    class_index: int
    score: float


@dataclass
class ImagePredictions:
    index: int
    width: int
    height: int
    predictions: list[Prediction]
    segmentation: Segmentation | None = None  # a segmenter's answer
    detections: list[Detection] | None = None  # a detector's answer


@dataclass
class PredictResult:
    model: str
    input_size: tuple[int, int]
    images: list[ImagePredictions]
    timings: dict[str, float] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PredictResult:
        images = [ImagePredictions(index=im["index"], width=im["width"], height=im["height"],
                                   predictions=[_build(Prediction, p) for p in im.get("predictions") or []],
                                   segmentation=Segmentation.from_json(im["segmentation"])
                                   if im.get("segmentation") else None,
                                   detections=None if im.get("detections") is None else
                                   [_build(Detection, d, box=tuple(d["box"])) for d in im["detections"]])
                  for im in data.get("images") or []]
        return _build(cls, data, images=images, input_size=tuple(data.get("input_size") or (0, 0)))

    @property
    def top(self) -> list[Prediction]:
        """The first image's predictions, best first (the common one-image case)."""
        return self.images[0].predictions if self.images else []


# ---- explain -----------------------------------------------------------------------------------


@dataclass
class Target:
    index: int
    score: float
    kind: str = "class"
    label: str | None = None
    probability: float | None = None
    box: tuple[float, float, float, float] | None = None  # kind "box": the explained box, original pixels
    detection: int | None = None  # kind "box": its rank among the detections (None: a reference box)


@dataclass
class RawMap:
    """The raw map at the layer's resolution; ``values`` is None when ``output.raw`` was false."""

    shape: tuple[int, int]
    min: float
    max: float
    values: list[list[float]] | None = None

    def to_numpy(self) -> Any:
        import numpy as np  # optional: pip install 'cnnviz-client[numpy]'

        if self.values is None:
            raise ValueError("this answer has no raw values (output.raw was false)")
        return np.asarray(self.values, dtype=np.float32)


@dataclass
class LayerMap:
    """One layer of a layer sweep (``layers=``): its map and pictures (bytes in the target's ``media_type``)."""

    layer: str
    shape: tuple[int, int]
    map: RawMap
    heatmap: bytes | None = field(default=None, repr=False)
    overlay: bytes | None = field(default=None, repr=False)
    rendering: dict[str, Any] | None = None
    heatmap_url: str | None = None
    overlay_url: str | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LayerMap:
        m = data.get("map") or {}
        return cls(layer=data["layer"], shape=tuple(data.get("shape") or (0, 0)),
                   map=RawMap(shape=tuple(m.get("shape") or (0, 0)), min=m.get("min", 0.0), max=m.get("max", 0.0),
                              values=m.get("values")),
                   heatmap=_b64(data.get("heatmap_png")), overlay=_b64(data.get("overlay_png")),
                   rendering=data.get("rendering"), heatmap_url=data.get("heatmap_url"),
                   overlay_url=data.get("overlay_url"))


@dataclass
class Explanation:
    """One image and target: the map, heatmap/overlay/figure bytes (in ``media_type``: JPEG unless
    ``output.format`` said otherwise), boxes and faithfulness when asked; ``*_url`` with ``output.inline: false``."""

    target: Target
    map: RawMap
    heatmap: bytes | None = field(default=None, repr=False)
    overlay: bytes | None = field(default=None, repr=False)
    regions: list[dict[str, Any]] | None = None
    faithfulness: dict[str, Any] | None = None
    figure: bytes | None = field(default=None, repr=False)
    media_type: str | None = None
    rendering: dict[str, Any] | None = None
    overlay_url: str | None = None
    heatmap_url: str | None = None
    figure_url: str | None = None
    layers: list[LayerMap] | None = None  # a layer sweep: every layer's map; ``figure`` is then their row
    region: dict[str, Any] | None = None  # a region target's region: source, box, area, fraction, predicted_fraction

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Explanation:
        m = data.get("map") or {}
        return cls(target=_build(Target, data.get("target") or {}),
                   map=RawMap(shape=tuple(m.get("shape") or (0, 0)), min=m.get("min", 0.0), max=m.get("max", 0.0),
                              values=m.get("values")),
                   heatmap=_b64(data.get("heatmap_png")), overlay=_b64(data.get("overlay_png")),
                   regions=data.get("regions"), faithfulness=data.get("faithfulness"),
                   figure=_b64(data.get("figure_png")), media_type=data.get("media_type"),
                   rendering=data.get("rendering"), overlay_url=data.get("overlay_url"),
                   heatmap_url=data.get("heatmap_url"), figure_url=data.get("figure_url"), region=data.get("region"),
                   layers=[LayerMap.from_json(x) for x in data["layers"]] if data.get("layers") else None)

    def save(self, path: str | os.PathLike[str], which: str = "overlay") -> str:
        """Write the overlay (or ``which="heatmap"`` / ``"figure"``) in the format the file name asks for
        (``overlay.png``: PNG, converted from the JPEG the service sends by default); returns the path.

        Converting needs Pillow (the ``[pil]`` extra); without it a mismatch raises
        :class:`~cnnviz_client.errors.ImageFormatError` rather than writing JPEG bytes into a .png file.
        """
        data = {"overlay": self.overlay, "heatmap": self.heatmap, "figure": self.figure}.get(which)
        if data is None:
            raise ValueError(f"this explanation has no {which} (output.{which} was false)")
        return save_picture(path, data, which)

    def to_pil(self, which: str = "overlay") -> Any:
        data = self.overlay if which == "overlay" else self.heatmap
        if data is None:
            raise ValueError(f"this explanation has no {which}")
        return _pil(data)


@dataclass
class ImageExplanation:
    index: int
    width: int
    height: int
    explanations: list[Explanation]


@dataclass
class ExplainResult:
    """An explain answer; ``job_id`` is set when the service ran it as a job (the 202 hand-off)."""

    model: str
    method: str
    layer: str | None
    input_size: tuple[int, int]
    images: list[ImageExplanation]
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    job_id: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)
    layers: list[str] | None = None  # a layer sweep: the layers explained, in order

    @classmethod
    def from_json(cls, data: Mapping[str, Any], job_id: str | None = None) -> ExplainResult:
        images = [ImageExplanation(index=im["index"], width=im["width"], height=im["height"],
                                   explanations=[Explanation.from_json(e) for e in im.get("explanations") or []])
                  for im in data.get("images") or []]
        return _build(cls, data, images=images, input_size=tuple(data.get("input_size") or (0, 0)), job_id=job_id)

    @property
    def explanations(self) -> list[Explanation]:
        """Every explanation, image by image, target by target."""
        return [e for im in self.images for e in im.explanations]

    @property
    def overlay(self) -> bytes | None:
        """The first explanation's overlay PNG."""
        ex = self.explanations
        return ex[0].overlay if ex else None

    def save(self, path: str | os.PathLike[str], which: str = "overlay") -> str:
        """Write the first explanation's overlay (or heatmap), in the format the file name asks for."""
        if not self.explanations:
            raise ValueError("this answer has no explanations")
        return self.explanations[0].save(path, which)


# ---- signals and volumes (models declared input = "signal" | "volume") ------------------------------


@dataclass
class NdExplanation:
    """One map over a signal or a volume: its values (signals), peak, and pictures as PNG bytes."""

    target: Target
    shape: list[int]
    peak: list[int]
    values: list[float] | None
    pictures: dict[str, bytes]  # signal_png | slices_png | montage_png -> PNG bytes
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> NdExplanation:
        pics = {k: base64.b64decode(data[k]) for k in ("signal_png", "slices_png", "montage_png") if data.get(k)}
        m = data.get("map") or {}
        return cls(target=_build(Target, data["target"]), shape=list(m.get("shape") or []),
                   peak=list(m.get("peak") or []), values=m.get("values"), pictures=pics, raw=dict(data))


@dataclass
class NdExplainResult:
    """An explain answer on signals or volumes: one entry per uploaded file, its maps on the file's own grid."""

    model: str
    method: str
    layer: str | None
    input_kind: str
    inputs: list[list[NdExplanation]]
    warnings: list[str] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)
    job_id: str | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any], job_id: str | None = None) -> NdExplainResult:
        return cls(model=data["model"], method=data["method"], layer=data.get("layer"), input_kind=data["input_kind"],
                   inputs=[[NdExplanation.from_json(e) for e in i.get("explanations") or []]
                           for i in data.get("inputs") or []],
                   warnings=list(data.get("warnings") or []), raw=dict(data), job_id=job_id)

    @property
    def explanations(self) -> list[NdExplanation]:
        return [e for i in self.inputs for e in i]

    def save(self, path: str | os.PathLike[str], which: str = "") -> str:
        """Write the first explanation's picture (``signal_png``, ``slices_png`` or ``montage_png``) as PNG."""
        pics = self.explanations[0].pictures if self.explanations else {}
        key = which or next(iter(pics), "")
        if key not in pics:
            raise ValueError(f"this answer has no {key or 'picture'} (output.heatmap was false?)")
        return write_bytes(path, pics[key])


@dataclass
class NdPredictResult:
    """Top-k classes per uploaded signal or volume."""

    model: str
    input_kind: str
    inputs: list[dict[str, Any]]
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> NdPredictResult:
        return cls(model=data["model"], input_kind=data["input_kind"], inputs=list(data.get("inputs") or []),
                   raw=dict(data))

    @property
    def top(self) -> list[Prediction]:
        return [_build(Prediction, p) for p in (self.inputs[0]["predictions"] if self.inputs else [])]


# ---- inspect, collections, trained networks ---------------------------------------------------------


@dataclass
class InspectResult:
    """An inspect view's JSON (``data``) and its picture, when the view has one (grid or plot PNG)."""

    view: str
    data: dict[str, Any]
    image: bytes | None = field(default=None, repr=False)

    @classmethod
    def from_json(cls, view: str, data: Mapping[str, Any]) -> InspectResult:
        return cls(view, dict(data), _b64(data.get("grid_png") or data.get("plot_png")))

    def save(self, path: str | os.PathLike[str]) -> str:
        if self.image is None:
            raise ValueError(f"the {self.view} view has no picture")
        return save_picture(path, self.image)


@dataclass
class Collection:
    id: str
    count: int
    labels: list[str] | None = None
    boxes: list[list[list[int]]] | None = None
    bytes: int = 0
    created_at: float = 0.0
    ttl_s: int = 0
    links: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Collection:
        return _build(cls, data)


@dataclass
class IdentifyResult:
    model: str
    layer: str
    label: str
    distance: float
    threshold: float
    candidates: list[dict[str, Any]] = field(default_factory=list)
    enrolled: int = 0
    cached: bool = False
    head: str | None = None
    verifier: str | None = None
    probability: float | None = None  # with a verifier: the best label's probability

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> IdentifyResult:
        return _build(cls, data)


@dataclass
class TrainedInfo:
    """A style, an embedder or a verifier trained by a job."""

    name: str
    kind: str
    model: str
    version: str = ""
    job: str = ""
    bytes: int = 0
    created_at: float = 0.0
    updated_at: float = 0.0
    summary: dict[str, Any] = field(default_factory=dict, repr=False)
    checkpoint_step: int | None = None
    training_job: str | None = None
    links: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TrainedInfo:
        return _build(cls, data)


@dataclass
class StyleResult:
    style: str
    width: int
    height: int
    image: bytes = field(repr=False)
    timings: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StyleResult:
        return _build(cls, data, image=base64.b64decode(data["image_png"]))

    def save(self, path: str | os.PathLike[str]) -> str:
        """Write the styled image in the format the file name asks for."""
        return save_picture(path, self.image)

    def to_pil(self) -> Any:
        return _pil(self.image)


# ---- jobs --------------------------------------------------------------------------------------


@dataclass
class JobProgress:
    step: int = 0
    total: int = 0
    fraction: float = 0.0
    stage: str = ""
    message: str | None = None
    objective: float | None = None
    checkpoint_step: int | None = None


@dataclass
class JobError:
    type: str
    detail: str = ""


@dataclass
class ArtifactLink:
    name: str
    href: str
    media_type: str | None = None


@dataclass
class JobStatus:
    id: str
    type: str
    status: str
    progress: JobProgress = field(default_factory=JobProgress)
    model: str | None = None
    queue_position: int | None = None
    created_at: str | None = None
    started_at: str | None = None
    ended_at: str | None = None
    cancel_requested: bool = False
    error: JobError | None = None
    previews: list[ArtifactLink] = field(default_factory=list)
    artifacts: list[ArtifactLink] = field(default_factory=list)
    links: dict[str, str | None] = field(default_factory=dict)
    worker: dict[str, Any] | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> JobStatus:
        err = data.get("error")
        return _build(cls, data, progress=_build(JobProgress, data.get("progress") or {}),
                      error=_build(JobError, err) if err else None,
                      previews=[_build(ArtifactLink, a) for a in data.get("previews") or []],
                      artifacts=[_build(ArtifactLink, a) for a in data.get("artifacts") or []])

    @property
    def done(self) -> bool:
        """Finished one way or another (succeeded, failed or canceled)."""
        return self.status in TERMINAL

    @property
    def succeeded(self) -> bool:
        return self.status == "succeeded"


@dataclass
class Artifact:
    """A job's result or artifact: the bytes and their media type."""

    name: str
    media_type: str
    content: bytes = field(repr=False)

    def json(self) -> Any:
        return json.loads(self.content)

    @property
    def is_json(self) -> bool:
        return "json" in self.media_type

    def save(self, path: str | os.PathLike[str]) -> str:
        """Write the content; a picture in the format the file name asks for, anything else as received."""
        return save_picture(path, self.content, self.name) if self.media_type.startswith("image/") \
            else write_bytes(path, self.content)

    def to_pil(self) -> Any:
        return _pil(self.content)

    def explanation(self, job_id: str | None = None) -> ExplainResult:
        """An explain job's result as a typed :class:`ExplainResult`."""
        return ExplainResult.from_json(self.json(), job_id=job_id)


@dataclass
class Event:
    """One server-sent event of a job: ``status``, ``progress``, ``preview``, ``metrics``, ``done``..."""

    event: str
    data: Any
    id: str | None = None
