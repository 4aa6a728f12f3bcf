"""Rendering: colormaps, overlays, boxes, grids and PNG encoding (pure torch + PIL)."""

from cnnviz.render.colormap import COLORMAPS, apply_colormap, colormap_lut
from cnnviz.render.grid import make_grid
from cnnviz.render.overlay import NormalizeMode, draw_boxes, normalize_map, overlay, resize_map
from cnnviz.render.png import encode_png, png_base64, to_uint8_image

__all__ = [
    "COLORMAPS",
    "NormalizeMode",
    "apply_colormap",
    "colormap_lut",
    "draw_boxes",
    "encode_png",
    "make_grid",
    "normalize_map",
    "overlay",
    "png_base64",
    "resize_map",
    "to_uint8_image",
]
