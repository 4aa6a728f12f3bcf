"""Target kinds: what an explanation explains, each declared once.

A request names its target with fields of :class:`core.schemas.explain.ExplainParams` (``target``,
``targets`` and ``top_k`` for class scores; ``unit`` for a channel or neuron of a layer). Every
place that used to ask "is this a unit?" (the engine's targets, the cost estimate's count, the
answer's ``target`` object, which faithfulness numbers apply) reads the request's kind from this
registry instead, so the next kind (a detector's box, a segmenter's region) is one
:func:`register_target_kind` call here, not an ``if`` in each of those places.

The kinds are tried in registration order and the first whose :attr:`TargetKind.selects` holds
wins; ``class`` is last, as the default when no other kind's fields are given.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cnnviz.attribution import BoxTargets, ClassTargets, RegionTargets, Targets, UnitTarget
from cnnviz.errors import closest
from cnnviz.models import LoadedModel
from core.errors import Invalid
from core.regions import check_region, network_masks
from core.schemas.explain import ExplainParams

Sizes = Sequence[tuple[int, int]] | None
"""The request's images as (height, width), where known (at submission and in the pipeline)."""


@dataclass(frozen=True)
class Described:
    """How the answer names one explained target: its ``kind`` in the answer and a readable label."""

    kind: str
    label: str | None


@dataclass(frozen=True)
class TargetKind:
    """One kind of target, declared once.

    ``fields``: the request fields that select it (every target field of the request belongs to one
    kind; a test checks it). ``selects``: whether a checked request asks for this kind. ``engine``:
    the engine's targets for ``n_images`` images of ``model``. ``per_image``: how many targets each
    image gets (the cost estimate). ``describe``: the answer's kind and label of the target the
    engine resolved to ``index``.
    ``probability``: whether the model's class probability scores it, so that deletion and
    insertion (which follow that probability) apply. ``check``: refuses, as a 422, what the model
    or the images cannot answer (a region on a classifier, a box on a segmenter, a polygon outside
    an image), at submission, before the request is priced or handed to a job. ``sized``: the
    engine's targets need the images' original sizes (``ExplainParams.with_image_sizes``, set by
    the pipeline): a region's box or polygon, a reference box, in original pixels.
    """

    name: str
    fields: tuple[str, ...]
    selects: Callable[[ExplainParams], bool]
    engine: Callable[[LoadedModel, ExplainParams, int], Targets]
    per_image: Callable[[ExplainParams], int]
    describe: Callable[[LoadedModel, ExplainParams, int], Described]
    probability: bool
    check: Callable[[LoadedModel, ExplainParams, Sizes], None] | None = None
    sized: bool = False  # its engine targets need the images' original sizes (regions, reference boxes)


TARGET_KINDS: dict[str, TargetKind] = {}


def register_target_kind(kind: TargetKind, *, before: str | None = None) -> TargetKind:
    """Make ``kind`` selectable; ``before`` names a kind it must be tried ahead of (the default ``class``)."""
    if kind.name in TARGET_KINDS:
        raise ValueError(f"target kind {kind.name!r} is declared twice")
    items = list(TARGET_KINDS.items())
    at = next((i for i, (name, _) in enumerate(items) if name == before), len(items))
    items.insert(at, (kind.name, kind))
    TARGET_KINDS.clear()
    TARGET_KINDS.update(items)
    return kind


def target_kind(params: ExplainParams) -> TargetKind:
    """The kind a checked request asks for (the first that selects it; ``class`` by default)."""
    return next(k for k in TARGET_KINDS.values() if k.selects(params))


# -- class scores: one class for all images, a list per image, or each image's top k --------------------

def _class_targets(model: LoadedModel, params: ExplainParams, n_images: int) -> Targets:
    if model.task == "detection":  # target and targets were refused by _check_class
        return BoxTargets(top_k=params.top_k)  # a detector's default: its best boxes
    if params.targets is not None:
        if len(params.targets) != n_images:
            raise Invalid("bad-targets", f"targets has {len(params.targets)} rows for {n_images} images")
        return ClassTargets(indices=tuple(tuple(r) for r in params.targets))
    if params.target is not None:
        return ClassTargets(indices=((params.target,),))
    return ClassTargets(top_k=params.top_k)


def _classes_per_image(params: ExplainParams) -> int:
    if params.target is not None:
        return 1
    return max(len(r) for r in params.targets) if params.targets else params.top_k


def _describe_class(model: LoadedModel, _params: ExplainParams, index: int) -> Described:
    return Described("class", model.labels[index] if index < len(model.labels) else None)


def _check_class(model: LoadedModel, params: ExplainParams, _sizes: Sizes) -> None:
    if model.task == "detection" and (params.target is not None or params.targets is not None):
        raise Invalid("task-mismatch", "A detector explains boxes, not classes",
                      f"model {model.name} is a detection model: name its boxes with box, e.g."
                      ' {"box": {"index": [0]}} or {"box": {"top_k": 3}}', task=model.task)
    if model.task == "segmentation":
        raise Invalid("task-mismatch", "A segmenter explains regions, not class scores",
                      f"model {model.name!r} is a segmentation model: its output is a class per pixel, not one row "
                      "of class scores; give region: a class and its predicted mask, a box or a polygon (for "
                      'example {"region": {"target": 1}})', task="segmentation")


