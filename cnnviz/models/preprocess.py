"""Turning decoded images into network input, and back.

By default an image is resized to the model's input size *without cropping* so that every map
covers the whole picture the client sent (DESIGN.md). ``center-crop`` mode reproduces the
classic resize-then-crop evaluation transform for clients who want the training-time view.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

ResizeMode = Literal["stretch", "center-crop"]
RESIZE_MODES = ("stretch", "center-crop")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "area")


@dataclass(frozen=True)
class Preprocessing:
    """Per-model input convention: native size, normalization and how to fit an image to it."""

    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop_fraction: float = 0.875  # only used by center-crop: resize shorter side to size/fraction
    interpolation: str = "bilinear"  # one of INTERPOLATIONS (antialiased where torch allows)
    resize: ResizeMode = "stretch"  # the model's default way to fit an image

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        return (x - mean) / std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        return x * std + mean

    def _resize(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if tuple(x.shape[-2:]) == tuple(size):
            return x  # every mode is the identity at the same size (bit for bit); skip the kernel
        mode = self.interpolation
        if mode in ("bilinear", "bicubic"):
            return F.interpolate(x, size=size, mode=mode, antialias=True, align_corners=False)
        return F.interpolate(x, size=size, mode=mode)

    def fit(self, image: torch.Tensor, size: int | None = None, mode: ResizeMode | None = None) -> torch.Tensor:
        """Resize one ``[3,H,W]`` image in [0,1] to ``[3,size,size]`` (antialiased, the model's interpolation).

        ``mode`` None: the model's own default (``stretch`` unless its models-file entry says otherwise).
        """
        size = size or self.input_size
        mode = mode or self.resize
        x = image.unsqueeze(0)
        if mode == "center-crop":
            h, w = x.shape[-2:]
            short = round(size / self.crop_fraction)
            scale = short / min(h, w)
            nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
            x = self._resize(x, (nh, nw))
            top, left = (nh - size) // 2, (nw - size) // 2
            x = x[..., top:top + size, left:left + size]
        else:
            x = self._resize(x, (size, size))
        out = x[0]
        # In place only on a tensor of our own: an image already at the size comes back as a view of it.
        shared = out.untyped_storage().data_ptr() == image.untyped_storage().data_ptr()
        return out.clamp(0.0, 1.0) if shared else out.clamp_(0.0, 1.0)

    def batch(self, images: Iterable[torch.Tensor], size: int | None = None, mode: ResizeMode | None = None,
              device: torch.device | str = "cpu") -> torch.Tensor:
        """Fit and normalize several images into one ``[N,3,S,S]`` batch on ``device``.

        Images are fitted one at a time as ``images`` yields them (a generator of decoded images
        keeps one full-size float image alive); pass images at their own size: fitting is not
        idempotent (``center-crop`` of a crop zooms in again).
        """
        x = torch.stack([self.fit(img, size, mode) for img in images]).to(device)
        return self.normalize(x)
