"""Connected regions of a binary mask: boxes, areas, scores, peaks and outer contours.

This is the "mask -> contours -> bounding boxes" step of weakly supervised localization. Labeling
and contour tracing are done with scipy / scikit-image (the one place where a NumPy round trip is
worth it: there is no torch equivalent of connected-component labeling or marching squares).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from scipy import ndimage
from skimage import measure
from torch import Tensor

__all__ = ["Region", "mask_to_regions", "scale_regions"]

logger = logging.getLogger(__name__)

# 8-connectivity: diagonal neighbours belong to the same object, as a person would read the mask.
_EIGHT = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class Region:
    """One connected component of a mask.

    Coordinates are pixel indices (x = column, y = row) of the map the region was found on.
    ``box`` is (x0, y0, x1, y1) with x1 / y1 exclusive so that ``x1 - x0`` is the width.
    ``contour`` points lie on the boundary between inside and outside pixels (half-pixel positions,
    as traced by marching squares at level 0.5) and are not closed (first point is not repeated).
    """

    box: tuple[int, int, int, int]
    area: int
    score: float
    peak: tuple[int, int]
    contour: list[tuple[float, float]]


def _simplify(points: np.ndarray, max_points: int) -> np.ndarray:
    """Reduce a closed (row, col) polyline to at most ``max_points`` vertices.

    Douglas-Peucker (``approximate_polygon``) keeps the shape's corners; its tolerance is raised
    until the budget is met, and an even subsample is the last resort so the bound always holds.
    """
    closed = len(points) > 1 and np.allclose(points[0], points[-1])
    body = points[:-1] if closed else points
    if len(body) <= max_points:
        return body
    tolerance = 0.0
    for _ in range(32):
        approx = measure.approximate_polygon(points, tolerance=tolerance)
        if len(approx) > 1 and np.allclose(approx[0], approx[-1]):
            approx = approx[:-1]
        if len(approx) <= max_points:
            return approx
        tolerance = 0.5 if tolerance == 0.0 else tolerance * 1.5
    pick = np.linspace(0, len(body), max_points, endpoint=False).astype(int)
    return body[pick]


def _outer_contour(component: np.ndarray, max_points: int) -> list[tuple[float, float]]:
    """Outer contour of one component given as a cropped boolean array; (x, y) in crop units.

    The crop is padded by one background pixel so the contour is closed even where the component
    touches the crop edge; among the traced contours the longest is the outer one (holes are
    traced inside it and are always shorter).
    """
    padded = np.pad(component.astype(np.float32), 1)
    contours = measure.find_contours(padded, 0.5)
    if not contours:
        return []
    outer = max(contours, key=len)
    simplified = _simplify(outer, max_points)
    return [(float(c) - 1.0, float(r) - 1.0) for r, c in simplified]


def mask_to_regions(
    mask: Tensor,
    m: Tensor | None = None,
    *,
    min_area: int = 1,
    max_regions: int = 20,
    max_points: int = 64,
) -> list[Region]:
    """Connected regions (8-connectivity) of ``mask``, most important first.

    ``m`` (same shape as the mask) supplies each region's score (mean value inside) and peak
    (location of its maximum). Without a map every score is 1.0 and the peak is the pixel deepest
    inside the region, which is always inside it even for non-convex shapes (a centroid is not).
    Regions smaller than ``min_area`` are dropped; the rest are sorted by ``score * area`` (a big
    weak region and a small strong one are weighed against each other) and cut to ``max_regions``.
    Contours are traced only for the regions that are returned.
    """
    if not isinstance(mask, Tensor) or mask.ndim != 2:
        raise ValueError(f"mask must be a 2-D tensor [h, w], got {getattr(mask, 'shape', type(mask))}")
    if m is not None and (not isinstance(m, Tensor) or tuple(m.shape) != tuple(mask.shape)):
        raise ValueError(f"map shape {getattr(m, 'shape', None)} differs from mask shape {tuple(mask.shape)}")
    if min_area < 1:
        raise ValueError(f"min_area must be >= 1, got {min_area}")
    if max_regions < 1:
        raise ValueError(f"max_regions must be >= 1, got {max_regions}")
    if max_points < 3:
        raise ValueError(f"max_points must be >= 3, got {max_points}")

    mask_np = mask.detach().to("cpu", torch.bool).numpy()
    m_np = None if m is None else m.detach().to("cpu", torch.float64).numpy()
    labels, count = ndimage.label(mask_np, structure=_EIGHT)
    if count == 0:
        return []
    index = np.arange(1, count + 1)
    areas = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    if m_np is not None:
        scores = np.asarray(ndimage.mean(m_np, labels, index), dtype=np.float64)
    else:
        scores = np.ones(count, dtype=np.float64)
    keep = np.nonzero(areas >= min_area)[0]
    # Stable sort so equal-weight regions keep raster order and the output is deterministic.
    order = keep[np.argsort(-(scores[keep] * areas[keep]), kind="stable")][:max_regions]
    slices = ndimage.find_objects(labels)

    regions: list[Region] = []
    for i in order:
        sl_y, sl_x = slices[i]
        y0, y1, x0, x1 = sl_y.start, sl_y.stop, sl_x.start, sl_x.stop
        component = labels[sl_y, sl_x] == i + 1
        if m_np is not None:
            local = np.where(component, m_np[sl_y, sl_x], -np.inf)
        else:
            local = ndimage.distance_transform_edt(np.pad(component, 1))[1:-1, 1:-1]
        py, px = np.unravel_index(int(np.argmax(local)), local.shape)
        contour = [(x + x0, y + y0) for x, y in _outer_contour(component, max_points)]
        regions.append(
            Region(
                box=(int(x0), int(y0), int(x1), int(y1)),
                area=int(areas[i]),
                score=float(scores[i]),
                peak=(int(px + x0), int(py + y0)),
                contour=contour,
            )
        )
    logger.debug("mask %s: %d components, %d regions returned", mask_np.shape, count, len(regions))
    return regions


def scale_regions(regions: Sequence[Region], sx: float, sy: float) -> list[Region]:
    """Map regions found on a map to an image ``sx`` times wider and ``sy`` times taller.

    Boxes are grown outward (floor / ceil) so the scaled box still covers every image pixel of the
    region; areas scale by ``sx * sy``; the peak is the image pixel under the map pixel's centre;
    contour points use the pixel-centre convention (``x' = (x + 0.5) * sx - 0.5``), the same one
    bilinear resizing with ``align_corners=False`` uses, so contours stay aligned with a resized map.
    """
    if not (math.isfinite(sx) and math.isfinite(sy)) or sx <= 0 or sy <= 0:
        raise ValueError(f"scale factors must be positive and finite, got sx={sx}, sy={sy}")
    out: list[Region] = []
    for r in regions:
        x0, y0, x1, y1 = r.box
        box = (
            math.floor(x0 * sx),
            math.floor(y0 * sy),
            max(math.ceil(x1 * sx), math.floor(x0 * sx) + 1),
            max(math.ceil(y1 * sy), math.floor(y0 * sy) + 1),
        )
        peak = (math.floor((r.peak[0] + 0.5) * sx), math.floor((r.peak[1] + 0.5) * sy))
        contour = [((x + 0.5) * sx - 0.5, (y + 0.5) * sy - 0.5) for x, y in r.contour]
        out.append(replace(r, box=box, area=max(1, round(r.area * sx * sy)), peak=peak, contour=contour))
    return out
