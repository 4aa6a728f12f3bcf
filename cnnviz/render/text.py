"""Text on pictures: a scalable bundled font, sizes relative to the picture, wrapping, drawing.

Pillow (>= 10.1, built with FreeType) ships a scalable font behind ``ImageFont.load_default(size=)``,
so captions need no font file and no download. Where FreeType is missing the fixed bitmap font is
the fallback: smaller than asked, but still text rather than a failure.

Pictures are uint8 ``[H, W, 3]`` tensors everywhere else in :mod:`cnnviz.render`; the helpers here
convert to PIL only for the drawing and back.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

log = logging.getLogger(__name__)

Color = tuple[int, int, int]

MIN_FONT_PX = 12
"""No caption is drawn smaller than this: below ~12 px digits stop being readable on a screen."""

TEXT_COLOR: Color = (20, 20, 20)
MUTED_COLOR: Color = (90, 90, 90)

__all__ = ["MIN_FONT_PX", "draw_text", "font", "font_px_for", "from_pil", "line_height", "paste", "text_band",
           "text_width", "to_pil", "wrap"]


_local = threading.local()


def font(px: int) -> Any:
    """The bundled font at ``px`` pixels, cached per size and per thread.

    Per thread because a FreeType face is not safe to share between threads, and the service
    renders pictures from a thread pool.
    """
    px = max(1, int(px))
    cache: dict[int, Any] = _local.__dict__.setdefault("fonts", {})
    f = cache.get(px)
    if f is None:
        try:
            f = ImageFont.load_default(size=px)
        except (TypeError, ImportError, OSError):  # Pillow without FreeType: fixed-size bitmap font
            log.warning("no scalable font (Pillow without FreeType); captions use the small bitmap font")
            f = ImageFont.load_default()
        cache[px] = f
    return f


def _measure() -> ImageDraw.ImageDraw:
    d = _local.__dict__.get("measure")
    if d is None:
        d = _local.__dict__["measure"] = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    return d


def font_px_for(width: int, height: int, fraction: float = 0.04, minimum: int = MIN_FONT_PX,
                maximum: int = 48) -> int:
    """A font size that reads well on a ``width x height`` picture: ``fraction`` of its longer side.

    Clamped to ``[minimum, maximum]``: small tiles still get legible text, and big photos do not
    get headline-sized captions.
    """
    return int(min(max(round(fraction * max(width, height)), minimum), maximum))


def text_width(text: str, px: int) -> int:
    """Width in pixels of one line of ``text`` at ``px``."""
    if not text:
        return 0
    x0, _, x1, _ = _measure().textbbox((0, 0), text, font=font(px))
    return int(np.ceil(x1 - x0))


def line_height(px: int) -> int:
    """Height of one line of text at ``px``, ascender to descender plus a little leading."""
    _, y0, _, y1 = _measure().textbbox((0, 0), "Ag|(0.9)", font=font(px))
    return int(np.ceil(y1 - min(y0, 0))) + max(2, px // 5)


NBSP = "\u00a0"
"""A no-break space: joins words a caption must keep on one line ("p = 0.07"); drawn as a space."""


def wrap(text: str, px: int, width: int) -> list[str]:
    """``text`` broken into lines no wider than ``width`` at ``px`` (on spaces; overlong words by character).

    Explicit newlines are kept, so callers can ask for a line break. A no-break space (:data:`NBSP`)
    never breaks and comes back as a plain space, since the shipped font has no glyph for it.
    """

    def width_of(s: str) -> int:
        return text_width(s.replace(NBSP, " "), px)

    lines: list[str] = []
    for para in text.split("\n"):
        cur = ""
        for word in para.split(" "):
            cand = f"{cur} {word}" if cur else word
            if width_of(cand) <= width:
                cur = cand
                continue
            if cur:
                lines.append(cur)
            # A word wider than the line on its own is cut where it stops fitting.
            while len(word) > 1 and width_of(word) > width:
                cut = 1
                while cut < len(word) and width_of(word[:cut + 1]) <= width:
                    cut += 1
                lines.append(word[:cut])
                word = word[cut:]
            cur = word
        lines.append(cur)
    return [line.replace(NBSP, " ") for line in lines]


def to_pil(img: torch.Tensor) -> Image.Image:
    """uint8 ``[H, W, 3]`` tensor -> PIL RGB image (a copy)."""
    if img.dtype != torch.uint8 or img.dim() != 3 or img.shape[2] != 3:
        raise ValueError(f"expected uint8 [H, W, 3], got {img.dtype} {tuple(img.shape)}")
    return Image.fromarray(img.detach().cpu().contiguous().numpy())


def from_pil(img: Image.Image) -> torch.Tensor:
    """PIL image -> uint8 ``[H, W, 3]`` tensor."""
    return torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.uint8).copy())


def draw_text(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, px: int, *,
              fill: Color = TEXT_COLOR, anchor: str = "la", stroke: Color | None = None) -> None:
    """Draw one line at ``xy`` (PIL ``anchor``, default left/ascender); ``stroke`` adds a halo for photos."""
    kw: dict[str, Any] = {}
    if stroke is not None:
        kw = {"stroke_width": max(1, px // 8), "stroke_fill": stroke}
    draw.text(xy, text, fill=fill, font=font(px), anchor=anchor, **kw)


def text_band(lines: Sequence[str], width: int, px: int, *, background: Color = (255, 255, 255),
              colors: Sequence[Color] | None = None, sizes: Sequence[int] | None = None,
              align: str = "left", margin: int | None = None) -> torch.Tensor:
    """A uint8 ``[h, width, 3]`` strip holding ``lines`` (each wrapped to the width), top to bottom.

    ``sizes`` and ``colors`` give each input line its own font size and colour (e.g. a title and a
    smaller grey subtitle). The strip is exactly as tall as its text plus margins.
    """
    margin = max(2, px // 3) if margin is None else margin
    sizes = list(sizes) if sizes is not None else [px] * len(lines)
    colors = list(colors) if colors is not None else [TEXT_COLOR] * len(lines)
    laid: list[tuple[str, int, Color]] = []
    for line, size, color in zip(lines, sizes, colors, strict=True):
        for part in wrap(line, size, max(1, width - 2 * margin)):
            laid.append((part, size, color))
    height = 2 * margin + sum(line_height(s) for _, s, _ in laid)
    img = Image.new("RGB", (width, max(height, 1)), background)
    draw = ImageDraw.Draw(img)
    y = margin
    for part, size, color in laid:
        if align == "center":
            draw_text(draw, (width / 2, y), part, size, fill=color, anchor="ma")
        else:
            draw_text(draw, (margin, y), part, size, fill=color)
        y += line_height(size)
    return from_pil(img)


def paste(canvas: torch.Tensor, tile: torch.Tensor, y: int, x: int) -> None:
    """Copy ``tile`` into ``canvas`` at (y, x), clipped to the canvas (in place)."""
    h, w = tile.shape[:2]
    H, W = canvas.shape[:2]
    y0, x0, y1, x1 = max(y, 0), max(x, 0), min(y + h, H), min(x + w, W)
    if y0 < y1 and x0 < x1:
        canvas[y0:y1, x0:x1] = tile[y0 - y:y1 - y, x0 - x:x1 - x].to(canvas.device)
