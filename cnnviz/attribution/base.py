"""What every attribution method shares: targets, the result type, the registry, the one verb, and the
objective and reference inputs that several families run on.

Like captum, every method is called the same way::

    method = get_method("gradcam")
    result = method.attribute(model, x, ClassTargets(top_k=3), layer=None, **params)

``params`` are checked into the method's typed parameter set (:attr:`Method.Params`, declared once
with its bounds in the method's module); a typed instance may be passed as ``params=`` instead.
``precision="bf16"`` (or ``"fp16"``) runs the network's forward passes under autocast
(:mod:`cnnviz.precision`); ``extras["precision"]`` says what ran.

``x`` is a normalized ``[N,3,H,W]`` batch already on the model's device; the result holds one raw
map per image and target, at the method's native resolution, on the CPU. Rendering, resizing to
the client's image and HTTP shaping happen elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, get_args

import torch

from ..blur import gaussian_blur, gaussian_blur_grid
from ..errors import EngineError, closest
from ..hooks import LayerCapture, thread_hooks
from ..models import LoadedModel, tasks, validate_layer
from ..models.layers import to_grid
from ..params import NoParams, Params
from ..precision import forward_precision, run_precision
from ..progress import checkpoint
from .boxes import BoxScore, BoxTargets, box_scores, resolve_boxes
from .fast.folded import folded_module

MapKind = Literal["positive", "unsigned", "signed", "gradient_rgb"]
"""What a method's raw map holds, which decides how it is drawn (:mod:`cnnviz.render.kinds`):
non-negative evidence (``positive``), a magnitude whose sign means little (``unsigned``), a signed
contribution (``signed``), or the ``[3, H, W]`` input gradient as a picture (``gradient_rgb``)."""
MAP_KINDS: tuple[str, ...] = get_args(MapKind)


@dataclass(frozen=True)
class ClassTargets:
    """Class scores to explain: explicit indices per image, or each image's ``top_k`` classes."""

    indices: tuple[tuple[int, ...], ...] | None = None
    top_k: int = 1

    def resolve(self, logits: torch.Tensor) -> list[list[int]]:
        n, c = logits.shape
        if self.indices is None:
            k = min(self.top_k, c)
            return logits.detach().topk(k, dim=1).indices.tolist()
        if len(self.indices) not in (1, n):
            raise EngineError("bad-targets", f"got target lists for {len(self.indices)} images, expected {n}")
        rows = [list(self.indices[0 if len(self.indices) == 1 else i]) for i in range(n)]
        for row in rows:
            for t in row:
                if not 0 <= t < c:
                    raise EngineError("unknown-class", f"class index {t} is outside 0..{c - 1}")
        return rows


@dataclass(frozen=True)
class UnitTarget:
    """An intermediate unit to explain: one channel of a layer (its spatial mean), or one neuron."""

    layer: str
    channel: int
    y: int | None = None
    x: int | None = None

    def score(self, act: torch.Tensor) -> torch.Tensor:
        """Per-image score ``[N]`` from the layer output ``[N,C,h,w]`` (or ``[N,C]``)."""
        if not 0 <= self.channel < act.shape[1]:
            raise EngineError("unknown-channel",
                                   f"channel {self.channel} is outside 0..{act.shape[1] - 1} of {self.layer}")
        a = act[:, self.channel]
        if self.y is None or a.dim() == 1:
            return a.reshape(a.shape[0], -1).mean(1)
        h, w = a.shape[-2:]
        if not (0 <= self.y < h and 0 <= (self.x or 0) < w):
            raise EngineError("bad-position", f"neuron ({self.y},{self.x}) is outside {h}x{w} of {self.layer}")
        return a[:, self.y, self.x or 0]


