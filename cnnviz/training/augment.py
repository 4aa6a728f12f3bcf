"""Seeded random views of an image: the content crops of fast style training and the augmented
views a triplet head learns invariance from.

Every function takes a :class:`torch.Generator`, so a run (and a resumed run) sees the same views.
Images are ``[3,H,W]`` float tensors in [0,1] on the CPU; a training collection is kept as uint8
(a quarter of the memory) and a crop becomes float only once it is cut out (:func:`resize`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _uniform(gen: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=gen))


def _randint(gen: torch.Generator, n: int) -> int:
    return int(torch.randint(0, max(1, n), (), generator=gen))


def to_float(image: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 or float 0..1 -> float 0..1."""
    return image.float().div_(255.0) if image.dtype == torch.uint8 else image.float()


def to_uint8(image: torch.Tensor) -> torch.Tensor:
    return image.clamp(0, 1).mul(255.0).round_().to(torch.uint8)


def resize(image: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """A float ``[3,h,w]`` of a float or uint8 image (antialiased bilinear)."""
    image = to_float(image)
    if tuple(image.shape[-2:]) == (h, w):
        return image
    return F.interpolate(image[None], size=(h, w), mode="bilinear", antialias=True, align_corners=False)[0]


def random_resized_crop(image: torch.Tensor, size: int, gen: torch.Generator, scale: tuple[float, float] = (0.5, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """A crop covering ``scale`` of the area with an aspect ratio in ``ratio``, resized to ``size``^2."""
    _, h, w = image.shape
    area = h * w * _uniform(gen, *scale)
    r = math.exp(_uniform(gen, math.log(ratio[0]), math.log(ratio[1])))
    ch = max(1, min(h, round(math.sqrt(area / r))))
    cw = max(1, min(w, round(math.sqrt(area * r))))
    top, left = _randint(gen, h - ch + 1), _randint(gen, w - cw + 1)
    return resize(image[:, top:top + ch, left:left + cw], size, size)


def maybe_flip(image: torch.Tensor, gen: torch.Generator, p: float = 0.5) -> torch.Tensor:
    return image.flip(-1) if float(torch.rand((), generator=gen)) < p else image


def colour_jitter(image: torch.Tensor, gen: torch.Generator, strength: float = 0.4) -> torch.Tensor:
    """Brightness, contrast and saturation each scaled by a factor in [1 - s, 1 + s]."""
    if strength <= 0:
        return image
    b, c, s = (_uniform(gen, 1 - strength, 1 + strength) for _ in range(3))
    x = image * b
    mean = x.mean()
    x = (x - mean) * c + mean
    grey = (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2])[None]
    x = (x - grey) * s + grey
    return x.clamp(0, 1)


def rotate(image: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotation about the centre with reflected borders (no black corners to learn from)."""
    if degrees == 0:
        return image
    t = math.radians(degrees)
    theta = torch.tensor([[math.cos(t), -math.sin(t), 0.0], [math.sin(t), math.cos(t), 0.0]])[None]
    grid = F.affine_grid(theta, [1, *image.shape], align_corners=False)
    return F.grid_sample(image[None], grid, mode="bilinear", padding_mode="reflection", align_corners=False)[0]


def random_view(image: torch.Tensor, size: int, gen: torch.Generator, *, scale: tuple[float, float] = (0.35, 1.0),
                jitter: float = 0.4, degrees: float = 15.0, grey_p: float = 0.1) -> torch.Tensor:
    """One augmented view: rotation, a random resized crop, a flip, colour jitter, sometimes grey."""
    x = rotate(image, _uniform(gen, -degrees, degrees)) if degrees else image
    x = maybe_flip(random_resized_crop(x, size, gen, scale), gen)
    x = colour_jitter(x, gen, jitter)
    if float(torch.rand((), generator=gen)) < grey_p:
        x = (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2])[None].expand(3, -1, -1).contiguous()
    return x


def shrink_short_side(image: torch.Tensor, short: int) -> torch.Tensor:
    """Downscale (never upscale) so the short side is at most ``short``: crops then stay cheap. Float out."""
    _, h, w = image.shape
    s = short / min(h, w)
    if s >= 1:
        return to_float(image)
    return resize(image, max(1, round(h * s)), max(1, round(w * s))).clamp(0, 1)
