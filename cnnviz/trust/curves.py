"""Deletion and insertion curves (RISE protocol) for many maps of many images in shared batches.

:func:`cnnviz.metrics.deletion_insertion` scores one map of one image; an evaluation scores every
method's map of every image, plus a random pixel order per image as the floor. Three of each
curve's inputs do not depend on the map at all: the image itself (deletion step 0, insertion's
last step), the black image (deletion's last step) and the blurred copy (insertion step 0). They
are scored once per image here and shared by every map of it; the inner steps of all maps of all
images are cut into fixed-size batches, so the network sees full batches whatever the number of
methods or steps. Pixel order, step counts, baselines and the trapezoid AUC are exactly those of
:func:`~cnnviz.metrics.deletion_insertion` (a test holds the two equal).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..metrics.faithfulness import default_insertion_baseline
from ..progress import checkpoint

ScoreFn = Callable[[Tensor, Tensor], Tensor]
"""``(batch [B,3,H,W] in [0,1] pixels, classes [B]) -> probability of each row's class [B]``."""


@dataclass(frozen=True)
class CurveSet:
    """Curves ``[N images, M maps, steps + 1]`` and their AUCs ``[N, M]`` over ``fractions``."""

    deletion: Tensor
    insertion: Tensor
    deletion_auc: Tensor
    insertion_auc: Tensor
    fractions: Tensor


def pixel_ranks(saliency: Tensor, height: int, width: int) -> Tensor:
    """Each pixel's place in the removal order: the map resized bilinearly, descending, ties in raster order."""
    sal = saliency.detach().float()
    if tuple(sal.shape) != (height, width):
        sal = F.interpolate(sal[None, None], size=(height, width), mode="bilinear", align_corners=False)[0, 0]
    if not torch.isfinite(sal).all():
        raise ValueError("saliency contains NaN or infinite values")
    order = torch.argsort(sal.reshape(-1), descending=True, stable=True)
    rank = torch.empty(height * width, dtype=torch.long)
    rank[order] = torch.arange(height * width)
    return rank.view(1, height, width)


def step_counts(steps: int, n_pixels: int) -> Tensor:
    """Pixels changed at step k = 0..steps: round(k / steps * n), half up, in integers."""
    k = torch.arange(steps + 1)
    return (2 * k * n_pixels + steps) // (2 * steps)


def deletion_insertion_many(score_fn: ScoreFn, images: Tensor, classes: list[int], maps: list[list[Tensor]],
                            *, steps: int = 16, batch_size: int = 32) -> CurveSet:
    """Deletion and insertion curves of every map in ``maps[i]`` (one list per image, M maps each).

    ``images`` are ``[N, 3, H, W]`` pixels in [0, 1] (what the network sees before normalization);
    ``classes[i]`` is the class whose probability image ``i``'s curves follow. Rows go through
    ``score_fn`` ``batch_size`` at a time, with a progress checkpoint per batch.
    """
    n, _, height, width = images.shape
    if len(maps) != n or len(classes) != n:
        raise ValueError(f"{n} images need {n} map lists and classes, got {len(maps)} and {len(classes)}")
    m_count = len(maps[0]) if maps else 0
    if any(len(row) != m_count for row in maps):
        raise ValueError("every image needs the same number of maps")
    if not 2 <= steps <= 256:
        raise ValueError(f"steps must be in 2..256, got {steps}")
    counts = step_counts(steps, height * width)
    images = images.detach()
    blurred = torch.stack([default_insertion_baseline(im) for im in images])
    ranks = [[pixel_ranks(m, height, width) for m in row] for row in maps]
    dev = images.device

    # Rows: (image, map or -1 for a shared input, curve 0 deletion / 1 insertion, step).
    rows: list[tuple[int, int, int, int]] = []
    for i in range(n):
        rows += [(i, -1, 0, 0), (i, -1, 0, steps), (i, -1, 1, 0)]  # image, black, blurred
        for j in range(m_count):
            for curve in (0, 1):
                rows += [(i, j, curve, k) for k in range(1, steps)]
    scores = torch.empty(len(rows), dtype=torch.float64)
    black = torch.zeros_like(images[0])
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            batch = []
            for i, j, curve, k in chunk:
                if j < 0:
                    batch.append(images[i] if (curve, k) == (0, 0) else black if curve == 0 else blurred[i])
                    continue
                mask = (ranks[i][j] < counts[k]).to(dev)
                batch.append(torch.where(mask, black, images[i]) if curve == 0
                             else torch.where(mask, images[i], blurred[i]))
            cls = torch.tensor([classes[i] for i, *_ in chunk], device=dev)
            got = score_fn(torch.stack(batch), cls)
            if tuple(got.shape) != (len(chunk),):
                raise ValueError(f"score_fn must return ({len(chunk)},) scores, got {tuple(got.shape)}")
            scores[start:start + len(chunk)] = got.detach().to("cpu", torch.float64)
            checkpoint(len(chunk))

    deletion = torch.empty(n, m_count, steps + 1, dtype=torch.float64)
    insertion = torch.empty_like(deletion)
    shared: dict[tuple[int, int, int], float] = {}
    for r, (i, j, curve, k) in enumerate(rows):
        if j < 0:
            shared[(i, curve, k)] = float(scores[r])
        else:
            (deletion if curve == 0 else insertion)[i, j, k] = scores[r]
    for i in range(n):
        deletion[i, :, 0] = insertion[i, :, steps] = shared[(i, 0, 0)]
        deletion[i, :, steps] = shared[(i, 0, steps)]
        insertion[i, :, 0] = shared[(i, 1, 0)]
    fractions = counts.double() / (height * width)
    return CurveSet(deletion, insertion, torch.trapezoid(deletion, fractions, dim=-1),
                    torch.trapezoid(insertion, fractions, dim=-1), fractions)
