"""Fitting a decoded signal ``[C,L]`` or volume ``[C,D,H,W]`` to the network, and back.

The image path (:mod:`.preprocess`) stretches a photo to the input size without cropping so a
map covers the whole picture; signals and volumes follow the same rule: the array is resampled
(linear along a signal, trilinear through a volume) to the model's grid, so the map covers the
whole record or scan and is resampled back onto the caller's own samples or voxels. Values are
then normalized per channel with the models file's ``mean`` / ``std`` (0 and 1 unless declared).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

INTERP = {1: "linear", 2: "bilinear", 3: "trilinear"}
"""The interpolation of a grid of 1, 2 or 3 dimensions: what every N-D resampling in the engine uses."""


def resample(x: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """``[N,C,*grid]`` resampled to ``[N,C,*size]`` (identity at the same size, bit for bit)."""
    if tuple(x.shape[2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode=INTERP[len(size)], align_corners=False)


@dataclass(frozen=True)
class ArrayPreprocessing:
    """A signal or volume model's input convention: its grid and per-channel normalization."""

    grid: tuple[int, ...]  # (L,) or (D, H, W)
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def input_size(self) -> int:
        """The longest side, where image code reads a square input's side (cost scales, progress)."""
        return max(self.grid)

    @property
    def channels(self) -> int:
        return len(self.mean)

    def _stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (1, len(self.mean)) + (1,) * (x.dim() - 2)
        mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(shape)
        std = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(shape)
        return mean, std

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        mean, std = self._stats(x)
        return (x - mean) / std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        mean, std = self._stats(x)
        return x * std + mean

    def fit(self, array: torch.Tensor) -> torch.Tensor:
        """One ``[C,*grid]`` array (float) resampled onto the model's grid."""
        return resample(array[None].float(), self.grid)[0]

    def batch(self, arrays: Iterable[torch.Tensor], device: torch.device | str = "cpu") -> torch.Tensor:
        """Fit and normalize several arrays into one ``[N,C,*grid]`` batch on ``device``."""
        return self.normalize(torch.stack([self.fit(a) for a in arrays]).to(device))
