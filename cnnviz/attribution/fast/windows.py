"""Where occlusion windows go: one definition shared by the full sweep and the incremental engine."""

from __future__ import annotations

import math

import torch

__all__ = ["window_starts"]


def window_starts(size: int, window: int, stride: int) -> torch.Tensor:
    """Window offsets along one axis, as captum's Occlusion places them.

    ``ceil((size - window) / stride) + 1`` windows at multiples of ``stride``; the last one may
    run past the edge and is clipped there, so every pixel is covered.
    """
    count = math.ceil((size - window) / stride) + 1
    return torch.arange(count) * stride
