"""Polygons and boxes as pixel masks, and a mask's outline: the geometry of region targets.

A region target (a class and a region of a segmenter's output) names its region as a box or a
polygon in image pixels; the engine needs it as a boolean mask at the network's input size, the
pictures need it at the output size, and the synthetic scenes draw their shapes the same way. One
rule serves all of them: a pixel belongs to the polygon when its *centre* ``(x + 0.5, y + 0.5)`` is
inside (even-odd rule), so a box ``(x0, y0, x1, y1)`` with exclusive ``x1, y1`` covers exactly the
pixels ``x0..x1-1``, ``y0..y1-1`` and a polygon of the same corners covers the same pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["box_polygon", "mask_outline", "polygon_mask", "scale_points"]

Point = tuple[float, float]


def polygon_mask(points: Sequence[Point] | torch.Tensor, height: int, width: int,
                 device: torch.device | str = "cpu") -> torch.Tensor:
    """Boolean ``[height, width]`` mask of the pixels whose centres lie inside the polygon ``points`` (x, y).

    Even-odd rule, vectorized over all pixels and edges at once (a crossing count per pixel), so a
    polygon of a few hundred vertices at 2048 px stays a handful of tensor operations.
    """
    pts = torch.as_tensor(points, dtype=torch.float64, device=device).reshape(-1, 2)
    if pts.shape[0] < 3:
        raise ValueError(f"a polygon needs at least 3 points, got {pts.shape[0]}")
    ys = torch.arange(height, dtype=torch.float64, device=device) + 0.5
    xs = torch.arange(width, dtype=torch.float64, device=device) + 0.5
    x0, y0 = pts[:, 0], pts[:, 1]
    x1, y1 = pts.roll(-1, 0)[:, 0], pts.roll(-1, 0)[:, 1]
    # Edges that straddle each row's centre line, and where they cross it: [H, E].
    straddle = (y0[None] > ys[:, None]) != (y1[None] > ys[:, None])
    dy = torch.where(y1 == y0, torch.ones_like(y1), y1 - y0)
    cross_x = x0[None] + (ys[:, None] - y0[None]) * (x1 - x0)[None] / dy[None]
    # A pixel is inside when an odd number of crossings lie to its right: [H, W, E] summed over edges.
    right = (cross_x[:, None, :] > xs[None, :, None]) & straddle[:, None, :]
    return (right.sum(-1) % 2).bool()


def box_polygon(box: Sequence[float]) -> list[Point]:
    """The four corners of a box ``(x0, y0, x1, y1)`` (x1, y1 exclusive), clockwise from the top left."""
    x0, y0, x1, y1 = (float(v) for v in box)
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def scale_points(points: Sequence[Point], sx: float, sy: float, dx: float = 0.0, dy: float = 0.0) -> list[Point]:
    """Points mapped by ``x * sx - dx, y * sy - dy`` (from one image's pixels to a resized or cropped one's)."""
    return [(x * sx - dx, y * sy - dy) for x, y in points]


def mask_outline(mask: torch.Tensor, width: int = 2) -> torch.Tensor:
    """The pixels of ``mask`` ``[H, W]`` within ``width`` px of its border (a band inside the region).

    Drawn over a picture, the band shows the region's exact extent without covering what is inside;
    a region touching the picture's edge is outlined there too (the frame counts as outside).
    """
    m = mask.bool()[None, None].float()
    k = 2 * max(1, int(width)) + 1
    inside = -F.max_pool2d(-F.pad(m, [k // 2] * 4, value=0.0), k, stride=1)  # erosion, outside = 0
    return (m - inside)[0, 0] > 0
