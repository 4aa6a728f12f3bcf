"""Nearest neighbours of an image in a layer's feature space, beside its neighbours in pixel space.

Krizhevsky et al. (2012, fig. 4) showed that images close in the last hidden layer are often far
apart in pixels (other poses, other backgrounds, mirrored), which is the point of a learned
representation; showing both lists side by side makes that visible. Distances are one matrix
product against the whole gallery (no Python loop over images), and queries can be batched.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from ..models import LoadedModel, validate_layer
from .features import CancelFn, Pool, ProgressFn, extract_features, pixel_features

log = logging.getLogger(__name__)

Metric = Literal["cosine", "euclidean"]
METRICS: tuple[str, ...] = ("cosine", "euclidean")

__all__ = ["METRICS", "Metric", "NeighbourLists", "distance_matrix", "nearest", "neighbour_lists",
           "neighbour_strip"]


def distance_matrix(a: torch.Tensor, b: torch.Tensor, metric: Metric | str = "cosine") -> torch.Tensor:
    """Distances ``[Q,N]`` between rows of ``a`` ``[Q,D]`` and ``b`` ``[N,D]``.

    ``cosine`` is ``1 - cos`` (0 for the same direction, 2 for opposite); ``euclidean`` is the L2
    distance, computed as ``|a|^2 + |b|^2 - 2ab`` (one GEMM) and clamped at 0 against rounding.
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {METRICS}")
    a, b = a.float(), b.float()
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(f"feature sizes differ: {a.shape[-1]} vs {b.shape[-1]}")
    if metric == "cosine":
        return (1.0 - F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T).clamp_(0.0, 2.0)
    sq = (a * a).sum(-1, keepdim=True) + (b * b).sum(-1)[None] - 2.0 * (a @ b.T)
    return sq.clamp_(min=0.0).sqrt_()


