"""Objectives from hooked layer outputs, for :func:`cnnviz.synthesis.loop.optimize` (which maximizes).

The loop's :func:`~cnnviz.synthesis.loop.layer_objective` already covers a channel's mean and a
layer's mean square (DeepDream); this module adds the class logit, single neurons, and the
matching losses of inversion, texture and style (feature distance, Gram matrices). Losses are
written as things to minimize and turned into objectives with :func:`maximize`, because papers
state them that way and histories read more naturally as falling losses.

The whole network's output is hooked under the name :data:`LOGITS` (``""``: ``get_submodule("")``
is the model itself), so the class logit needs no knowledge of the head's module name.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from cnnviz.errors import EngineError
from cnnviz.models import LoadedModel

from .loop import Callbacks, Objective, layer_objective

LOGITS = ""
Loss = Callable[[dict[str, torch.Tensor]], torch.Tensor]

__all__ = ["LOGITS", "Loss", "check_layers", "class_logit", "channel_mean", "neuron", "gram", "relative_distance",
           "feature_loss", "gram_loss", "weighted", "maximize", "loss_callbacks", "layer_objective"]


def check_layers(model: LoadedModel, layers: Sequence[str]) -> None:
    """Unknown layer names are a client error with the valid choices, not a KeyError deep in a hook."""
    bad = [n for n in layers if n != LOGITS and not model.has_layer(n)]
    if bad:
        raise EngineError("unknown-layer", f"model {model.name!r} has no layer {bad[0]!r}",
                               choices=[li.name for li in model.layers if li.output_shape is not None])


def class_logit(index: int) -> Objective:
    """The class's pre-softmax score (Simonyan et al.: maximizing the softmax would mostly push
    the other classes down instead of making this one appear)."""

    def objective(acts: dict[str, torch.Tensor]) -> torch.Tensor:
        return acts[LOGITS][:, index].mean()

    return objective


def channel_mean(layer: str, channel: int) -> Objective:
    """A channel's spatial mean: the loop's objective, named for what it is."""
    return layer_objective(layer, "mean", channel)


def neuron(layer: str, channel: int, y: int, x: int, grid: tuple[int, int] | None = None) -> Objective:
    """One unit ``(channel, y, x)`` of a spatial layer.

    ``grid`` is the layer's ``(h, w)`` for the untransformed image; when padding enlarges the
    activation map, the position is shifted by half the growth so it stays on the same spot.
    """

    def objective(acts: dict[str, torch.Tensor]) -> torch.Tensor:
        a = acts[layer]
        if a.dim() != 4:
            raise EngineError("bad-position", f"layer {layer!r} has no spatial grid")
        h, w = a.shape[-2:]
        oy, ox = ((h - grid[0]) // 2, (w - grid[1]) // 2) if grid is not None else (0, 0)
        yy, xx = y + oy, x + ox
        if not (0 <= yy < h and 0 <= xx < w):
            raise EngineError("bad-position", f"neuron ({y},{x}) is outside {h}x{w} of {layer}")
        return a[:, channel, yy, xx].mean()

    return objective


def gram(a: torch.Tensor) -> torch.Tensor:
    """``[N, C, C]`` Gram matrix of ``[N, C, H, W]`` features, divided by H*W so that it does not
    depend on the image size (texture and style images need not match the output's size)."""
    f = a.flatten(2)
    return f @ f.transpose(1, 2) / f.shape[-1]


def relative_distance(a: torch.Tensor, target: torch.Tensor, norm: torch.Tensor | None = None) -> torch.Tensor:
    """``||a - target||^2 / ||target||^2`` (Mahendran & Vedaldi's normalized loss): scale-free, so
    one weight means the same at every layer of every model. ``norm`` is ``||target||^2`` if known."""
    norm = norm if norm is not None else target.pow(2).sum()
    return (a - target).pow(2).sum() / norm.clamp_min(1e-12)


def feature_loss(layer: str, target: torch.Tensor) -> Loss:
    """Relative distance between a layer's features and fixed target features (inversion, content)."""
    norm = target.pow(2).sum()  # once, not every step
    return lambda acts: relative_distance(acts[layer], target, norm)


def gram_loss(layer: str, target_gram: torch.Tensor) -> Loss:
    """Relative squared Frobenius distance between Gram matrices (texture, style)."""
    norm = target_gram.pow(2).sum()
    return lambda acts: relative_distance(gram(acts[layer]), target_gram, norm)


def weighted(terms: Sequence[tuple[float, Loss]]) -> Loss:
    """``sum(weight * loss)`` over several layers or kinds of loss."""
    active = [(float(w), f) for w, f in terms if w]

    def total(acts: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum((w * f(acts) for w, f in active), torch.zeros((), device=next(iter(acts.values())).device))

    return total


def maximize(loss: Loss) -> Objective:
    """The loop maximizes; a loss is minimized by maximizing its negative."""
    return lambda acts: -loss(acts)


def loss_callbacks(callbacks: Callbacks | None) -> Callbacks | None:
    """Callbacks that report the *loss* (the negated objective) to a caller's progress function."""
    if callbacks is None or callbacks.progress is None:
        return callbacks
    progress = callbacks.progress
    return Callbacks(progress=lambda step, total, stage, value: progress(step, total, stage, -value),
                     preview=callbacks.preview, preview_every=callbacks.preview_every, cancel=callbacks.cancel)
