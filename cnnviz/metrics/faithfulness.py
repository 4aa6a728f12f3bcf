"""Faithfulness numbers for a saliency map: deletion / insertion AUC and the pointing game.

Deletion and insertion (Petsiuk et al., RISE, BMVC 2018) ask whether the pixels a map ranks first
really drive the model's score: removing them first should make the score drop fast (low deletion
AUC) and revealing them first should make it rise fast (high insertion AUC). The pointing game
(Zhang et al., ECCV 2016) asks whether the map's maximum falls on the annotated object.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..blur import gaussian_blur
from ..progress import checkpoint
from .regions import energy_in_mask

__all__ = ["FaithfulnessResult", "default_insertion_baseline", "deletion_insertion", "pointing_game"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FaithfulnessResult:
    """Both curves (score after each step) and their areas under the curve over fraction in [0, 1]."""

    deletion_auc: float
    insertion_auc: float
    deletion_curve: list[float]
    insertion_curve: list[float]
    fractions: list[float]


def default_insertion_baseline(image: Tensor) -> Tensor:
    """A heavily blurred copy of the image, the insertion start point used by RISE.

    Blur instead of a constant keeps the low-frequency colour statistics, so the curve measures how
    fast the *details* the map points at restore the score rather than rewarding any colour at all.
    The blur scales with the image (sigma = longer side / 16) so it means the same at any size.
    """
    sigma = max(image.shape[-2:]) / 16.0
    return gaussian_blur(image, sigma, "replicate")


def _check_baseline(name: str, baseline: Tensor | None, image: Tensor) -> None:
    if baseline is not None and (not isinstance(baseline, Tensor) or baseline.shape != image.shape):
        shape = getattr(baseline, "shape", None)
        raise ValueError(f"{name} must have the image's shape {tuple(image.shape)}, got {shape}")


def deletion_insertion(
    score_fn: Callable[[Tensor], Tensor],
    image: Tensor,
    saliency: Tensor,
    *,
    steps: int = 32,
    deletion_baseline: Tensor | None = None,
    insertion_baseline: Tensor | None = None,
    batch_size: int = 16,
) -> FaithfulnessResult:
    """Deletion and insertion curves of ``saliency`` for the model score ``score_fn``.

    ``score_fn`` maps a batch [B, 3, H, W] to scores [B] (typically the softmax probability of the
    explained class). The saliency map [h, w] is resized bilinearly to [H, W] and pixels are ranked
    by descending saliency, ties broken by raster order (a stable sort, so the result is
    reproducible). At step k = 0..steps the top ``round(k / steps * H * W)`` pixels are set to the
    deletion baseline (default: zeros) or copied into the insertion baseline (default:
    :func:`default_insertion_baseline`). Step masks come straight from the rank order, images are
    built a chunk at a time and scored in batches of ``batch_size`` under ``torch.no_grad()``.
    AUCs use the trapezoid rule over the exact fractions of pixels changed.
    """
    if not isinstance(steps, int) or not 2 <= steps <= 256:
        raise ValueError(f"steps must be an integer in 2..256, got {steps}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
    if not isinstance(image, Tensor) or image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"image must be a tensor [3, H, W], got {getattr(image, 'shape', type(image))}")
    if not isinstance(saliency, Tensor) or saliency.ndim != 2 or saliency.numel() == 0:
        shape = getattr(saliency, "shape", None)
        raise ValueError(f"saliency must be a non-empty 2-D tensor [h, w], got {shape}")
    _check_baseline("deletion_baseline", deletion_baseline, image)
    _check_baseline("insertion_baseline", insertion_baseline, image)

    _, height, width = image.shape
    n_pixels = height * width
    device = image.device
    image = image.detach()
    with torch.no_grad():
        sal = saliency.detach().to(device=device, dtype=torch.float32)
        if tuple(sal.shape) != (height, width):
            sal = F.interpolate(sal[None, None], size=(height, width), mode="bilinear", align_corners=False)
            sal = sal[0, 0]
        if not torch.isfinite(sal).all():
            raise ValueError("saliency contains NaN or infinite values")
        order = torch.argsort(sal.reshape(-1), descending=True, stable=True)
        rank = torch.empty(n_pixels, dtype=torch.long, device=device)
        rank[order] = torch.arange(n_pixels, device=device)

        # Pixels changed at each step, rounded half up in integer arithmetic; 0 at k=0, all at k=steps.
        k = torch.arange(steps + 1, device=device)
        counts = (2 * k * n_pixels + steps) // (2 * steps)
        masks = (rank[None, :] < counts[:, None]).view(steps + 1, 1, height, width)

        if deletion_baseline is None:
            deleted = torch.zeros_like(image)
        else:
            deleted = deletion_baseline.detach().to(device, image.dtype)
        if insertion_baseline is None:
            blurred = default_insertion_baseline(image)
        else:
            blurred = insertion_baseline.detach().to(device, image.dtype)

        del_scores: list[Tensor] = []
        ins_scores: list[Tensor] = []
        for start in range(0, steps + 1, batch_size):
            m = masks[start : start + batch_size]
            for batch, out in (
                (torch.where(m, deleted, image), del_scores),
                (torch.where(m, image, blurred), ins_scores),
            ):
                scores = score_fn(batch)
                if not isinstance(scores, Tensor) or tuple(scores.shape) != (batch.shape[0],):
                    raise ValueError(
                        f"score_fn must return a tensor of shape ({batch.shape[0]},), "
                        f"got {getattr(scores, 'shape', type(scores))}"
                    )
                out.append(scores.detach().to("cpu", torch.float64))
                checkpoint(batch.shape[0])  # forwards, as the explain cost estimate counts them

    fractions = counts.to("cpu", torch.float64) / n_pixels
    del_curve = torch.cat(del_scores)
    ins_curve = torch.cat(ins_scores)
    result = FaithfulnessResult(
        deletion_auc=float(torch.trapezoid(del_curve, fractions)),
        insertion_auc=float(torch.trapezoid(ins_curve, fractions)),
        deletion_curve=del_curve.tolist(),
        insertion_curve=ins_curve.tolist(),
        fractions=fractions.tolist(),
    )
    logger.debug(
        "deletion AUC %.4f, insertion AUC %.4f over %d steps",
        result.deletion_auc,
        result.insertion_auc,
        steps,
    )
    return result


def pointing_game(
    m: Tensor,
    box: tuple[int, int, int, int],
    image_size: tuple[int, int],
    tolerance: int = 15,
) -> bool:
    """Whether the map's maximum lands on the object (Zhang et al. 2016, "Top-down neural attention").

    The map [h, w] may be smaller than the image (H, W) = ``image_size``: the maximum's map pixel is
    mapped to the image pixel under its centre. ``box`` is (x0, y0, x1, y1) in image pixels with
    x1 / y1 exclusive; it is grown by ``tolerance`` pixels on every side (the paper's 15 px, which
    forgives the coarse resolution of the maps). The first maximum in raster order is used.
    """
    if not isinstance(m, Tensor) or m.ndim != 2 or m.numel() == 0:
        raise ValueError(f"map must be a non-empty 2-D tensor [h, w], got {getattr(m, 'shape', None)}")
    img_h, img_w = image_size
    if img_h < 1 or img_w < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    x0, y0, x1, y1 = box
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"box must satisfy x0 < x1 and y0 < y1, got {box}")
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    h, w = m.shape
    flat = int(torch.argmax(m.detach().reshape(-1)))
    my, mx = divmod(flat, w)
    px = min(img_w - 1, math.floor((mx + 0.5) * img_w / w))
    py = min(img_h - 1, math.floor((my + 0.5) * img_h / h))
    return (x0 - tolerance <= px < x1 + tolerance) and (y0 - tolerance <= py < y1 + tolerance)


def energy_in_box(m: Tensor, box: tuple[int, int, int, int], image_size: tuple[int, int]) -> float:
    """The energy-based pointing game (Wang et al. 2020, Score-CAM): the share of the map's positive mass
    inside ``box`` (x0, y0, x1, y1 in image pixels, x1 / y1 exclusive).

    The map [h, w] is resized bilinearly to the image (H, W) = ``image_size`` first, so a coarse map is
    weighed by the area each cell covers; 0 where the map has no positive mass. A box is one shape of
    region: the mass is counted by :func:`cnnviz.metrics.regions.energy_in_mask`, as for a segmenter's.
    """
    if not isinstance(m, Tensor) or m.ndim != 2 or m.numel() == 0:
        raise ValueError(f"map must be a non-empty 2-D tensor [h, w], got {getattr(m, 'shape', None)}")
    img_h, img_w = image_size
    x0, y0, x1, y1 = box
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"box must satisfy x0 < x1 and y0 < y1, got {box}")
    mask = torch.zeros(img_h, img_w, dtype=torch.bool)
    mask[max(0, y0):max(0, min(img_h, y1)), max(0, x0):max(0, min(img_w, x1))] = True
    return energy_in_mask(m, mask)
