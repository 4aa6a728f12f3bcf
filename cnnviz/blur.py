"""The engine's one Gaussian blur, for every tensor that needs one.

Four places blur: integrated gradients' and occlusion's ``blurred`` reference input, the periodic
blur of feature visualization (Yosinski et al. 2015), the smoothing of a map before its top region
is outlined, and the insertion baseline of the faithfulness curves. They differ only in what
happens at the border, so that is the one choice (:data:`Border`) a caller makes:

``reflect``
    Mirror the image without repeating the edge pixel (numpy's and torch's ``reflect``). Used for
    images and reference inputs: no band of repeated pixels at the frame. A mirror cannot reach
    further than the image is wide, so the kernel is cut to ``side - 1`` pixels each way (an
    image one pixel high or wide is returned as it is).
``replicate``
    Repeat the edge pixel, so a blur never darkens or brightens the frame (maps, the insertion
    baseline). Any kernel size works.

The kernel is a sampled Gaussian, normalized to sum 1, of radius ``ceil(3 sigma)`` (at least 1),
applied separably (rows, then columns), which equals the 2-D convolution with the outer product
of the 1-D kernel. Blurring is linear, so blurring a normalized input equals normalizing the
blurred pixels.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

Border = Literal["reflect", "replicate"]


def gaussian_kernel1d(sigma: float, radius: int, dtype: torch.dtype = torch.float32,
                      device: torch.device | str | None = None) -> torch.Tensor:
    """The normalized 1-D Gaussian ``exp(-t^2 / 2 sigma^2)`` at ``t = -radius..radius``, summing to 1."""
    t = torch.arange(-radius, radius + 1, dtype=dtype, device=device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def blur_radius(sigma: float, height: int, width: int, border: Border = "reflect") -> int:
    """Half-width of the kernel :func:`gaussian_blur` uses; 0 means the input is returned unchanged."""
    if sigma <= 0:
        return 0
    radius = max(1, math.ceil(3 * sigma))
    if border == "reflect":
        radius = min(radius, height - 1, width - 1)
    return max(radius, 0)


def gaussian_blur(x: torch.Tensor, sigma: float, border: Border = "reflect") -> torch.Tensor:
    """Separable Gaussian blur of the last two dimensions of ``x`` (``[H, W]``, ``[C, H, W]``, ``[N, C, H, W]``).

    Every leading index (image, channel) is blurred on its own with the same kernel, on ``x``'s
    device and in its dtype (the kernel is computed in float32 for half-precision inputs).
    ``sigma <= 0`` returns ``x`` itself.
    """
    if border not in ("reflect", "replicate"):
        raise ValueError(f"unknown border {border!r}; valid: reflect, replicate")
    if x.dim() < 2:
        raise ValueError(f"gaussian_blur needs at least [H, W], got {tuple(x.shape)}")
    h, w = int(x.shape[-2]), int(x.shape[-1])
    radius = blur_radius(sigma, h, w, border)
    if radius == 0:
        return x
    exact = x.dtype in (torch.float32, torch.float64)
    k = gaussian_kernel1d(sigma, radius, x.dtype if exact else torch.float32, x.device).to(x.dtype)
    y = x.reshape(-1, 1, h, w)  # every leading index is one single-channel image
    y = F.pad(y, (radius, radius, radius, radius), mode=border)
    y = F.conv2d(y, k.view(1, 1, 1, -1))
    y = F.conv2d(y, k.view(1, 1, -1, 1))
    return y.reshape(x.shape)


def gaussian_blur_grid(x: torch.Tensor, sigma: float, border: Border = "reflect") -> torch.Tensor:
    """Separable Gaussian blur of a batch ``[N,C,*grid]`` along every grid axis: 1, 2 or 3 of them.

    A 2-D grid is :func:`gaussian_blur` itself (the image path, bit for bit); a signal ``[N,C,L]``
    is blurred along time, a volume ``[N,C,D,H,W]`` along each of its three axes in turn, with the
    same kernel and the same border rule (a reflected kernel is cut to the shortest axis).
    """
    dims = x.dim() - 2
    if dims == 2:
        return gaussian_blur(x, sigma, border)
    sides = [int(s) for s in x.shape[2:]]
    radius = blur_radius(sigma, min(sides), min(sides), border)
    if radius == 0:
        return x
    exact = x.dtype in (torch.float32, torch.float64)
    k = gaussian_kernel1d(sigma, radius, x.dtype if exact else torch.float32, x.device).to(x.dtype)
    y = x
    for axis in range(2, x.dim()):
        moved = y.movedim(axis, -1)
        flat = moved.reshape(-1, 1, moved.shape[-1])
        flat = F.conv1d(F.pad(flat, (radius, radius), mode=border), k.view(1, 1, -1))
        y = flat.reshape(moved.shape).movedim(-1, axis)
    return y