@dataclass(frozen=True, eq=False)
class RegionTargets:
    """A segmenter's class and region (Seg-Grad-CAM, Vinogradova et al. 2020): score = the class's logit
    summed over the region's pixels.

    ``indices``: classes per image (one row for every image, or one per image), or None for each
    image's ``top_k`` classes: those with the most predicted pixels inside the region (classes of
    ``skip``, such as a background, only when nothing else is predicted there). ``regions``: boolean
    ``[N or 1, H, W]`` masks at the network input (a box or polygon, already rasterized), or None
    for each class's *predicted mask* in the same forward (the pixels whose arg-max is the class).
    The region is fixed by the unperturbed image: a gradient, a masked copy or an occluded copy is
    scored on the same pixels.
    """

    indices: tuple[tuple[int, ...], ...] | None = None
    top_k: int = 1
    regions: torch.Tensor | None = None
    skip: tuple[int, ...] = ()

    def scorer(self, out: torch.Tensor) -> RegionScores:
        """The region scores of the unperturbed outputs ``out`` ``[N,C,H,W]`` and each image's resolved classes."""
        return RegionScores(self, out)


REGION_LOGITS = "region_logits"
"""``Explanation.extras`` key of a region target's unperturbed segmenter logits ``[N,C,h,w]`` (CPU): the
predicted masks the answer outlines are read from them, with no second forward."""


def segmentation_logits(out: Any) -> torch.Tensor:
    """A segmenter's ``[N,C,H,W]`` logits (:func:`cnnviz.models.tasks.segmentation_logits`), or an engine error."""
    try:
        return tasks.segmentation_logits(out)
    except ValueError as exc:
        raise EngineError("unsupported-target", f"region targets need a segmenter: {exc}") from exc


class RegionScores:
    """Region weights fixed from the unperturbed forward; scores ``[B,C]`` of any batch of outputs.

    ``weights`` is ``[N,C,h,w]`` (one predicted mask per class) or ``[N,1,h,w]`` (one region for
    every class) at the output's resolution: the score of class c for row b (of image ``img[b]``)
    is ``sum(out[b, c] * weights[img[b], c])``.
    """

    def __init__(self, targets: RegionTargets, out: torch.Tensor) -> None:
        out = segmentation_logits(out)
        n, c, h, w = out.shape
        labels = out.detach().argmax(1)  # [N,h,w]
        predicted = torch.nn.functional.one_hot(labels, c).permute(0, 3, 1, 2)  # [N,C,h,w]
        if targets.regions is None:
            self.weights = predicted.to(out.dtype)
            inside = predicted.flatten(2).sum(-1)  # [N,C] predicted pixels of each class in its own mask
        else:
            r = targets.regions.to(out.device)
            if r.shape[0] not in (1, n):
                raise EngineError("bad-targets", f"got regions for {r.shape[0]} images, expected {n}")
            if tuple(r.shape[-2:]) != (h, w):
                r = torch.nn.functional.interpolate(r[:, None].float(), size=(h, w), mode="nearest")[:, 0] > 0.5
            r = r.expand(n, h, w)
            if not bool(r.flatten(1).any(1).all()):
                raise EngineError("empty-region", f"the region covers no pixel of the {h}x{w} output")
            self.weights = r[:, None].to(out.dtype)
            inside = (predicted * r[:, None]).flatten(2).sum(-1)  # [N,C] predicted pixels inside the region
        self.classes = c
        self.areas = inside
        self.rows = self._resolve(targets, inside)
        for i, row in enumerate(self.rows):
            if targets.regions is None:
                empty = [t for t in row if int(inside[i, t]) == 0]
                if empty:
                    present = [k for k in range(c) if int(inside[i, k]) > 0]
                    raise EngineError("empty-region", f"class {empty[0]} is predicted nowhere in image {i}, so its"
                                      " predicted mask is empty; give a box or a polygon, or one of the classes"
                                      f" predicted there: {present}", present, image=i)

    def _resolve(self, targets: RegionTargets, inside: torch.Tensor) -> list[list[int]]:
        n, c = inside.shape
        if targets.indices is not None:
            if len(targets.indices) not in (1, n):
                raise EngineError("bad-targets", f"got target lists for {len(targets.indices)} images, expected {n}")
            rows = [list(targets.indices[0 if len(targets.indices) == 1 else i]) for i in range(n)]
            for row in rows:
                for t in row:
                    if not 0 <= t < c:
                        raise EngineError("unknown-class", f"class index {t} is outside 0..{c - 1}")
            return rows
        rows = []
        for i in range(n):
            order = sorted(range(c), key=lambda k: (-int(inside[i, k]), k))
            present = [k for k in order if int(inside[i, k]) > 0]
            chosen = [k for k in present if k not in targets.skip] or present[:1] or order[:1]
            rows.append(chosen[: targets.top_k])
        return rows

    def __call__(self, out: Any, img: torch.Tensor | None = None) -> torch.Tensor:
        """Scores ``[B,C]`` of outputs ``out`` ``[B,C,h,w]`` whose rows belong to images ``img`` (all: None)."""
        out = segmentation_logits(out)
        weights = self.weights if img is None else self.weights[img.to(self.weights.device)]
        return (out * weights.to(out.dtype)).sum((2, 3))


