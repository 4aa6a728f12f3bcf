"""The pointing game and the energy-based pointing game inside a region given as a mask.

A segmenter's region target has the shape of the class's predicted mask (or of a polygon), not of a
box, so the two localization checks ask about the mask itself: whether the map's maximum lands in
it (Zhang et al. 2016, with their tolerance grown around the mask instead of a box) and how much of
the map's positive mass lies inside it (the energy-based pointing game of Score-CAM, Wang et al.
2020), which a map that merely peaks in the right place but spreads everywhere does not pass.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["energy_in_mask", "mask_pointing_game"]


def _check(m: Tensor, mask: Tensor) -> None:
    if not isinstance(m, Tensor) or m.ndim != 2 or m.numel() == 0:
        raise ValueError(f"map must be a non-empty 2-D tensor [h, w], got {getattr(m, 'shape', None)}")
    if not isinstance(mask, Tensor) or mask.ndim != 2 or mask.numel() == 0:
        raise ValueError(f"mask must be a non-empty 2-D tensor [H, W], got {getattr(mask, 'shape', None)}")


def mask_pointing_game(m: Tensor, mask: Tensor, tolerance: int = 0) -> bool:
    """Whether the maximum of map ``m`` ``[h, w]`` falls in ``mask`` ``[H, W]`` grown by ``tolerance`` px.

    The maximum's map pixel is taken to the image pixel under its centre, as :func:`pointing_game`
    does for a box; the first maximum in raster order counts.
    """
    _check(m, mask)
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    h, w = m.shape
    img_h, img_w = mask.shape
    flat = int(torch.argmax(m.detach().reshape(-1)))
    my, mx = divmod(flat, w)
    px = min(img_w - 1, math.floor((mx + 0.5) * img_w / w))
    py = min(img_h - 1, math.floor((my + 0.5) * img_h / h))
    if tolerance == 0:
        return bool(mask[py, px])
    y0, y1 = max(0, py - tolerance), min(img_h, py + tolerance + 1)
    x0, x1 = max(0, px - tolerance), min(img_w, px + tolerance + 1)
    return bool(mask[y0:y1, x0:x1].any())  # (a square neighbourhood, as the box version grows the box)


def energy_in_mask(m: Tensor, mask: Tensor) -> float:
    """Share of the positive part of ``m`` (resized bilinearly to the mask's size) that lies inside ``mask``.

    0 where the map has no positive value at all (it points nowhere).
    """
    _check(m, mask)
    up = m.detach().float()
    if tuple(up.shape) != tuple(mask.shape):
        up = F.interpolate(up[None, None], size=tuple(mask.shape), mode="bilinear", align_corners=False)[0, 0]
    pos = up.clamp_min(0)
    total = float(pos.sum())
    return float(pos[mask.bool().to(pos.device)].sum()) / total if total > 0 else 0.0
