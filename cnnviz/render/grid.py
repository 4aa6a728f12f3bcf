"""Tile grids (filters, activation maps, top patches) as one uint8 image."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch

log = logging.getLogger(__name__)


def grid_shape(tiles: Sequence[torch.Tensor], ncols: int | None, pad: int, *, caller: str) -> tuple[int, int]:
    """(rows, columns) of a grid of ``tiles``, after the checks every grid of pictures makes.

    The tiles are uint8 ``[h, w, 3]`` (at least one), ``pad`` >= 0 and ``ncols`` >= 1 (default
    ceil(sqrt(n)), a near-square picture; never more columns than tiles). ``caller`` names the
    function in the message of an empty grid. One check for :func:`make_grid` and
    :func:`~.figure.labelled_grid`, so the two cannot come to accept different tiles.
    """
    if not tiles:
        raise ValueError(f"{caller} needs at least one tile")
    for t in tiles:
        if t.dim() != 3 or t.shape[2] != 3 or t.dtype != torch.uint8:
            raise ValueError(f"tiles must be uint8 [h, w, 3], got {t.dtype} {tuple(t.shape)}")
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")
    n = len(tiles)
    cols = ncols if ncols is not None else math.ceil(math.sqrt(n))
    if cols < 1:
        raise ValueError(f"ncols must be >= 1, got {ncols}")
    cols = min(cols, n)
    return math.ceil(n / cols), cols


def make_grid(
    tiles: list[torch.Tensor],
    ncols: int | None = None,
    pad: int = 2,
    pad_value: int = 255,
) -> torch.Tensor:
    """Lay uint8 tiles [h, w, 3] out in rows of ``ncols`` with ``pad`` pixels between and around.

    Cells are the size of the largest tile and smaller tiles are centered, so mixed-size crops
    (e.g. receptive fields clipped at the border) still line up. ``ncols`` defaults to
    ceil(sqrt(n)), which gives a near-square picture.
    """
    rows, cols = grid_shape(tiles, ncols, pad, caller="make_grid")
    ch = max(int(t.shape[0]) for t in tiles)
    cw = max(int(t.shape[1]) for t in tiles)
    H = rows * ch + (rows + 1) * pad
    W = cols * cw + (cols + 1) * pad
    device = tiles[0].device
    out = torch.full((H, W, 3), int(pad_value), dtype=torch.uint8, device=device)
    for i, t in enumerate(tiles):
        r, c = divmod(i, cols)
        th, tw = int(t.shape[0]), int(t.shape[1])
        y = pad + r * (ch + pad) + (ch - th) // 2
        x = pad + c * (cw + pad) + (cw - tw) // 2
        out[y : y + th, x : x + tw] = t.to(device)
    return out
