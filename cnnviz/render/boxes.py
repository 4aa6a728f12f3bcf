"""A detection drawn on a picture: its box outlined, its label and score on a tab above it.

The outline is white-edged so it reads on any map colour (a jet overlay is every colour at once);
the tab sits above the box, or inside its top when the box touches the picture's top edge.
"""

from __future__ import annotations

import torch
from PIL import ImageDraw

from .text import draw_text, font_px_for, from_pil, text_width, to_pil

BOX_COLOR = (255, 0, 255)  # magenta: not in jet, viridis or the diverging maps


def draw_labelled_box(image: torch.Tensor, box: tuple[float, float, float, float], text: str,
                      color: tuple[int, int, int] = BOX_COLOR) -> torch.Tensor:
    """A copy of uint8 ``[H, W, 3]`` ``image`` with ``box`` (x0, y0, x1, y1 in its pixels) outlined and labelled."""
    h, w = image.shape[:2]
    pil = to_pil(image)
    draw = ImageDraw.Draw(pil)
    line = max(2, round(max(h, w) / 160))
    x0, y0, x1, y1 = (float(v) for v in box)
    x0, y0 = max(0.0, min(x0, w - 1.0)), max(0.0, min(y0, h - 1.0))
    x1, y1 = max(x0 + 1, min(x1, w - 1.0)), max(y0 + 1, min(y1, h - 1.0))
    draw.rectangle((x0 - 1, y0 - 1, x1 + 1, y1 + 1), outline=(255, 255, 255), width=line + 2)
    draw.rectangle((x0, y0, x1, y1), outline=color, width=line)
    if text:
        px = font_px_for(w, h, 0.035)
        tw, th = text_width(text, px) + 2 * line, round(px * 1.3)
        ty = y0 - th if y0 - th >= 0 else y0
        tx = max(0.0, min(x0, w - tw))
        draw.rectangle((tx, ty, tx + tw, ty + th), fill=color)
        draw_text(draw, (tx + line, ty + th / 2), text, px, fill=(255, 255, 255), anchor="lm")
    return from_pil(pil)
