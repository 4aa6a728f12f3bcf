"""The two pictures of an evaluation: the cascading-randomization grid and the mean deletion / insertion curves.

The grid follows Adebayo et al.'s figure: one row per method, its map of one image for the
trained network and then after each further stage is randomized from the logits down. Maps are
drawn alone in their kind's colours (no photo underneath: a photo showing through would make
any map look like the object); the photo heads the first row, and each randomized map carries
its Spearman rank correlation r (|values|) with the original, so "still looks the same" is a number.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from PIL import Image, ImageDraw

from .figure import add_title, labelled_grid, legend_band, vstack
from .kinds import render_map
from .text import MUTED_COLOR, TEXT_COLOR, draw_text, from_pil, line_height

TILE = 96
PALETTE = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (23, 190, 207),
           (140, 86, 75), (227, 119, 194)]
FLOOR_COLOR = (128, 128, 128)


def _tile(image: torch.Tensor) -> torch.Tensor:
    t = image.permute(2, 0, 1).float()[None]
    t = torch.nn.functional.interpolate(t, size=(TILE, TILE), mode="bilinear", antialias=True, align_corners=False)
    return t[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8)


def cascade_grid(photo: torch.Tensor, rows: Sequence[tuple[str, str, Sequence[torch.Tensor], Sequence[float]]],
                 stages: Sequence[str], *, title: str = "") -> torch.Tensor:
    """uint8 ``[H, W, 3]``: per row ``(name, method, [original, randomized...], spearman per stage)``."""
    tiles: list[torch.Tensor] = []
    labels: list[str] = []
    blank = torch.full((TILE, TILE, 3), 255, dtype=torch.uint8)
    for r, (name, method, maps, sims) in enumerate(rows):
        tiles.append(_tile(photo) if r == 0 else blank)
        labels.append("photo" if r == 0 else "")
        for k, m in enumerate(maps):
            tiles.append(render_map(m.float(), method=method, size=(TILE, TILE)).rgb)
            labels.append(f"{name}\noriginal" if k == 0 else f"{stages[k - 1]}\nr={sims[k - 1]:.2f}")
    grid = labelled_grid(tiles, labels, ncols=2 + len(stages), font_px=12)
    return add_title(grid, title, font_px=18, subtitle="columns: the trained network, then each stage randomized from "
                     "the logits down (cumulative); r: Spearman rank correlation of |map| with the original")


def _panel(fractions: Sequence[float], lines: Sequence[tuple[Sequence[float], tuple[int, int, int], bool]],
           heading: str, top_value: float, width: int = 420, height: int = 300) -> torch.Tensor:
    img = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    fp = 13
    left, right, top, bottom = 46, 22, 10 + line_height(fp), 34
    x0, x1, y0, y1 = left, width - right, top, height - bottom
    draw_text(draw, (width / 2, 4), heading, fp, anchor="ma")
    draw.rectangle((x0, y0, x1, y1), outline=TEXT_COLOR)
    for v in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = y1 - v * (y1 - y0)
        x = x0 + v * (x1 - x0)
        draw.line((x0, y, x1, y), fill=(230, 230, 230))
        draw_text(draw, (x0 - 4, y), f"{v * top_value:.3g}", 11, anchor="rm", fill=MUTED_COLOR)
        draw_text(draw, (x, y1 + 4), f"{v:.2f}", 11, anchor="ma", fill=MUTED_COLOR)
    draw_text(draw, ((x0 + x1) / 2, height - 2), "fraction of pixels removed / revealed", 11, anchor="md",
              fill=MUTED_COLOR)
    for values, color, dashed in lines:
        pts = [(x0 + f * (x1 - x0), y1 - min(max(v / top_value, 0.0), 1.0) * (y1 - y0))
               for f, v in zip(fractions, values, strict=True)]
        if dashed:  # 6 px drawn, 4 px left out, along the whole polyline
            for (ax, ay), (bx, by) in zip(pts, pts[1:], strict=False):
                length = math.hypot(bx - ax, by - ay)
                t = 0.0
                while t < length:
                    u, v = t / length, min(t + 6.0, length) / length
                    draw.line((ax + u * (bx - ax), ay + u * (by - ay), ax + v * (bx - ax), ay + v * (by - ay)),
                              fill=color, width=2)
                    t += 10.0
        else:
            draw.line(pts, fill=color, width=2)
    return from_pil(img)


def curves_picture(fractions: Sequence[float], methods: Sequence[tuple[str, Sequence[float], Sequence[float]]],
                   floor: tuple[Sequence[float], Sequence[float]], *, title: str = "") -> torch.Tensor:
    """Deletion (left) and insertion (right) probability curves per method, the random order dashed grey."""
    colors = [PALETTE[i % len(PALETTE)] for i in range(len(methods))]
    dele = [(d, c, False) for (_, d, _), c in zip(methods, colors, strict=True)] + [(floor[0], FLOOR_COLOR, True)]
    ins = [(i, c, False) for (_, _, i), c in zip(methods, colors, strict=True)] + [(floor[1], FLOOR_COLOR, True)]
    peak = max(max(v) for values, _, _ in dele + ins for v in [values])
    top = min(1.0, max(0.05, math.ceil(peak * 20) / 20))  # the y axis ends at the next 0.05 above every curve
    panels = torch.cat([_panel(fractions, dele, "deletion (lower is better)", top),
                        _panel(fractions, ins, "insertion (higher is better)", top)], 1)
    legend = legend_band([(n, c) for (n, _, _), c in zip(methods, colors, strict=True)]
                         + [("random order", FLOOR_COLOR)], int(panels.shape[1]), 13)
    out = vstack([panels, legend], gap=0)
    return add_title(out, title, font_px=18, subtitle="probability of each image's labelled class, mean over images")
