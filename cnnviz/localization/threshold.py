"""Turn a saliency / CAM map into a binary foreground mask.

Two rules are offered. ``fraction`` is the rule used by the CAM papers for weakly supervised
localization (Zhou et al. 2016 keep everything above 20 % of the maximum; Grad-CAM uses 15 %):
it is predictable and cheap. ``otsu`` picks the threshold from the map's own value distribution,
which is more robust when the map has a strong floor (e.g. Score-CAM) and a fixed fraction would
keep too much. Both work on tensors so a map never leaves the device it was computed on.
"""

from __future__ import annotations

import logging
from typing import Literal

import torch
from torch import Tensor

__all__ = ["otsu_threshold", "threshold_mask"]

logger = logging.getLogger(__name__)

_OTSU_BINS = 256


def _check_map(m: Tensor) -> Tensor:
    """Validate a 2-D real map and return it as a float tensor (float64 for stable statistics)."""
    if not isinstance(m, Tensor) or m.ndim != 2:
        raise ValueError(f"map must be a 2-D tensor [h, w], got {getattr(m, 'shape', type(m))}")
    if m.numel() == 0:
        raise ValueError("map must not be empty")
    if m.is_complex() or m.dtype == torch.bool:
        raise ValueError(f"map must be real-valued, got {m.dtype}")
    m = m.detach().to(torch.float64)
    if not torch.isfinite(m).all():
        raise ValueError("map contains NaN or infinite values")
    return m


def otsu_threshold(m: Tensor, bins: int = _OTSU_BINS) -> float:
    """Otsu's threshold of the map's values, computed in torch on a ``bins``-bin histogram.

    The histogram spans [min, max] of the map and the threshold is returned as a bin centre,
    following the same convention as ``skimage.filters.threshold_otsu`` so that the two agree;
    foreground is ``m > threshold``. A constant map has no threshold that separates anything and
    returns its value (so the mask is empty).
    """
    m = _check_map(m)
    if bins < 2:
        raise ValueError(f"bins must be >= 2, got {bins}")
    lo, hi = m.min(), m.max()
    if hi <= lo:
        return float(lo)
    values = m.flatten()
    # Same bin assignment as numpy.histogram: half-open bins, the last one closed on the right.
    idx = ((values - lo) / (hi - lo) * bins).floor().long().clamp_(0, bins - 1)
    hist = torch.bincount(idx, minlength=bins).to(torch.float64)
    edges = torch.linspace(float(lo), float(hi), bins + 1, dtype=torch.float64, device=m.device)
    centers = (edges[:-1] + edges[1:]) / 2

    # Class weights and means for every split "bins [0..i] vs bins [i+1..]".
    w0 = torch.cumsum(hist, 0)
    w1 = torch.cumsum(hist.flip(0), 0).flip(0)
    mean0 = torch.cumsum(hist * centers, 0) / w0.clamp_min(1e-12)
    mean1 = (torch.cumsum((hist * centers).flip(0), 0) / w1.flip(0).clamp_min(1e-12)).flip(0)
    between = w0[:-1] * w1[1:] * (mean0[:-1] - mean1[1:]) ** 2
    best = int(torch.argmax(between))
    return float(centers[best])


def threshold_mask(
    m: Tensor,
    method: Literal["fraction", "otsu"] = "fraction",
    fraction: float = 0.5,
) -> Tensor:
    """Binary mask [h, w] (bool) of the salient part of map ``m``.

    ``fraction``: the map is min-max normalized to [0, 1] and a pixel is kept when its value is
    ``>= fraction`` (so ``fraction=0`` keeps everything and ``fraction=1`` keeps only the maxima).
    Normalizing first makes the rule independent of the map's offset and scale, which differ
    between CAM variants. A constant map normalizes to all zeros.

    ``otsu``: keep ``m > otsu_threshold(m)``.
    """
    mf = _check_map(m)
    if method == "fraction":
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"fraction must be in [0, 1], got {fraction}")
        lo, hi = mf.min(), mf.max()
        norm = (mf - lo) / (hi - lo) if hi > lo else torch.zeros_like(mf)
        return norm >= fraction
    if method == "otsu":
        t = otsu_threshold(mf)
        logger.debug("otsu threshold %.6g on map %s", t, tuple(mf.shape))
        return mf > t
    raise ValueError(f"unknown threshold method {method!r}; expected 'fraction' or 'otsu'")
