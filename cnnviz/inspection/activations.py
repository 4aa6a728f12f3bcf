"""Activation maps of any layer for an image: the strongest channels and their statistics."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..hooks import LayerCapture, capture
from ..models import LoadedModel, validate_layer


@dataclass
class ChannelStats:
    channel: int
    mean: float
    max: float
    active_fraction: float  # share of positions with activation > 0


@dataclass
class LayerActivations:
    layer: str
    shape: tuple[int, ...]
    channels: list[ChannelStats]  # the selected channels, strongest first
    maps: torch.Tensor  # [n, h, w] float on CPU, same order as ``channels``


def layer_activations(model: LoadedModel, x: torch.Tensor, layer: str | None, top: int = 16,
                      channels: list[int] | None = None, rank_by: str = "mean") -> LayerActivations:
    """One forward of a single image ``x`` ``[1,3,H,W]``; keep ``channels`` or the ``top`` strongest."""
    layer = validate_layer(model, layer)
    cap = LayerCapture()
    with capture(model.module, {layer: cap}), torch.inference_mode():
        model.module(x)
    a = cap.output[0].float()  # [C,h,w]
    n_ch = a.shape[0]
    flat = a.flatten(1)
    means, maxes = flat.mean(1), flat.amax(1)
    if channels:
        bad = [c for c in channels if not 0 <= c < n_ch]
        if bad:
            from ..errors import EngineError

            raise EngineError("unknown-channel", f"channels {bad} outside 0..{n_ch - 1} of {layer}")
        order = torch.tensor(channels)
    else:
        score = maxes if rank_by == "max" else means
        order = score.argsort(descending=True)[: min(top, n_ch)]
    active = (flat > 0).float().mean(1)
    stats = [ChannelStats(int(c), float(means[c]), float(maxes[c]), float(active[c])) for c in order]
    return LayerActivations(layer, tuple(a.shape), stats, a[order].cpu())