Targets = ClassTargets | UnitTarget | RegionTargets | BoxTargets


@dataclass
class Explanation:
    """Raw maps per image and target, plus what a client needs to read them."""

    method: str
    maps: list[list[torch.Tensor]]  # [image][target] -> [h,w] float on CPU
    targets: list[list[int]]  # class index, or the channel of a UnitTarget
    scores: list[list[float]]  # logit (class) or unit activation
    probabilities: list[list[float | None]]
    layer: str | None = None
    warnings: list[str] = field(default_factory=list)
    extras: dict[str, Any] = field(default_factory=dict)
    sweep: dict[str, list[list[torch.Tensor]]] | None = None
    """A layer sweep (``layers=``): every layer's maps ``[image][target]``, in the order asked;
    ``maps`` and ``layer`` are then the last layer's."""


def target_scores(logits: torch.Tensor, rows: list[list[int]], t: int) -> torch.Tensor:
    """Sum over images of the ``t``-th target's logit (images with fewer targets add nothing).

    Images in a batch are independent (eval-mode batch norm), so one gradient of this sum gives
    every image its own gradient.
    """
    mask = torch.tensor([len(r) > t for r in rows], device=logits.device)
    idx = torch.tensor([r[t] if len(r) > t else 0 for r in rows], device=logits.device)
    picked = logits.gather(1, idx[:, None])[:, 0]
    return (picked * mask).sum()


def class_scores(logits: torch.Tensor, rows: list[list[int]], head: str = "softmax",
                 ) -> tuple[list[list[float]], list[list[float | None]]]:
    """Each target's logit and probability: softmax over classes, or sigmoid(logit) for a sigmoid head."""
    lg = logits.detach().float()
    probs = lg.sigmoid() if head == "sigmoid" else lg.softmax(1)
    scores = [[float(lg[i, c]) for c in row] for i, row in enumerate(rows)]
    prob = [[float(probs[i, c]) for c in row] for i, row in enumerate(rows)]
    return scores, prob


def region_scores(scores: torch.Tensor, rows: list[list[int]]) -> tuple[list[list[float]], list[list[float | None]]]:
    """Each target's region score (the logit summed over the region); a sum over pixels has no probability."""
    s = scores.detach().float()
    return [[float(s[i, c]) for c in row] for i, row in enumerate(rows)], [[None] * len(row) for row in rows]


CLASSIFIER_TASKS = frozenset({"classification", "multilabel"})
SEGMENTER_TASKS = CLASSIFIER_TASKS | {"segmentation"}
"""The tasks of a family that reads class scores through :class:`Objective` (or the CAM base): a segmenter's
region scores (:class:`RegionTargets`) are read the same way."""


