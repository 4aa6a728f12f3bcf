"""First-layer filters as pictures: the weights of the first convolution, one tile per filter."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..models import LoadedModel


def first_conv(model: LoadedModel) -> tuple[str, nn.Conv2d]:
    """The first Conv2d in execution order (the layer whose filters live in pixel space)."""
    for li in model.layers:
        mod = model.submodule(li.name)
        if isinstance(mod, nn.Conv2d):
            return li.name, mod
    raise ValueError(f"model {model.name} has no Conv2d layer")


def filter_tiles(weight: torch.Tensor, scale: int = 8, per_filter: bool = True) -> list[torch.Tensor]:
    """Each filter ``[C,k,k]`` as a uint8 ``[k*scale,k*scale,3]`` tile.

    Normalizing each filter to its own range (``per_filter``) shows its pattern; one shared range
    shows which filters are strong. Three input channels are shown as RGB, anything else as the
    mean over input channels in grey.
    """
    w = weight.detach().float().cpu()
    if w.shape[1] != 3:
        w = w.mean(1, keepdim=True).expand(-1, 3, -1, -1)
    if per_filter:
        lo = w.flatten(1).min(1).values.view(-1, 1, 1, 1)
        hi = w.flatten(1).max(1).values.view(-1, 1, 1, 1)
    else:
        lo, hi = w.min(), w.max()
    w = (w - lo) / (hi - lo).clamp_min(1e-12)
    w = F.interpolate(w, scale_factor=scale, mode="nearest")
    return [(t.permute(1, 2, 0) * 255).round().to(torch.uint8) for t in w]