CLASS = register_target_kind(TargetKind(
    "class", ("target", "targets", "top_k"), selects=lambda _p: True, engine=_class_targets,
    per_image=_classes_per_image, describe=_describe_class, probability=True, check=_check_class))


# -- a unit: one channel of a layer (its spatial mean), or one neuron of it ---------------------------------

def _unit_targets(_model: LoadedModel, params: ExplainParams, _n_images: int) -> Targets:
    u = params.unit
    assert u is not None
    return UnitTarget(u.layer, u.channel, u.y, u.x)


def _describe_unit(_model: LoadedModel, params: ExplainParams, index: int) -> Described:
    u = params.unit
    assert u is not None
    return Described("neuron" if u.y is not None else "channel", f"{u.layer}[{index}]")


UNIT = register_target_kind(TargetKind(
    "unit", ("unit",), selects=lambda p: p.unit is not None, engine=_unit_targets, per_image=lambda _p: 1,
    describe=_describe_unit, probability=False), before="class")


# -- a region: a segmenter's class and region (its predicted mask, a box or a polygon) -------------------------

def background_classes(model: LoadedModel) -> tuple[int, ...]:
    """Classes a region's top_k passes over while others are predicted there: those labelled as background."""
    return tuple(i for i, lb in enumerate(model.labels) if lb.strip("_ ").lower() in ("background", "bg"))


def _region_targets(model: LoadedModel, params: ExplainParams, n_images: int) -> Targets:
    r = params.region
    assert r is not None
    masks = None
    if r.source != "predicted":
        sizes = params._image_sizes
        if sizes is None or len(sizes) != n_images:  # pragma: no cover - the pipeline binds them (sized)
            raise Invalid("bad-targets", "a box or polygon needs the images' sizes")
        masks = network_masks(r, sizes, params.resolution or model.preprocessing.input_size)
    return RegionTargets(indices=((r.target,),) if r.target is not None else None, top_k=r.top_k, regions=masks,
                         skip=background_classes(model))


def _describe_region(model: LoadedModel, _params: ExplainParams, index: int) -> Described:
    return Described("region", model.labels[index] if index < len(model.labels) else None)


REGION = register_target_kind(TargetKind(
    "region", ("region",), selects=lambda p: p.region is not None, engine=_region_targets,
    per_image=lambda p: 1 if p.region is None or p.region.target is not None else p.region.top_k,
    describe=_describe_region, probability=False, check=check_region, sized=True), before="class")


# -- a box of a detector: detections by rank, reference boxes with labels, or each image's top k -----------

def _class_index(model: LoadedModel, label: str | int) -> int:
    if isinstance(label, int):
        if label >= len(model.labels):
            raise Invalid("unknown-class", "Unknown class", f"class index {label} is outside"
                          f" 0..{len(model.labels) - 1} of model {model.name}")
        return label
    if label not in model.labels:
        raise Invalid("unknown-class", "Unknown class", f"model {model.name} has no class labelled {label!r}",
                      choices=closest(label, list(model.labels)))
    return model.labels.index(label)


def _check_box(model: LoadedModel, params: ExplainParams, _sizes: Sizes) -> None:
    b = params.box
    assert b is not None
    if model.task != "detection":
        raise Invalid("task-mismatch", "A box target needs a detector",
                      f"a box target needs a detector; model {model.name} is a {model.task} model (explain it with "
                      + ("region or unit" if model.task == "segmentation" else "target, targets, top_k or unit")
                      + ")", task=model.task)
    for r in b.reference or ():
        _class_index(model, r.label)  # an unknown label is a 422 here, not a failed job


def _box_targets(model: LoadedModel, params: ExplainParams, n_images: int) -> Targets:
    b = params.box
    assert b is not None
    refs = None
    if b.reference is not None:
        size = model.preprocessing.input_size if params.resolution is None else params.resolution
        sizes = params._image_sizes or ((size, size),) * n_images  # no sizes: the boxes are in input pixels
        refs = tuple(tuple(((r.box[0] * size / w, r.box[1] * size / h, r.box[2] * size / w, r.box[3] * size / h),
                            _class_index(model, r.label)) for r in b.reference) for h, w in sizes)
    return BoxTargets(indices=tuple(b.index) if b.index is not None else None, references=refs, top_k=b.top_k,
                      score_threshold=b.score_threshold, iou_threshold=b.iou_threshold)


def _boxes_per_image(params: ExplainParams) -> int:
    b = params.box
    assert b is not None
    return len(b.index) if b.index is not None else len(b.reference) if b.reference is not None else b.top_k


BOX = register_target_kind(TargetKind(
    "box", ("box",), selects=lambda p: p.box is not None, engine=_box_targets, per_image=_boxes_per_image,
    describe=lambda _m, _p, index: Described("box", None), probability=False, check=_check_box,
    sized=True), before="class")
"""The box itself, its label and score come from the engine's resolution (``Explanation.extras["boxes"]``):
only the forward knows which detection a rank names."""
