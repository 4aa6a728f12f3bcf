"""Deletion and insertion along a signal or through a volume (Petsiuk et al. 2018, on 1-D and 3-D grids).

The same rule as :func:`cnnviz.metrics.faithfulness.deletion_insertion` for images: elements are
ranked by the map (stable sort, ties in index order); at step k the top ``round(k / steps * n)``
samples (every channel of them) or voxels are set to the deletion baseline (zeros: the dataset mean
after normalization) or copied into the insertion baseline (the input blurred along every axis,
sigma = longest side / 16, as the image version does). AUCs by the trapezoid rule over the exact
fractions changed.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..blur import gaussian_blur_grid
from ..models.preprocess_nd import INTERP
from ..progress import checkpoint
from .faithfulness import FaithfulnessResult


def grid_deletion_insertion(score_fn: Callable[[Tensor], Tensor], x: Tensor, saliency: Tensor, *, steps: int = 16,
                            batch_size: int = 8) -> FaithfulnessResult:
    """Curves for one normalized input ``x`` ``[C,*grid]`` and its map ``saliency`` (any grid, resampled)."""
    if not 2 <= steps <= 256:
        raise ValueError(f"steps must be in 2..256, got {steps}")
    grid = tuple(x.shape[1:])
    n = int(torch.tensor(grid).prod())
    with torch.no_grad():
        sal = saliency.detach().float().to(x.device)
        if tuple(sal.shape) != grid:
            sal = F.interpolate(sal[None, None], size=grid, mode=INTERP[len(grid)], align_corners=False)[0, 0]
        order = torch.argsort(sal.reshape(-1), descending=True, stable=True)
        rank = torch.empty(n, dtype=torch.long, device=x.device)
        rank[order] = torch.arange(n, device=x.device)
        k = torch.arange(steps + 1, device=x.device)
        counts = (2 * k * n + steps) // (2 * steps)
        masks = (rank[None] < counts[:, None]).view(steps + 1, 1, *grid)
        deleted = torch.zeros_like(x)
        blurred = gaussian_blur_grid(x[None], max(grid) / 16.0, "replicate")[0]
        curves: tuple[list[Tensor], list[Tensor]] = ([], [])
        for s in range(0, steps + 1, batch_size):
            m = masks[s:s + batch_size]
            for batch, out in ((torch.where(m, deleted, x), curves[0]), (torch.where(m, x, blurred), curves[1])):
                out.append(score_fn(batch).detach().to("cpu", torch.float64))
                checkpoint(batch.shape[0])
    fractions = counts.to("cpu", torch.float64) / n
    dc, ic = torch.cat(curves[0]), torch.cat(curves[1])
    return FaithfulnessResult(float(torch.trapezoid(dc, fractions)), float(torch.trapezoid(ic, fractions)),
                              dc.tolist(), ic.tolist(), fractions.tolist())
