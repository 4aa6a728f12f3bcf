"""Map normalization, resizing, alpha overlays and box outlines, all in torch.

Everything here runs on the tensors' own device and never round-trips through NumPy, because it
sits on the inline explanation path after the model forward/backward.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

NormalizeMode = Literal["minmax", "max", "signed", "none"]


def normalize_map(m: torch.Tensor, mode: NormalizeMode = "minmax") -> torch.Tensor:
    """Bring a raw map into [0, 1] so a colormap can show it.

    - ``minmax``: (m - min) / (max - min); a constant map becomes zeros (nothing stands out).
    - ``max``: negatives dropped, divided by the max (keeps 0 meaning "no evidence").
    - ``signed``: m / (2 max|m|) + 0.5, so 0.5 is zero (for diverging maps such as coolwarm).
    - ``none``: values kept, only clamped to [0, 1].
    NaNs are treated as 0 so a broken map still renders instead of failing.
    """
    x = torch.nan_to_num(m.float(), nan=0.0)
    if mode == "minmax":
        lo, hi = x.min(), x.max()
        span = hi - lo
        if not torch.isfinite(span) or span <= 0:
            return torch.zeros_like(x)
        return ((x - lo) / span).clamp(0.0, 1.0)
    if mode == "max":
        x = x.clamp(min=0.0)
        hi = x.max()
        if not torch.isfinite(hi) or hi <= 0:
            return torch.zeros_like(x)
        return (x / hi).clamp(0.0, 1.0)
    if mode == "signed":
        a = x.abs().max()
        if not torch.isfinite(a) or a <= 0:
            return torch.full_like(x, 0.5)
        return (x / (2.0 * a) + 0.5).clamp(0.0, 1.0)
    if mode == "none":
        return x.clamp(0.0, 1.0)
    raise ValueError(f"unknown normalization mode {mode!r}; valid: minmax, max, signed, none")


def resize_map(m: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinearly resize a float map [h, w] to ``size`` = (H, W) (align_corners=False).

    Used to bring a coarse layer map up to the input or original image size.
    """
    if m.dim() != 2:
        raise ValueError(f"expected a map of shape [h, w], got {tuple(m.shape)}")
    h, w = int(size[0]), int(size[1])
    if h <= 0 or w <= 0:
        raise ValueError(f"target size must be positive, got {size}")
    x = m if m.is_floating_point() else m.float()
    if tuple(x.shape) == (h, w):
        return x.clone()
    return F.interpolate(x[None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]


def _check_rgb_u8(t: torch.Tensor, what: str) -> None:
    if t.dim() != 3 or t.shape[2] != 3 or t.dtype != torch.uint8:
        raise ValueError(f"{what} must be uint8 [H, W, 3], got {t.dtype} {tuple(t.shape)}")


def overlay(image: torch.Tensor, heat: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """Alpha-blend a colored heatmap over an image: (1 - alpha) * image + alpha * heat.

    ``heat`` is bilinearly resized to the image size when they differ, so a map rendered at the
    network's input size can be laid over the client's original image.
    """
    _check_rgb_u8(image, "image")
    _check_rgb_u8(heat, "heat")
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    h, w = image.shape[0], image.shape[1]
    hf = heat.to(image.device).float()
    if heat.shape[:2] != image.shape[:2]:
        hf = F.interpolate(hf.permute(2, 0, 1)[None], size=(h, w), mode="bilinear",
                           align_corners=False)[0].permute(1, 2, 0)
    out = image.float() * (1.0 - alpha) + hf * alpha
    return out.round().clamp(0.0, 255.0).to(torch.uint8)


def _span(a: int, b: int, n: int) -> tuple[int, int]:
    """Clip the half-open range [a, b) to [0, n)."""
    return max(a, 0), min(b, n)


def draw_boxes(
    image: torch.Tensor,
    boxes: Sequence[tuple[int, int, int, int]],
    color: tuple[int, int, int] = (0, 255, 0),
    width: int = 2,
) -> torch.Tensor:
    """Return a copy of ``image`` with rectangle outlines drawn inside each box.

    Boxes are (x0, y0, x1, y1) with x1/y1 exclusive; the outline lies inside the box (its
    outermost pixels are x0, y0, x1 - 1, y1 - 1) and is clipped to the image, so boxes partly
    or wholly outside never fail.
    """
    _check_rgb_u8(image, "image")
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    out = image.clone()
    H, W = out.shape[0], out.shape[1]
    c = torch.tensor([int(v) for v in color], dtype=torch.uint8, device=out.device)
    for box in boxes:
        x0, y0, x1, y1 = (int(v) for v in box)
        if x1 <= x0 or y1 <= y0:
            continue
        wx, wy = min(width, x1 - x0), min(width, y1 - y0)
        cx0, cx1 = _span(x0, x1, W)
        cy0, cy1 = _span(y0, y1, H)
        if cx0 >= cx1 or cy0 >= cy1:
            continue
        # top and bottom bands, then left and right bands
        for ra, rb in ((y0, y0 + wy), (y1 - wy, y1)):
            a, b = _span(ra, rb, H)
            if a < b:
                out[a:b, cx0:cx1] = c
        for ca, cb in ((x0, x0 + wx), (x1 - wx, x1)):
            a, b = _span(ca, cb, W)
            if a < b:
                out[cy0:cy1, a:b] = c
    return out
