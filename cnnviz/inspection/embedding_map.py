"""A 2-D map of a collection: its features reduced to two coordinates (PCA, t-SNE, UMAP) and a picture.

PCA is exact and linear (torch SVD of the centred features): distances along its axes mean
something, and it is fast for any size. t-SNE and UMAP keep neighbourhoods instead, which shows
clusters better and says less about distances between them. Both are seeded (and UMAP runs
single-threaded when seeded), so the same collection always gives the same map. Their size
parameters are clamped to what the collection allows, so a small collection still gets a map.

The picture places each image's thumbnail at its point on a white canvas, later images on top.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

Reduction = Literal["pca", "tsne", "umap"]
REDUCTIONS: tuple[str, ...] = ("pca", "tsne", "umap")

__all__ = ["REDUCTIONS", "Reduction", "make_thumbnail", "pca_2d", "reduce_2d", "thumbnail_map"]


def pca_2d(features: torch.Tensor) -> torch.Tensor:
    """The first two principal-component scores ``[N,2]`` of ``features`` ``[N,D]``.

    Each axis's sign is fixed so the loading with the largest magnitude is positive (sklearn's
    convention), so the map does not flip between runs or machines.
    """
    x = features.double()
    x = x - x.mean(0, keepdim=True)
    n, d = x.shape
    out = torch.zeros(n, 2, dtype=torch.float64)
    if n < 2 or d == 0:
        return out.float()
    _, s, vh = torch.linalg.svd(x, full_matrices=False)
    m = min(2, vh.shape[0])
    comps = vh[:m]
    signs = torch.sign(comps.gather(1, comps.abs().argmax(1, keepdim=True)))
    signs[signs == 0] = 1
    out[:, :m] = x @ (comps * signs).T
    return out.float()


def reduce_2d(features: torch.Tensor, method: Reduction | str = "pca", seed: int = 0, perplexity: float = 30.0,
              n_neighbors: int = 15, min_dist: float = 0.1) -> torch.Tensor:
    """Coordinates ``[N,2]`` (float32) of each feature row, by ``pca``, ``tsne`` or ``umap``.

    t-SNE's perplexity is clamped below ``(N-1)/3`` (it needs about three times as many
    neighbours as the perplexity) and UMAP's ``n_neighbors`` below ``N``; with fewer than five
    images both fall back to PCA, where a neighbourhood method has nothing to keep.
    """
    if method not in REDUCTIONS:
        raise ValueError(f"unknown reduction {method!r}; expected one of {REDUCTIONS}")
    if features.dim() != 2:
        raise ValueError(f"features must be [N,D], got {tuple(features.shape)}")
    n = features.shape[0]
    if method == "pca" or n < 5:
        if method != "pca":
            log.info("%s on %d points falls back to PCA", method, n)
        return pca_2d(features)
    x = features.detach().float().cpu().numpy()
    if method == "tsne":
        from sklearn.manifold import TSNE

        perp = float(max(1.0, min(perplexity, (n - 1) / 3.0)))
        coords = TSNE(n_components=2, perplexity=perp, init="pca", random_state=seed,
                      learning_rate="auto").fit_transform(x)
    else:
        import umap

        nn_ = int(max(2, min(n_neighbors, n - 1)))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*n_jobs value.*")  # seeded UMAP is single-threaded
            coords = umap.UMAP(n_components=2, n_neighbors=nn_, min_dist=min_dist, random_state=seed,
                               init="spectral" if n > nn_ + 1 else "random").fit_transform(x)
    return torch.from_numpy(np.asarray(coords, dtype=np.float32))


def make_thumbnail(image: torch.Tensor, size: int = 48) -> torch.Tensor:
    """A ``[3,H,W]`` image in [0,1] as a uint8 ``[h,w,3]`` thumbnail whose longer side is ``size``."""
    h, w = image.shape[-2:]
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    small = F.interpolate(image.float().cpu()[None], size=(nh, nw), mode="bilinear", antialias=True,
                          align_corners=False)[0]
    return (small.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous()


def thumbnail_map(coords: torch.Tensor, thumbnails: Sequence[torch.Tensor], size: int = 1024,
                  thumb: int = 48) -> torch.Tensor:
    """A uint8 ``[size,size,3]`` white canvas with each thumbnail centred on its (normalized) point.

    Coordinates are scaled per axis (keeping the aspect ratio of the point cloud) into the canvas
    minus a margin of half a thumbnail, so every thumbnail lies wholly inside; the second
    coordinate points up, as in a plot. Thumbnails are uint8
    ``[h,w,3]`` of any size and are shrunk to fit ``thumb`` pixels.
    """
    if coords.dim() != 2 or coords.shape[1] != 2 or coords.shape[0] != len(thumbnails):
        raise ValueError(f"need [N,2] coordinates for N thumbnails, got {tuple(coords.shape)} and {len(thumbnails)}")
    if thumb >= size:
        raise ValueError(f"thumbnails ({thumb}px) must be smaller than the canvas ({size}px)")
    canvas = torch.full((size, size, 3), 255, dtype=torch.uint8)
    if not thumbnails:
        return canvas
    c = coords.detach().double().cpu()
    lo, hi = c.min(0).values, c.max(0).values
    span = float((hi - lo).max())
    usable = size - thumb
    # One scale for both axes keeps the map's shape; centre the shorter axis.
    unit = (c - lo) / span if span > 0 else torch.full_like(c, 0.5)
    extent = (hi - lo) / span if span > 0 else torch.zeros(2, dtype=torch.float64)
    unit = unit + (1 - extent) / 2
    unit[:, 1] = 1 - unit[:, 1]  # y grows upwards in the map, downwards in the picture
    centres = (thumb / 2 + unit * usable).round().long()  # (x, y) in pixels
    for (cx, cy), t in zip(centres.tolist(), thumbnails, strict=True):
        if t.dtype != torch.uint8 or t.dim() != 3 or t.shape[2] != 3:
            raise ValueError(f"thumbnails must be uint8 [h,w,3], got {t.dtype} {tuple(t.shape)}")
        if max(t.shape[:2]) > thumb:
            t = make_thumbnail(t.permute(2, 0, 1).float() / 255, thumb)
        th, tw = t.shape[:2]
        y0 = min(max(cy - th // 2, 0), size - th)
        x0 = min(max(cx - tw // 2, 0), size - tw)
        canvas[y0:y0 + th, x0:x0 + tw] = t.cpu()
    return canvas
