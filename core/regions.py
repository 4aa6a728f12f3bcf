"""Region targets between the request and the engine: their checks, and their masks at each size.

A region target names a segmenter's class and a region in the original image's pixels: the class's
predicted mask, a box or a polygon (:class:`core.schemas.explain.RegionTargetParams`). This module
refuses what cannot be explained before any work (a model that is not a segmenter, a class out of
range, a region outside an image or covering no pixel: 422s naming the task and the bounds), turns
a box or polygon into the engine's masks at the network input (a segmenter's image is stretched to
the input, so the mapping is a scale per axis) and gives the pictures and the faithfulness numbers
the region at the image's own size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from cnnviz.localization.polygons import box_polygon, polygon_mask, scale_points
from cnnviz.models import LoadedModel
from core.errors import Invalid
from core.schemas.explain import ExplainParams, RegionInfo, RegionTargetParams
from core.segmenting import label_map

Size = tuple[int, int]  # (height, width)


def region_polygon(region: RegionTargetParams) -> list[tuple[float, float]] | None:
    """The box or polygon as a polygon in original pixels; None for the predicted mask."""
    if region.box is not None:
        return box_polygon(region.box)
    if region.polygon is not None:
        return [(float(x), float(y)) for x, y in region.polygon]
    return None


def network_masks(region: RegionTargetParams, sizes: Sequence[Size], side: int) -> torch.Tensor | None:
    """Boolean ``[N, side, side]`` masks of the box or polygon at the network input (None: predicted masks)."""
    poly = region_polygon(region)
    if poly is None:
        return None
    return torch.stack([polygon_mask(scale_points(poly, side / w, side / h), side, side) for h, w in sizes])


def image_mask(region: RegionTargetParams, size: Size) -> torch.Tensor | None:
    """The box or polygon as a boolean ``[H, W]`` mask of an image of ``size`` (None: predicted masks)."""
    poly = region_polygon(region)
    return None if poly is None else polygon_mask(poly, size[0], size[1])


def target_mask(region: RegionTargetParams, logits: torch.Tensor, cls: int, size: Size, orig: Size) -> torch.Tensor:
    """The region of a target as a mask of ``size`` for an image whose original size is ``orig``: the box or
    polygon scaled and rasterized there, or the class's predicted mask from logits upsampled there.

    Drawn at the picture's own size, an outline follows a polygon's edges or a mask's border smoothly
    instead of in steps of the image's (or the network's) pixels.
    """
    poly = region_polygon(region)
    if poly is None:
        return predicted_mask(logits, cls, size)
    return polygon_mask(scale_points(poly, size[1] / orig[1], size[0] / orig[0]), size[0], size[1])


def predicted_mask(logits: torch.Tensor, cls: int, size: Size) -> torch.Tensor:
    """The pixels of an image of ``size`` predicted as ``cls``: logits ``[C, h, w]`` upsampled, then arg-max.

    Upsampling the logits (not the label map) draws the mask's border as smoothly as the network
    saw it, instead of in blocks of the network's pixels.
    """
    return label_map(logits, size) == cls


def check_region(model: LoadedModel, params: ExplainParams, sizes: Sequence[Size] | None) -> None:
    """422 for a region target that cannot be explained: naming the task, the classes or the image's bounds."""
    region = params.region
    assert region is not None
    task = model.task
    if task != "segmentation":
        raise Invalid("task-mismatch", "Region targets explain a segmenter",
                      f"model {model.name!r} is a {task} model: a region (a class and its mask, a box or a polygon) "
                      "needs task = \"segmentation\"; give "
                      + ("box for a detector" if task == "detection" else "target, targets or top_k for a classifier"),
                      task=task)
    n = model.spec.num_classes
    if region.target is not None and region.target >= n:
        raise Invalid("unknown-class", "The region's class is out of range",
                      f"class {region.target} is outside 0..{n - 1} of segmenter {model.name!r}; the classes are "
                      f"{', '.join(f'{i}: {lb}' for i, lb in enumerate(model.labels))}", task=task, bounds=[0, n - 1])
    poly = region_polygon(region)
    if poly is None or not sizes:
        return
    side = params.resolution or model.preprocessing.input_size
    what = "box" if region.box is not None else "polygon"
    for i, (h, w) in enumerate(sizes):
        outside = [(x, y) for x, y in poly if not (0 <= x <= w and 0 <= y <= h)]
        if outside:
            x, y = outside[0]
            raise Invalid("region-out-of-bounds", f"The {what} is outside the image",
                          f"the {what}'s point ({x:g}, {y:g}) is outside image {i}, whose points lie in x 0..{w}, "
                          f"y 0..{h}", task=task, image=i, bounds=[0, 0, w, h])
        if not bool(polygon_mask(poly, h, w).any()):
            raise Invalid("empty-region", f"The {what} is empty",
                          f"the {what} covers no pixel of image {i} (a pixel counts when its centre is inside)",
                          task=task, image=i)
        if not bool(polygon_mask(scale_points(poly, side / w, side / h), side, side).any()):
            raise Invalid("empty-region", f"The {what} is empty at the network input",
                          f"the {what} covers no pixel of the network input ({side}x{side}) for image {i} ({w}x{h}); "
                          "give a larger region or a larger resolution", task=task, image=i)


def region_info(region: RegionTargetParams, mask: torch.Tensor, predicted: torch.Tensor) -> RegionInfo:
    """What the answer says of the region (``mask`` ``[H, W]``, ``predicted`` the class's predicted mask)."""
    area = int(mask.sum())
    box = None
    if area:
        ys, xs = mask.nonzero(as_tuple=True)
        box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    return RegionInfo(source=region.source, box=box, area=area, fraction=area / mask.numel(),
                      predicted_fraction=float((mask & predicted).sum()) / max(1, area))