def nearest(query: torch.Tensor, gallery: torch.Tensor, k: int = 5, metric: Metric | str = "cosine",
            exclude: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` gallery rows nearest to ``query`` (``[D]``, or ``[Q,D]`` for a batch of queries).

    Returns ``(indices, distances)``, nearest first, shaped ``[k]`` (or ``[Q,k]``); ``k`` is capped at
    the gallery size. ``exclude`` lists gallery rows never returned (the query's own entry).
    """
    single = query.dim() == 1
    q = query[None] if single else query
    d = distance_matrix(q, gallery, metric)
    if exclude:
        d[:, torch.as_tensor(list(exclude), dtype=torch.long)] = float("inf")
    k = min(k, gallery.shape[0] - len(set(exclude or ())))
    dist, idx = d.topk(max(k, 0), dim=1, largest=False, sorted=True)
    return (idx[0], dist[0]) if single else (idx, dist)


@dataclass
class NeighbourLists:
    """A query's neighbours in feature space and in pixel space, nearest first."""

    layer: str
    metric: str
    feature_indices: list[int]
    feature_distances: list[float]
    pixel_indices: list[int]
    pixel_distances: list[float]

    @property
    def overlap(self) -> int:
        """How many images both lists share: low means the layer sees past pixels."""
        return len(set(self.feature_indices) & set(self.pixel_indices))


def neighbour_lists(model: LoadedModel, query: torch.Tensor, collection: Sequence[torch.Tensor] | None = None,
                    layer: str | None = None, *, k: int = 9, metric: Metric | str = "cosine",
                    pixel_metric: Metric | str = "euclidean", pool: Pool | str = "avg",
                    gallery_features: torch.Tensor | None = None, gallery_pixels: torch.Tensor | None = None,
                    exclude: Sequence[int] | None = None, size: int | None = None, pixel_size: int = 32,
                    batch_size: int | None = None, progress: ProgressFn | None = None,
                    cancel: CancelFn | None = None) -> NeighbourLists:
    """Neighbours of ``query`` ``[3,H,W]`` in ``collection``: by ``layer`` features and by downsampled pixels.

    A job answering several queries against one collection computes ``gallery_features``
    (:func:`~.features.extract_features`) and ``gallery_pixels`` (:func:`~.features.pixel_features`)
    once and passes them; then ``collection`` is not needed.
    """
    layer = validate_layer(model, layer, spatial=False)
    if gallery_features is None or gallery_pixels is None:
        if collection is None:
            raise ValueError("neighbour_lists needs the collection or both precomputed galleries")
    if gallery_features is None:
        gallery_features = extract_features(model, collection, layer, batch_size=batch_size, pool=pool,  # type: ignore[arg-type]
                                            size=size, progress=progress, cancel=cancel)
    if gallery_pixels is None:
        gallery_pixels = pixel_features(collection, pixel_size)  # type: ignore[arg-type]
    qf = extract_features(model, [query], layer, pool=pool, size=size)[0]
    qp = pixel_features([query], pixel_size)[0]
    fi, fd = nearest(qf, gallery_features, k, metric, exclude)
    pi, pd = nearest(qp, gallery_pixels, k, pixel_metric, exclude)
    return NeighbourLists(layer, str(metric), fi.tolist(), fd.tolist(), pi.tolist(), pd.tolist())


def neighbour_strip(query: torch.Tensor, images: Sequence[torch.Tensor], lists: NeighbourLists, *, thumb: int = 96,
                    pixel_metric: str = "euclidean", pixel_size: int = 32, font_px: int | None = None,
                    title: str | None = None) -> torch.Tensor:
    """The query beside its neighbours, one row per space, as one uint8 ``[H,W,3]`` picture.

    ``query`` and ``images`` (the collection ``lists`` indexes into) are ``[3,H,W]`` in [0,1]. The
    query stands on the left; on the right a row headed "feature space" (layer and metric) and a
    row headed "pixel space" (metric on ``pixel_size`` px images), each tile captioned with its
    distance to the query and its index in the collection, nearest first. Two rows side by side
    are the point (Krizhevsky et al. 2012): feature neighbours that are far apart in pixels.
    """
    from ..render import add_title, hstack, labelled_grid, vstack
    from .embedding_map import make_thumbnail

    def tiles(idx: list[int]) -> list[torch.Tensor]:
        return [make_thumbnail(images[i], thumb) for i in idx]

    def captions(idx: list[int], dist: list[float]) -> list[str]:
        # Rounding leaves ~1e-8 where the distance is zero (a copy of the query): say 0.
        return [f"d {d:.3g}\n#{i}" if abs(d) >= 1e-5 else f"d 0\n#{i}" for i, d in zip(idx, dist, strict=True)]

    fp = font_px or max(12, round(0.14 * thumb))
    rows = []
    for name, idx, dist in (
        (f"feature space: layer {lists.layer}, {lists.metric} distance", lists.feature_indices,
         lists.feature_distances),
        (f"pixel space: {pixel_metric} distance on {pixel_size} px images", lists.pixel_indices,
         lists.pixel_distances),
    ):
        if idx:
            grid = labelled_grid(tiles(idx), captions(idx, dist), ncols=len(idx), pad=3, font_px=fp)
        else:
            grid = torch.full((thumb, thumb, 3), 255, dtype=torch.uint8)
        rows.append(add_title(grid, name, font_px=fp, align="left"))
    right = vstack(rows, gap=4)
    left = add_title(labelled_grid([make_thumbnail(query, thumb)], ["query"], pad=3, font_px=fp), " ", font_px=fp)
    out = hstack([left, torch.full((right.shape[0], 2, 3), 160, dtype=torch.uint8), right], gap=6)
    k = max(len(lists.feature_indices), len(lists.pixel_indices))
    heading = title if title is not None else f"Nearest neighbours of the query ({lists.overlap} of {k} in both rows)"
    return add_title(out, heading, font_px=max(fp, 14), align="left")
