"""What every attribution method shares: targets, the result type, the registry and the one verb.

Like captum, every method is called the same way::

    method = get_method("gradcam")
    result = method.attribute(model, x, ClassTargets(top_k=3), layer=None, **params)

``x`` is a normalized ``[N,3,H,W]`` batch already on the model's device; the result holds one raw
map per image and target, at the method's native resolution, on the CPU. Rendering, resizing to
the client's image and HTTP shaping happen elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from ..models import LoadedModel


class AttributionError(ValueError):
    """A request the method cannot serve (bad layer, bad target, undefined for this head...).

    ``slug`` is a stable machine-readable reason; ``choices`` lists valid alternatives if any.
    """

    def __init__(self, slug: str, message: str, choices: list[Any] | None = None) -> None:
        super().__init__(message)
        self.slug = slug
        self.choices = choices


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
            raise AttributionError("bad-targets", f"got target lists for {len(self.indices)} images, expected {n}")
        rows = [list(self.indices[0 if len(self.indices) == 1 else i]) for i in range(n)]
        for row in rows:
            for t in row:
                if not 0 <= t < c:
                    raise AttributionError("unknown-class", f"class index {t} is outside 0..{c - 1}")
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
            raise AttributionError("unknown-channel",
                                   f"channel {self.channel} is outside 0..{act.shape[1] - 1} of {self.layer}")
        a = act[:, self.channel]
        if self.y is None or a.dim() == 1:
            return a.reshape(a.shape[0], -1).mean(1)
        h, w = a.shape[-2:]
        if not (0 <= self.y < h and 0 <= (self.x or 0) < w):
            raise AttributionError("bad-position", f"neuron ({self.y},{self.x}) is outside {h}x{w} of {self.layer}")
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


def validate_layer(model: LoadedModel, layer: str | None, *, spatial: bool = True) -> str:
    """The layer to use: the model's default, or a named one that exists (and is spatial if needed)."""
    if layer is None:
        return model.default_layer
    if not model.has_layer(layer):
        candidates = [li.name for li in model.layers if li.spatial] if spatial else [li.name for li in model.layers]
        raise AttributionError("unknown-layer", f"model {model.name} has no layer {layer!r}", candidates[-40:])
    if spatial and not model.layer(layer).spatial:
        raise AttributionError("layer-not-spatial", f"layer {layer!r} has output {model.layer(layer).output_shape};"
                               " this method needs a spatial [C,h,w] output")
    return layer


def target_scores(logits: torch.Tensor, rows: list[list[int]], t: int) -> torch.Tensor:
    """Sum over images of the ``t``-th target's logit (images with fewer targets add nothing).

    Images in a batch are independent (eval-mode batch norm), so one gradient of this sum gives
    every image its own gradient.
    """
    mask = torch.tensor([len(r) > t for r in rows], device=logits.device)
    idx = torch.tensor([r[t] if len(r) > t else 0 for r in rows], device=logits.device)
    picked = logits.gather(1, idx[:, None])[:, 0]
    return (picked * mask).sum()


def class_scores(logits: torch.Tensor, rows: list[list[int]]) -> tuple[list[list[float]], list[list[float | None]]]:
    probs = logits.detach().float().softmax(1)
    lg = logits.detach().float()
    scores = [[float(lg[i, c]) for c in row] for i, row in enumerate(rows)]
    prob = [[float(probs[i, c]) for c in row] for i, row in enumerate(rows)]
    return scores, prob


class Method:
    """Base of all methods: a name, a family, a cost estimate, and ``attribute``."""

    name: ClassVar[str]
    family: ClassVar[str]
    title: ClassVar[str] = ""
    supports_units: ClassVar[bool] = False
    uses_layer: ClassVar[bool] = False

    def attribute(self, model: LoadedModel, x: torch.Tensor, targets: Targets, layer: str | None = None,
                  **params: Any) -> Explanation:
        raise NotImplementedError

    def cost(self, model: LoadedModel, n_images: int, n_targets: int, params: dict[str, Any]) -> float:
        """Estimated work in forward-pass equivalents at the model's input size (a backward ~ 2)."""
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
        raise AttributionError("unknown-method", f"unknown method {name!r}", sorted(METHODS)) from None


def default_batch(x: torch.Tensor) -> int:
    """Inputs per forward for batched sweeps when the client does not say.

    Measured on the default model: a 2-core CPU is fastest with small channels_last batches (4;
    bigger batches fall out of cache and run slower per image), a GPU wants large ones.
    """
    return 64 if x.device.type == "cuda" else 4


ScoreFn = Callable[[torch.Tensor], torch.Tensor]
