"""Random, differentiable image transforms applied before each forward pass (transformation robustness).

Olah et al. (2017) show that optimizing an image to stay strong under small random jitter, scaling
and rotation removes most high-frequency adversarial patterns. Every transform here has the loop's
``(x, generator) -> x`` signature, draws its randomness from the loop's seeded generator (so a run
is reproducible), and is built from differentiable ops (pad, roll, grid_sample) so gradients reach
whatever parameterization produced ``x``. :class:`~cnnviz.synthesis.loop.Jitter` lives in the loop.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F

from cnnviz.errors import EngineError

from .loop import Jitter, Transform


class Pad:
    """Pad by ``px`` on every side (grey by default), so the borders are not special for jitter.

    The image grows by ``2 * px``; neuron objectives re-centre themselves on the larger grid.
    """

    def __init__(self, px: int, mode: Literal["constant", "reflect", "replicate"] = "constant",
                 value: float = 0.5) -> None:
        self.px = int(px)
        self.mode = mode
        self.value = float(value)

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        if self.px <= 0:
            return x
        if self.mode == "constant":
            return F.pad(x, (self.px,) * 4, mode="constant", value=self.value)
        return F.pad(x, (self.px,) * 4, mode=self.mode)


class RandomAffine:
    """Random zoom in ``scale`` = (lo, hi) and rotation in [-degrees, degrees], size unchanged.

    One ``grid_sample`` does both (bilinear, reflected borders). The rotation is in pixel units,
    so non-square images are not sheared.
    """

    def __init__(self, scale: tuple[float, float] = (1.0, 1.0), degrees: float = 0.0) -> None:
        lo, hi = float(scale[0]), float(scale[1])
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo <= 0 or hi < lo:
            raise EngineError("bad-parameter", f"scale range must be finite with 0 < lo <= hi, got {scale}")
        if not math.isfinite(float(degrees)):
            raise EngineError("bad-parameter", f"degrees must be finite, got {degrees}")
        self.scale = (lo, hi)
        self.degrees = float(degrees)

    @property
    def identity(self) -> bool:
        return self.scale == (1.0, 1.0) and self.degrees == 0.0

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        if self.identity:
            return x
        u = torch.rand(2, generator=gen, dtype=torch.float64)
        s = self.scale[0] + (self.scale[1] - self.scale[0]) * float(u[0])
        a = math.radians(self.degrees * (2 * float(u[1]) - 1))
        h, w = x.shape[-2:]
        cos, sin = math.cos(a) / s, math.sin(a) / s
        theta = torch.tensor([[cos, -sin * h / w, 0.0], [sin * w / h, cos, 0.0]], dtype=x.dtype, device=x.device)
        grid = F.affine_grid(theta.unsqueeze(0).expand(x.shape[0], 2, 3), list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


class UpsampleTo:
    """Bilinear upsampling so the short side is at least ``side`` (the network's input size).

    A picture smaller than the network's input would otherwise be optimized at a scale the network
    never saw in training: its objects come out tiny and drowned in texture. Lucent upsamples
    every image under 224 px the same way before the forward pass.
    """

    def __init__(self, side: int) -> None:
        self.side = int(side)

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        h, w = x.shape[-2:]
        if min(h, w) >= self.side:
            return x
        s = self.side / min(h, w)
        return F.interpolate(x, size=(round(h * s), round(w * s)), mode="bilinear", align_corners=False)


def robustness_transforms(jitter: int = 0, scale: Sequence[float] = (1.0, 1.0), degrees: float = 0.0,
                          pad: int = 0, min_side: int = 0) -> list[Transform]:
    """Lucid's standard order: pad, jitter, scale + rotate, a small jitter again, then (with
    ``min_side``) upsampling to the network's input size."""
    out: list[Transform] = []
    if pad > 0:
        out.append(Pad(pad))
    if jitter > 0:
        out.append(Jitter(jitter))
    affine = RandomAffine((float(scale[0]), float(scale[1])), degrees)
    if not affine.identity:
        out.append(affine)
        if jitter > 0:
            out.append(Jitter(max(1, jitter // 2)))
    if min_side > 0:
        out.append(UpsampleTo(min_side))
    return out


def fit_long_side(image: torch.Tensor, long_side: int) -> torch.Tensor:
    """``[3, H, W]`` resized so its long side is ``long_side``, keeping the aspect ratio."""
    h, w = image.shape[-2:]
    s = long_side / max(h, w)
    size = (max(1, round(h * s)), max(1, round(w * s)))
    if size == (h, w):
        return image.clamp(0, 1)
    return F.interpolate(image.unsqueeze(0), size=size, mode="bilinear", antialias=True,
                         align_corners=False)[0].clamp(0, 1)
