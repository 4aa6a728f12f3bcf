"""The pointing game, its energy-based variant and the centre-point baseline, over several boxes.

The pointing game (Zhang et al., ECCV 2016) counts a hit when the map's maximum lands inside an
annotated box grown by a tolerance (15 px); with several boxes, inside any of them. The
energy-based game (Wang et al., Score-CAM, 2020) asks how much of the map's positive mass falls
inside the boxes, which does not hinge on one pixel. TorchRay's table reads each method against a
*centre* baseline that always points at the middle of the image: a method that does not beat it
has learnt nothing about where objects are from the model. :func:`centre_map` is that baseline as a
map, so it is scored by the very same code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..metrics.faithfulness import pointing_game

Box = tuple[int, int, int, int]


def pointing_hit(m: Tensor, boxes: list[Box], image_hw: tuple[int, int], tolerance: int = 15) -> bool:
    """Whether the maximum of ``m`` (covering the whole image) falls in any box grown by ``tolerance``."""
    return any(pointing_game(m, box, image_hw, tolerance=tolerance) for box in boxes)


def box_mask(boxes: list[Box], image_hw: tuple[int, int], grid_hw: tuple[int, int]) -> Tensor:
    """``[h, w]`` bool: the cells of a grid over the image whose centres lie in a box (x1, y1 exclusive)."""
    img_h, img_w = image_hw
    h, w = grid_hw
    ys = (torch.arange(h, dtype=torch.float64) + 0.5) * img_h / h
    xs = (torch.arange(w, dtype=torch.float64) + 0.5) * img_w / w
    mask = torch.zeros(h, w, dtype=torch.bool)
    for x0, y0, x1, y1 in boxes:
        mask |= ((ys >= y0) & (ys < y1))[:, None] & ((xs >= x0) & (xs < x1))[None, :]
    return mask


def energy_in_boxes(m: Tensor, boxes: list[Box], image_hw: tuple[int, int], grid_hw: tuple[int, int]) -> float:
    """Share of the map's positive mass inside the boxes, the map resized bilinearly to ``grid_hw``.

    ``grid_hw`` is the network's input size: the map is compared at the resolution the model saw,
    whatever the photo's size. A map with no positive value scores 0.
    """
    pos = m.detach().float()
    if tuple(pos.shape) != tuple(grid_hw):
        pos = F.interpolate(pos[None, None], size=grid_hw, mode="bilinear", align_corners=False)[0, 0]
    pos = pos.clamp(min=0)
    total = float(pos.sum())
    if total <= 0:
        return 0.0
    return float(pos[box_mask(boxes, image_hw, grid_hw)].sum()) / total


def centre_map(h: int, w: int) -> Tensor:
    """A Gaussian bump on the image centre (sigma a quarter of each side): the centre-point baseline."""
    ys = (torch.arange(h, dtype=torch.float32) - (h - 1) / 2) / (h / 4)
    xs = (torch.arange(w, dtype=torch.float32) - (w - 1) / 2) / (w / 4)
    return torch.exp(-0.5 * (ys[:, None] ** 2 + xs[None, :] ** 2))
