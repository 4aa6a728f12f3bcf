"""How alike two maps are: Spearman rank correlation and SSIM, batched over pairs of maps.

Adebayo et al. ("Sanity Checks for Saliency Maps", NeurIPS 2018) compare each map after
randomizing the network with the original one by the rank correlation of absolute values, the
rank correlation of signed values and the structural similarity (SSIM). Both are written here on
tensors so that a whole stage's maps are compared in one call; the tests hold them against
``scipy.stats.spearmanr`` and ``skimage.metrics.structural_similarity``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

SSIM_WINDOW = 7  # scikit-image's default uniform window
K1, K2 = 0.01, 0.03


def _ranks(x: Tensor) -> Tensor:
    """Ranks along the last dimension, ties given their average rank (as ``scipy.stats.rankdata``)."""
    n = x.shape[-1]
    order = torch.argsort(x, dim=-1, stable=True)
    sorted_x = torch.gather(x, -1, order)
    pos = torch.arange(n, dtype=torch.float64, device=x.device).expand_as(x).contiguous()
    # Runs of equal values: each run gets the mean of the positions it covers.
    new_run = torch.ones_like(sorted_x, dtype=torch.bool)
    new_run[..., 1:] = sorted_x[..., 1:] != sorted_x[..., :-1]
    run_id = new_run.long().cumsum(-1) - 1
    sums = torch.zeros_like(pos).scatter_add_(-1, run_id, pos)
    counts = torch.zeros_like(pos).scatter_add_(-1, run_id, torch.ones_like(pos))
    avg = torch.gather(sums / counts.clamp(min=1), -1, run_id)
    ranks = torch.empty_like(pos)
    ranks.scatter_(-1, order, avg)
    return ranks


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Spearman's rank correlation of each pair of maps: ``a``, ``b`` ``[..., h, w]`` -> ``[...]``.

    A constant map has no ranking: its correlation is 0 (scipy says NaN), so a method that
    returns a blank map after randomization reads as "changed", not as an error.
    """
    if a.shape != b.shape:
        raise ValueError(f"maps to compare must have one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    ra = _ranks(a.detach().reshape(*a.shape[:-2], -1).double())
    rb = _ranks(b.detach().reshape(*b.shape[:-2], -1).double())
    ra = ra - ra.mean(-1, keepdim=True)
    rb = rb - rb.mean(-1, keepdim=True)
    den = (ra.square().sum(-1) * rb.square().sum(-1)).sqrt()
    return torch.where(den > 0, (ra * rb).sum(-1) / den.clamp(min=1e-300), torch.zeros_like(den)).float()


def abs_normalized(m: Tensor) -> Tensor:
    """``|m|`` scaled to [0, 1] by its maximum (per map ``[..., h, w]``): what SSIM compares."""
    a = m.detach().abs().double()
    peak = a.amax(dim=(-2, -1), keepdim=True)
    return torch.where(peak > 0, a / peak.clamp(min=1e-300), torch.zeros_like(a))


def ssim(a: Tensor, b: Tensor, window: int = SSIM_WINDOW) -> Tensor:
    """Mean structural similarity of each pair of maps ``[..., h, w]`` with values in [0, 1] (data range 1).

    scikit-image's definition: a uniform ``window`` x ``window`` window (shrunk to the largest odd
    size that fits a small map), the sample covariance (``n / (n - 1)``), K1 = 0.01, K2 = 0.03,
    and the mean over the positions where the window fits entirely (a border of ``window // 2``
    cropped).
    """
    if a.shape != b.shape:
        raise ValueError(f"maps to compare must have one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    h, w = a.shape[-2:]
    win = min(window, h, w)
    win -= 1 - win % 2
    if win < 1:
        raise ValueError(f"maps of {h}x{w} are too small for SSIM")
    lead = a.shape[:-2]
    x = a.detach().double().reshape(-1, 1, h, w)
    y = b.detach().double().reshape(-1, 1, h, w)
    n = win * win
    cov_norm = n / (n - 1) if n > 1 else 1.0

    def mean(t: Tensor) -> Tensor:
        return F.avg_pool2d(t, win, stride=1)

    ux, uy = mean(x), mean(y)
    vx = cov_norm * (mean(x * x) - ux * ux)
    vy = cov_norm * (mean(y * y) - uy * uy)
    vxy = cov_norm * (mean(x * y) - ux * uy)
    c1, c2 = K1 ** 2, K2 ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.mean(dim=(-3, -2, -1)).reshape(lead).float()
