"""A 2-D map of a collection: its features reduced to two coordinates (PCA, t-SNE, UMAP) and a picture.

PCA is exact and linear (torch SVD of the centred features): distances along its axes mean
something, and it is fast for any size. t-SNE and UMAP keep neighbourhoods instead, which shows
clusters better and says less about distances between them. Both are seeded (and UMAP runs
single-threaded when seeded), so the same collection always gives the same map. Their size
parameters are clamped to what the collection allows, so a small collection still gets a map.

The picture places each image's thumbnail at its point on a white canvas, later images on top,
scaled by the spread of the bulk of the points (outliers clamped to the edges), optionally framed
in a colour per label with a legend.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from ..render import add_title, legend_band

log = logging.getLogger(__name__)

Reduction = Literal["pca", "tsne", "umap"]
REDUCTIONS: tuple[str, ...] = ("pca", "tsne", "umap")

__all__ = ["LABEL_COLORS", "REDUCTIONS", "Reduction", "label_colors", "make_thumbnail", "map_panels", "pca_2d",
           "reduce_2d", "thumb_size_for", "thumbnail_map"]


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


LABEL_COLORS: tuple[tuple[int, int, int], ...] = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
    (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207), (0, 0, 128), (128, 128, 0),
    (0, 128, 128), (128, 0, 128), (255, 215, 0), (0, 0, 0),
)
"""Border colours per label, in order of first appearance: Tableau 10, then six more distinct ones."""


def label_colors(labels: Sequence[str]) -> dict[str, tuple[int, int, int]]:
    """A colour per distinct label, in order of first appearance (golden-angle hues past the table)."""
    import colorsys

    out: dict[str, tuple[int, int, int]] = {}
    for lb in labels:
        if lb in out:
            continue
        i = len(out)
        if i < len(LABEL_COLORS):
            out[lb] = LABEL_COLORS[i]
        else:
            r, g, b = colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.75, 0.85)
            out[lb] = (round(r * 255), round(g * 255), round(b * 255))
    return out


def thumb_size_for(n: int, size: int, lo: int = 32) -> int:
    """A thumbnail side that lets ``n`` thumbnails use a ``size`` canvas: few images get big ones.

    About ``size / (1.5 sqrt(n) + 1)``, within ``[lo, size // 4]``: 4 images on 768 px get 192 px,
    100 images 48 px. Callers make their thumbnails this size and pass it as ``thumb``.
    """
    return int(min(max(round(size / (1.5 * np.sqrt(max(n, 1)) + 1)), lo), max(lo, size // 4)))


def _gap_trimmed(v: torch.Tensor) -> tuple[float, float]:
    """The range of sorted values ``v`` once isolated extremes are set aside.

    An end value is set aside while its gap to the next one is wider than the whole range of the
    values left, at most ``max(1, 5 %)`` per end: one far outlier among a few dozen points would
    otherwise still pull a percentile (linear interpolation) most of the way out to it.
    """
    i, j = 0, len(v) - 1
    budget = max(1, int(0.05 * len(v)))
    for _ in range(budget):
        if j - i >= 2 and v[j] - v[j - 1] > v[j - 1] - v[i]:
            j -= 1
    for _ in range(budget):
        if j - i >= 2 and v[i + 1] - v[i] > v[j] - v[i + 1]:
            i += 1
    return float(v[i]), float(v[j])


def _unit_coords(c: torch.Tensor, spread: tuple[float, float] | None, keep_aspect: bool) -> torch.Tensor:
    """Points ``[N,2]`` into [0,1]^2 by a robust box per axis (points beyond clamped), y pointing up.

    The box is the ``spread`` percentiles, tightened by :func:`_gap_trimmed` where a few isolated
    points lie far out; on well-spread points the percentiles alone decide.
    """
    if spread is not None and c.shape[0] > 2:
        q = torch.tensor([spread[0] / 100.0, spread[1] / 100.0], dtype=c.dtype)
        p_lo, p_hi = torch.quantile(c, q, dim=0)
        trimmed = [_gap_trimmed(c[:, k].sort().values) for k in range(2)]
        lo = torch.maximum(p_lo, torch.tensor([t[0] for t in trimmed], dtype=c.dtype))
        hi = torch.minimum(p_hi, torch.tensor([t[1] for t in trimmed], dtype=c.dtype))
    else:
        lo, hi = c.min(0).values, c.max(0).values
    full_lo, full_hi = c.min(0).values, c.max(0).values
    degenerate = hi - lo <= 0  # most points on one value: fall back to the full range on that axis
    lo = torch.where(degenerate, full_lo, lo)
    hi = torch.where(degenerate, full_hi, hi)
    span = hi - lo
    if keep_aspect:
        s = float(span.max())
        unit = (c - lo) / s if s > 0 else torch.full_like(c, 0.5)
        extent = span / s if s > 0 else torch.zeros(2, dtype=c.dtype)
        unit = unit + (1 - extent) / 2
    else:
        unit = torch.where(span > 0, (c - lo) / span.clamp_min(1e-300), torch.full_like(c, 0.5))
    unit = unit.clamp(0.0, 1.0)
    unit[:, 1] = 1 - unit[:, 1]  # y grows upwards in the map, downwards in the picture
    return unit


def thumbnail_map(coords: torch.Tensor, thumbnails: Sequence[torch.Tensor], size: int = 1024,
                  thumb: int = 48, *, labels: Sequence[str] | None = None,
                  colors: dict[str, tuple[int, int, int]] | None = None, border: int | None = None,
                  legend: bool = True, spread: tuple[float, float] | None = (2.0, 98.0),
                  keep_aspect: bool = False, title: str = "", font_px: int | None = None) -> torch.Tensor:
    """Each thumbnail centred on its point of a white ``size x size`` canvas, as one uint8 ``[H,W,3]``.

    The canvas is filled by the bulk of the points, not by the outliers: each axis is scaled so
    that its ``spread`` percentiles (2nd-98th by default, tightened where isolated points lie
    far out, so that one outlier among a few dozen points cannot stretch them; None = min-max) span the canvas
    minus a margin of half a thumbnail, and points beyond are clamped to the edges. Per-axis scaling
    (``keep_aspect=False``) spreads the thumbnails over the whole square, which is what a map of
    neighbourhoods (t-SNE, UMAP) is read for; ``keep_aspect=True`` keeps PCA's axes comparable.
    The second coordinate points up, as in a plot; later images are drawn on top.

    With ``labels`` (one per point) every thumbnail gets a ``border`` (default 3 px) in its
    label's colour (``colors``, default :func:`label_colors`) and, with ``legend``, a legend band
    (label -> colour) is added under the canvas; ``title`` adds a band above. Without labels or
    title the result is exactly ``[size, size, 3]``. Thumbnails are uint8 ``[h,w,3]`` of any size,
    shrunk to fit ``thumb`` pixels (see :func:`thumb_size_for` for a size that suits ``N``).
    """
    if coords.dim() != 2 or coords.shape[1] != 2 or coords.shape[0] != len(thumbnails):
        raise ValueError(f"need [N,2] coordinates for N thumbnails, got {tuple(coords.shape)} and {len(thumbnails)}")
    if thumb >= size:
        raise ValueError(f"thumbnails ({thumb}px) must be smaller than the canvas ({size}px)")
    if labels is not None and len(labels) != len(thumbnails):
        raise ValueError(f"{len(labels)} labels for {len(thumbnails)} thumbnails")
    if spread is not None and not 0.0 <= spread[0] < spread[1] <= 100.0:
        raise ValueError(f"spread must be two percentiles lo < hi in [0, 100], got {spread}")
    canvas = torch.full((size, size, 3), 255, dtype=torch.uint8)
    palette = (colors or label_colors([str(lb) for lb in labels])) if labels is not None else {}
    bw = (3 if border is None else int(border)) if labels is not None else 0
    if thumbnails:
        unit = _unit_coords(coords.detach().double().cpu(), spread, keep_aspect)
        usable = size - thumb
        centres = (thumb / 2 + unit * usable).round().long()  # (x, y) in pixels
        for i, ((cx, cy), t) in enumerate(zip(centres.tolist(), thumbnails, strict=True)):
            if t.dtype != torch.uint8 or t.dim() != 3 or t.shape[2] != 3:
                raise ValueError(f"thumbnails must be uint8 [h,w,3], got {t.dtype} {tuple(t.shape)}")
            inner = thumb - 2 * bw
            if max(t.shape[:2]) > inner:
                t = make_thumbnail(t.permute(2, 0, 1).float() / 255, max(1, inner))
            if bw:
                color = torch.tensor(palette.get(str(labels[i]), (0, 0, 0)), dtype=torch.uint8)  # type: ignore[index]
                framed = color.expand(t.shape[0] + 2 * bw, t.shape[1] + 2 * bw, 3).clone()
                framed[bw:bw + t.shape[0], bw:bw + t.shape[1]] = t.cpu()
                t = framed
            th, tw = t.shape[:2]
            y0 = min(max(cy - th // 2, 0), size - th)
            x0 = min(max(cx - tw // 2, 0), size - tw)
            canvas[y0:y0 + th, x0:x0 + tw] = t.cpu()
    if labels is None and not title:
        return canvas
    fp = font_px or max(14, round(0.022 * size))
    if labels is not None and legend and palette:
        band = legend_band(list(palette.items()), size, fp, title="labels:")
        canvas = torch.cat([canvas, torch.full((1, size, 3), 200, dtype=torch.uint8), band], 0)
    if title:
        canvas = add_title(canvas, title, font_px=fp)
    return canvas


def map_panels(coords: Sequence[torch.Tensor], thumbnails: Sequence[torch.Tensor], titles: Sequence[str], *,
               labels: Sequence[str] | None = None, size: int = 480, thumb: int = 40, gap: int = 6,
               gap_value: int = 180, font_px: int | None = None, **kwargs: object) -> torch.Tensor:
    """Several maps of the same points side by side, each titled, with one shared legend: uint8 ``[H,W,3]``.

    For comparisons such as a triplet head's preview (the held-out views by the frozen features
    and by the head): the same thumbnails, labels and colours in every panel, so a class drawing
    together on the right is easy to see. ``kwargs`` go to :func:`thumbnail_map`.
    """
    if len(coords) != len(titles) or not coords:
        raise ValueError(f"need one title per map, got {len(coords)} maps and {len(titles)} titles")
    fp = font_px or max(14, round(0.035 * size))
    palette = label_colors([str(lb) for lb in labels]) if labels is not None else None
    panels = [add_title(thumbnail_map(c, thumbnails, size, thumb, labels=labels, colors=palette, legend=False,
                                      **kwargs),  # type: ignore[arg-type]
                        t, font_px=fp) for c, t in zip(coords, titles, strict=True)]
    h = max(int(p.shape[0]) for p in panels)
    sep = torch.full((h, gap, 3), gap_value, dtype=torch.uint8)
    row: list[torch.Tensor] = []
    for i, p in enumerate(panels):
        if i:
            row.append(sep)
        row.append(torch.cat([p, torch.full((h - p.shape[0], p.shape[1], 3), 255, dtype=torch.uint8)], 0))
    out = torch.cat(row, 1)
    if palette:
        band = legend_band(list(palette.items()), int(out.shape[1]), fp, title="labels:")
        out = torch.cat([out, torch.full((gap, out.shape[1], 3), gap_value, dtype=torch.uint8), band], 0)
    return out
