"""A segmenter's pictures: label maps as palette PNGs, and a region's outline drawn and labelled.

A label map is written the way PASCAL VOC ships its annotations: a palette PNG whose pixel values
*are* the class indices (a program reads the classes back from the PNG, ``numpy.asarray`` of the
image) and whose palette colours them for a person (VOC's palette: class 0 black, then distinct
colours by bit interleaving). Networks with more than 256 classes get a 16-bit greyscale PNG of the
indices instead, which has no palette.

A region target's overlay shows the region's exact extent as a band along its border, white with a
dark edge so it reads over any colour of the heat map, and a tag with the class's name at the
region's top left.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image, ImageDraw

from cnnviz.localization.polygons import mask_outline

from .text import draw_text, font_px_for, from_pil, text_width, to_pil

__all__ = ["draw_region", "label_map_png", "label_palette"]


def label_palette(n: int = 256) -> torch.Tensor:
    """``[n, 3]`` uint8: PASCAL VOC's colour of each class index (0 black, 1 dark red, 2 dark green, ...)."""
    pal = torch.zeros(n, 3, dtype=torch.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for bit in range(8):
            r |= ((c >> 0) & 1) << (7 - bit)
            g |= ((c >> 1) & 1) << (7 - bit)
            b |= ((c >> 2) & 1) << (7 - bit)
            c >>= 3
        pal[i] = torch.tensor([r, g, b], dtype=torch.uint8)
    return pal


def label_map_png(labels: torch.Tensor) -> bytes:
    """PNG of a ``[H, W]`` map of class indices: palette PNG (values = indices) below 256 classes, else 16-bit grey."""
    arr = labels.detach().cpu().numpy()
    if arr.size and (arr.min() < 0 or arr.max() > 65535):
        raise ValueError("class indices must lie in 0..65535")
    buf = io.BytesIO()
    if arr.size == 0 or arr.max() < 256:
        img = Image.fromarray(arr.astype(np.uint8), mode="P")
        img.putpalette(label_palette(256).flatten().tolist())
        img.save(buf, format="PNG", optimize=True)
    else:
        Image.fromarray(arr.astype(np.uint16)).save(buf, format="PNG")
    return buf.getvalue()


def draw_region(image: torch.Tensor, mask: torch.Tensor, label: str | None = None,
                color: tuple[int, int, int] = (255, 255, 255), width: int | None = None) -> torch.Tensor:
    """A copy of ``image`` (uint8 ``[H, W, 3]``) with the border of ``mask`` (``[H, W]``, resized if it differs)
    drawn as a band, and ``label`` tagged at the region's top left.

    The band is ``width`` px (default: about 0.6 % of the longer side, at least 2) in ``color`` with a
    one-pixel dark line along its inner edge, so it stays visible over the jet colours of a heat map
    and over a white photo alike.
    """
    h, w = image.shape[:2]
    m = mask.bool()
    if tuple(m.shape) != (h, w):
        m = torch.nn.functional.interpolate(m[None, None].float(), size=(h, w), mode="nearest")[0, 0] > 0.5
    if not bool(m.any()):
        return image.clone()
    width = width or max(2, round(max(h, w) * 0.006))
    out = image.clone()
    band = mask_outline(m, width)
    edge = mask_outline(m, width + 1) & ~band
    out[edge.to(out.device)] = torch.tensor((20, 20, 20), dtype=torch.uint8, device=out.device)
    out[band.to(out.device)] = torch.tensor(color, dtype=torch.uint8, device=out.device)
    if not label:
        return out
    ys, xs = m.nonzero(as_tuple=True)
    x0, y0 = int(xs.min()), int(ys.min())
    px = font_px_for(w, h, 0.045)
    tw, th = text_width(label, px) + px // 2, int(px * 1.35)
    ty = y0 - th if y0 - th >= 0 else min(h - th, y0 + width)  # above the region, else just inside it
    tx = max(0, min(x0, w - tw))
    pil = to_pil(out)
    d = ImageDraw.Draw(pil)
    d.rectangle((tx, ty, tx + tw - 1, ty + th - 1), fill=(20, 20, 20))
    draw_text(d, (tx + px // 4, ty + th // 2), label, px, fill=color, anchor="lm")
    return from_pil(pil)
