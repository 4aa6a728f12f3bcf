"""Localization from a saliency map: threshold -> mask -> regions (boxes, contours), CRF refinement."""

from cnnviz.localization.crf import crf_grid_shape, dense_crf_refine
from cnnviz.localization.regions import Region, mask_to_regions, scale_regions
from cnnviz.localization.threshold import otsu_threshold, threshold_mask

__all__ = [
    "Region",
    "crf_grid_shape",
    "dense_crf_refine",
    "mask_to_regions",
    "otsu_threshold",
    "scale_regions",
    "threshold_mask",
]
