"""What every attribution method shares: targets, the result type, the registry and the one verb.

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

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from ..errors import EngineError, closest
from ..models import LoadedModel
from ..models.catalog import require_gradients
from ..params import NoParams, Params
from ..precision import run_precision
from ..progress import checkpoint


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


Targets = ClassTargets | UnitTarget


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


class Method:
    """Base of all methods: a name, a family, its typed parameters, a cost estimate, and ``attribute``."""

    name: ClassVar[str]
    family: ClassVar[str]
    title: ClassVar[str] = ""
    supports_units: ClassVar[bool] = False
    uses_layer: ClassVar[bool] = False
    needs_gradients: ClassVar[bool] = False  # takes a backward pass: refused on models without one
    Params: ClassVar[type[Params]] = NoParams

    def attribute(self, model: LoadedModel, x: torch.Tensor, targets: Targets, layer: str | None = None,
                  params: Params | None = None, *, precision: str | None = None, **kwargs: Any) -> Explanation:
        """The one verb: checked parameters in, raw maps out.

        ``precision`` (fp32 | bf16 | fp16; None: an enclosing call's, else fp32) is the precision of
        the network's forward passes. One the device does not offer is an engine error
        (``precision-unsupported``); one the method declines for these parameters
        (:meth:`full_precision_reason`) runs fp32 with a warning. A top-level call records the
        precision that really ran in ``extras["precision"]``; maps are float32 either way.
        """
        typed = self.Params.build(params, **kwargs)
        if self.needs_gradients:
            require_gradients(model, self.name)
        reason = self.full_precision_reason(model, targets, typed) if precision not in (None, "fp32") else None
        with run_precision(model.device, precision, reason) as run:
            result = self.run(model, x, targets, layer, typed)
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
        if self.needs_gradients and not model.gradients:
            return "needs gradients"
        if self.uses_layer and model.default_layer is None:
            return "needs a layer output; the model exposes none"
        return None

    def run(self, model: LoadedModel, x: torch.Tensor, targets: Targets, layer: str | None,
            params: Any) -> Explanation:
        """What a family does with checked parameters (an instance of :attr:`Params`)."""
        raise NotImplementedError

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


METHODS: dict[str, Method] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make a method reachable by its name."""
    METHODS[cls.name] = cls()
    return cls


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise EngineError("unknown-method", f"unknown method {name!r}", closest(name, sorted(METHODS))) from None


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
    h, w = x.shape[-2:]
    checkpoint(rows * per_row * h * w / model.preprocessing.input_size ** 2)
