"""Model internals: filters, activations (inline); collections, top patches, neighbours (jobs).

Collection views take images as ``[3,H,W]`` tensors in [0,1], batch them, and accept the job
callbacks ``progress(done, total, stage)`` and ``cancel() -> bool`` (checked between batches;
a cancel raises :class:`~cnnviz.synthesis.loop.Cancelled`).
"""

from .activations import ChannelStats, LayerActivations, layer_activations
from .embedding_map import REDUCTIONS, make_thumbnail, pca_2d, reduce_2d, thumbnail_map
from .features import (
    POOLS,
    Cancelled,
    default_batch_size,
    extract_features,
    layer_output,
    pixel_features,
    pool_features,
)
from .filters import filter_tiles, first_conv
from .invariance import invariance_curves, plot_curves
from .neighbours import METRICS, NeighbourLists, distance_matrix, nearest, neighbour_lists
from .receptive import ReceptiveField, receptive_field, receptive_field_size, receptive_fields
from .top_patches import (
    PROJECTIONS,
    ChannelPatches,
    Patch,
    TopActivations,
    display_projection,
    patch_grid,
    project_units,
    scan_top_activations,
    top_activating_patches,
)
from .verification import (
    UNKNOWN,
    Calibration,
    Gallery,
    Identification,
    calibrate_threshold,
    distance,
    embed,
    pair_accuracy,
    verify,
)

__all__ = [
    "METRICS", "POOLS", "PROJECTIONS", "REDUCTIONS", "UNKNOWN",
    "Calibration", "Cancelled", "ChannelPatches", "ChannelStats", "Gallery", "Identification", "LayerActivations",
    "NeighbourLists", "Patch", "ReceptiveField", "TopActivations",
    "calibrate_threshold", "default_batch_size", "display_projection", "distance", "distance_matrix", "embed",
    "extract_features",
    "filter_tiles", "first_conv", "invariance_curves", "layer_activations", "layer_output", "make_thumbnail",
    "nearest", "neighbour_lists", "pair_accuracy", "patch_grid", "pca_2d", "pixel_features", "plot_curves",
    "pool_features",
    "project_units", "receptive_field", "receptive_field_size", "receptive_fields", "reduce_2d",
    "scan_top_activations", "thumbnail_map", "top_activating_patches", "verify",
]