class Method:
    """Base of all methods: a name, a family, its typed parameters, a cost estimate, and ``attribute``."""

    name: ClassVar[str]
    family: ClassVar[str]
    title: ClassVar[str] = ""
    supports_units: ClassVar[bool] = False
    uses_layer: ClassVar[bool] = False
    sweeps_layers: ClassVar[bool] = False  # explains a list of layers in one call (:meth:`run_layers`)
    needs_gradients: ClassVar[bool] = False  # takes a backward pass: refused on models without one
    map_kinds: ClassVar[tuple[MapKind, ...]] = ()
    """How this method's map may be drawn, its default first (:data:`MapKind`). Every registered
    method declares at least one (:func:`register` checks); the renderer and ``GET /v1/methods``
    read it from here, so there is no second table to keep in step."""
    Params: ClassVar[type[Params]] = NoParams
    box_score: ClassVar[BoxScore] = "match"
    """How a box target is scored (:mod:`.boxes`): the matching detections' scores (gradient and CAM
    families), or D-RISE's similarity (black-box methods)."""
    tasks: ClassVar[frozenset[str]] = CLASSIFIER_TASKS
    """The model tasks (:data:`cnnviz.models.specs.TASKS`) this method explains; a family that reads
    a detector's boxes or a segmenter's regions through its objective adds theirs."""

    def attribute(self, model: LoadedModel, x: torch.Tensor, targets: Targets, layer: str | None = None,
                  params: Params | None = None, *, precision: str | None = None,
                  layers: Sequence[str] | None = None, **kwargs: Any) -> Explanation:
        """The one verb: checked parameters in, raw maps out.

        ``precision`` (fp32 | bf16 | fp16; None: an enclosing call's, else fp32) is the precision of
        the network's forward passes. One the device does not offer is an engine error
        (``precision-unsupported``); one the method declines for these parameters
        (:meth:`full_precision_reason`) runs fp32 with a warning. A top-level call records the
        precision that really ran in ``extras["precision"]``; maps are float32 either way.
        """
        typed = self.Params.build(params, **kwargs)
        if model.task not in self.tasks:
            raise EngineError("task-unsupported", f"{self.name} does not explain {model.task} models (model"
                              f" {model.name}); it explains {', '.join(sorted(self.tasks))} models",
                              model=model.name, task=model.task)
        if self.needs_gradients:
            require_gradients(model, self.name)
        if isinstance(targets, BoxTargets):
            if model.task != "detection":
                raise EngineError("task-mismatch", f"a box target needs a detector; model {model.name} is a"
                                  f" {model.task} model", model=model.name, task=model.task)
            with run_precision(model.device, None, None):
                targets = resolve_boxes(model, x, targets)  # one forward of the unperturbed images
        reason = self.full_precision_reason(model, targets, typed) if precision not in (None, "fp32") else None
        with run_precision(model.device, precision, reason) as run:
            result = (self.run(model, x, targets, layer, typed) if layers is None
                      else self.run_layers(model, x, targets, list(layers), typed))
        if isinstance(targets, BoxTargets):
            result.extras["boxes"] = targets.describe()
            result.extras["box_targets"] = targets  # resolved: deletion/insertion score the same boxes
        if precision is not None:
            result.extras["precision"] = run.ran
            if run.reason is not None:
                result.warnings.append(f"{self.name} ran in fp32, not {run.asked}: {run.reason}")
        return result

    def full_precision_reason(self, model: LoadedModel, targets: Targets, params: Any) -> str | None:
        """Why this method runs fp32 even when bf16/fp16 is asked, for checked ``params`` (None: it does not).

        A method declines where reduced-precision forwards break what it computes or its maps stop
        agreeing with fp32 (docs/precision.md has the per-method decisions and measurements).
        """
        return None

    def independent_images(self, params: Any) -> bool:
        """Whether each image's answer is the one it would get alone in any batch (checked ``params``).

        True for methods whose per-image work never looks at the other images (eval-mode batch norm);
        a method that draws random numbers for the whole batch or stops on a batch-wide criterion
        says False, and requests for it are never batched together (``core.batching``).
        """
        return True

    def unavailable(self, model: LoadedModel) -> str | None:
        """Why this method cannot answer for ``model`` at all (None: it can)."""
        if model.task not in self.tasks:
            return f"does not explain {model.task} models"
        if self.needs_gradients and not model.gradients:
            return "needs gradients"
        if self.uses_layer and model.default_layer is None:
            return "needs a layer output; the model exposes none"
        return None

    def run(self, model: LoadedModel, x: torch.Tensor, targets: Targets, layer: str | None,
            params: Any) -> Explanation:
        """What a family does with checked parameters (an instance of :attr:`Params`)."""
        raise NotImplementedError

    def run_layers(self, model: LoadedModel, x: torch.Tensor, targets: Targets, layers: list[str],
                   params: Any) -> Explanation:
        """A layer sweep: one explanation per layer of ``layers`` (only where :attr:`sweeps_layers`)."""
        raise EngineError("sweep-unsupported", f"{self.name} does not take a list of layers")

    def estimate_cost(self, model: LoadedModel, n_images: int, n_targets: int,
                      params: Params | Mapping[str, Any] | None = None, layer: str | None = None) -> float:
        """Estimated work in forward-pass equivalents at the model's input size (a backward ~ 2).

        ``params`` is a typed instance or a mapping of the method's parameters (checked the same way).
        """
        typed = self.Params.build(**params) if isinstance(params, Mapping) else self.Params.build(params)
        return self.cost(model, n_images, n_targets, typed, layer)

    def cost(self, model: LoadedModel, n_images: int, n_targets: int, params: Any, layer: str | None) -> float:
        """The family's or variant's estimate, from checked parameters."""
        return n_images * (1 + 2 * n_targets)


# --------------------------------------------------------------------------------------------
# What several families run: the objective they differentiate or perturb, and reference inputs
# --------------------------------------------------------------------------------------------

Baseline = Literal["black", "mean", "blurred"]
"""Reference inputs (integrated gradients' baseline; occlusion's fill adds ``zero`` and ``blur`` as aliases)."""


def reference_input(model: LoadedModel, x: torch.Tensor, kind: str, sigma: float = 10.0) -> torch.Tensor:
    """A reference image in normalized space, ``[N,3,H,W]`` like ``x`` (or a signal's ``[N,C,L]``,
    a volume's ``[N,C,D,H,W]``: black is value 0, blurred is blurred along every axis).

    ``mean``: the dataset mean, i.e. zeros after normalization. ``black``: pixel value 0, built
    with the model's own normalization. ``blurred``/``blur``: a Gaussian-blurred copy of ``x``.
    """
    if kind == "mean":
        return torch.zeros_like(x)
    if kind in ("black", "zero"):
        return model.preprocessing.normalize(torch.zeros_like(x[:1])).expand_as(x).contiguous()
    if kind in ("blurred", "blur"):
        if x.dim() != 4:  # a signal [N,C,L] or a volume [N,C,D,H,W]: blurred along each of its axes
            return gaussian_blur_grid(x, sigma)
        return gaussian_blur(x, sigma)  # reflected borders: no band of repeated pixels at the frame
    raise EngineError("bad-parameter", f"unknown reference {kind!r}", list(get_args(Baseline)))


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the target layer has run."""


@dataclass
class Objective:
    """What a method differentiates or perturbs: class logits or one unit of a layer.

    :meth:`outputs` runs the model on a batch and returns ``[B,C]`` logits, or ``[B,1]`` unit
    scores (the forward pass stops right after the unit's layer). :meth:`pick` turns outputs into
    per-target scores ``[B,T]`` for images ``img`` ``[B]`` (a row's image in the original batch);
    an image with fewer targets than ``T`` scores 0 in the missing slots, so its gradient there is 0.
    """

    model: LoadedModel
    targets: Targets
    rows: list[list[int]] | None = None
    fold: bool = False  # gradient methods: class scores from the copy with batch norms folded (.folded)
    blackbox: bool = False  # perturbation methods: class scores from the model's runtime (onnxruntime for ONNX)
    region: RegionScores | None = None  # region targets: the region weights, fixed at resolve
    box_score: BoxScore = "match"  # how box targets are scored (.boxes)
    _index: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.targets, UnitTarget):
            validate_layer(self.model, self.targets.layer, spatial=False)

    @property
    def is_unit(self) -> bool:
        return isinstance(self.targets, UnitTarget)

    @property
    def is_region(self) -> bool:
        return isinstance(self.targets, RegionTargets)

    @property
    def module(self) -> torch.nn.Module:
        """The network :meth:`outputs` runs: with ``fold``, for class scores, the copy with batch norms
        folded into their convolutions (:mod:`.fast.folded`: the same function, cheaper gradients); else
        the served module (a unit names its layers; perturbation methods compare against the
        served module's own scores, as the incremental occlusion engine computes them)."""
        if self.is_unit:
            return self.model.module
        if self.fold:
            return folded_module(self.model)
        return self.model.runtime_module if self.blackbox else self.model.module

    def outputs(self, x: torch.Tensor) -> torch.Tensor:
        """One forward pass, under the engine call's precision (:func:`cnnviz.precision.forward_precision`)."""
        if isinstance(self.targets, BoxTargets):
            return self.head(self.module(x), x.shape[0])
        if not isinstance(self.targets, UnitTarget):
            with forward_precision():
                out = self.module(x)
            return segmentation_logits(out) if self.is_region else out
        unit = self.targets
        cap = LayerCapture()

        def hook(mod: Any, inp: tuple[Any, ...], out: Any) -> Any:
            cap(mod, inp, out)
            raise _Stop

        try:
            with thread_hooks([(self.model.submodule(unit.layer), hook)]), forward_precision():
                self.model.module(x)
        except _Stop:
            pass
        if cap.output is None:
            raise EngineError("layer-not-run", f"layer {unit.layer!r} did not run in the forward pass")
        # A unit of a token layer (ViT) or a channels-last one (Swin) is a channel of its grid.
        return unit.score(to_grid(cap.output, self.model.layer(unit.layer)))[:, None]

    def head(self, output: Any, n: int) -> torch.Tensor:
        """The ``[n, T]`` scores of a raw network output: for box targets, each row against every box."""
        if isinstance(self.targets, BoxTargets):
            return box_scores(self.model, output, n, self.targets, self.box_score)
        return output

    def resolve(self, out: torch.Tensor) -> list[list[int]]:
        """Targets per image from the outputs of the original images (top-k needs no new forward)."""
        if isinstance(self.targets, BoxTargets):
            self.rows = self.targets.columns()
        elif isinstance(self.targets, UnitTarget):
            self.rows = [[self.targets.channel] for _ in range(out.shape[0])]
        elif isinstance(self.targets, RegionTargets):
            self.region = self.targets.scorer(out)
            self.rows = self.region.rows
        else:
            self.rows = self.targets.resolve(out)
        self._index.clear()
        return self.rows

    @property
    def n_targets(self) -> int:
        assert self.rows is not None
        return max(len(r) for r in self.rows)

    def index(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Column of each image's t-th target ``[N,T]`` and whether it exists ``[N,T]``."""
        assert self.rows is not None
        cached = self._index.get(device)
        if cached is not None:
            return cached
        t = self.n_targets
        if self.is_unit:
            idx = torch.zeros(len(self.rows), 1, dtype=torch.long)
        else:
            idx = torch.tensor([r + [r[0]] * (t - len(r)) for r in self.rows])
        live = torch.tensor([[j < len(r) for j in range(t)] for r in self.rows])
        self._index[device] = (idx.to(device), live.to(device))
        return self._index[device]

    def pick(self, out: torch.Tensor, img: torch.Tensor) -> torch.Tensor:
        if self.region is not None:  # a segmenter's [B,C,h,w] map: each class summed over its region first
            out = self.region(out, img)
        idx, live = self.index(out.device)
        return out.gather(1, idx[img]) * live[img].to(out.dtype)

    def scores(self, out: torch.Tensor) -> tuple[list[list[float]], list[list[float | None]]]:
        """Reported score (logit or unit value) and probability of each image's targets."""
        assert self.rows is not None
        if isinstance(self.targets, BoxTargets):
            assert self.targets.resolved is not None  # the detection's own score; no class probability
            return [[r.score for r in refs] for refs in self.targets.resolved], [[None] * len(r) for r in self.rows]
        if self.is_unit:
            return [[float(v)] for v in out[:, 0].detach().float()], [[None] for _ in self.rows]
        if self.region is not None:
            return region_scores(self.region(out).detach(), self.rows)
        return class_scores(out, self.rows, self.model.head)


METHODS: dict[str, Method] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make a method reachable by its name (its map kinds checked first)."""
    kinds = cls.map_kinds
    if not kinds or len(set(kinds)) != len(kinds) or any(k not in MAP_KINDS for k in kinds):
        raise TypeError(f"method {cls.__name__} must declare map_kinds: distinct kinds of {MAP_KINDS}, its default"
                        f" first (got {kinds!r})")
    METHODS[cls.name] = cls()
    return cls


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise EngineError("unknown-method", f"unknown method {name!r}", closest(name, sorted(METHODS))) from None


def gradient_free_methods(model: LoadedModel | None = None) -> list[str]:
    """Registered methods that take no backward pass (``needs_gradients`` False), by name.

    Derived from the registry, so a new gradient-free method is offered here by its class alone.
    With ``model``, only those that answer for it (:meth:`Method.unavailable`: a TorchScript
    archive exposes no layer, so the CAM family cannot read one; attention rollout needs a ViT).
    """
    return sorted(name for name, m in METHODS.items()
                  if not m.needs_gradients and (model is None or m.unavailable(model) is None))


def require_gradients(model: LoadedModel, method: str) -> None:
    """Refuse a method that needs the backward pass on a model without one, naming those that answer."""
    if not model.gradients:
        why = ("is marked gradients = false in the models file" if not model.spec.gradients
               else "has no backward pass")
        usable = gradient_free_methods(model)
        raise EngineError("gradients-unavailable", f"{method} needs gradients, but model {model.name} {why};"
                          f" gradient-free methods that answer for it: {', '.join(usable) or 'none'}",
                          usable, model=model.name)


def default_batch(x: torch.Tensor) -> int:
    """Inputs per forward for batched sweeps when the client does not say.

    Measured on the default model: a 2-core CPU is fastest with small channels_last batches (4;
    bigger batches fall out of cache and run slower per image), a GPU wants large ones.
    """
    return 64 if x.device.type == "cuda" else 4


ScoreFn = Callable[[torch.Tensor], torch.Tensor]


def checkpoint_rows(model: LoadedModel, rows: int, x: torch.Tensor, per_row: float = 1.0) -> None:
    """Report a finished chunk of a sweep to :func:`cnnviz.progress.checkpoint` (progress, and a cancel).

    ``rows`` inputs of ``x``'s height and width, ``per_row`` forward-pass equivalents each (a
    forward and T backwards: ``1 + 2T``), counted as the cost estimates count: forward passes of
    one image at the model's input size. A sweep calls it once per chunk, outside any inner loop.
    """
    if x.dim() != 4:  # a signal or volume model: its inputs are always fitted to its one grid
        checkpoint(rows * per_row)
        return
    h, w = x.shape[-2:]
    checkpoint(rows * per_row * h * w / model.preprocessing.input_size ** 2)
