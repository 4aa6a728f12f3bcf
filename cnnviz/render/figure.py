"""Figures for people who look rather than parse: titled, with a colour scale, and captioned grids.

:func:`explain_figure` turns a photo and a raw map into one picture: a title (method, class,
probability, layer), a line saying how the colours were scaled, the overlay (and optionally the
heatmap and the outline of the top region) and a colour bar whose ticks are raw values of the map
(-v, 0, +v for signed maps; min..max for positive; 0..p99 for clipped unsigned ones). Every size
(font, bar, margins) follows the picture's size, with text never below :data:`~.text.MIN_FONT_PX`.

:func:`labelled_grid` lays tiles out with a caption under each, for multi-map answers, method
comparisons and collection views.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from PIL import ImageDraw

from .colormap import colormap_lut
from .grid import grid_shape
from .kinds import (
    DEFAULT_CLIP_PERCENTILE,
    MapKind,
    MapScale,
    PositiveMode,
    RenderedMap,
    Weighting,
    blend,
    outline,
    render_map,
)
from .text import (
    MIN_FONT_PX,
    MUTED_COLOR,
    TEXT_COLOR,
    Color,
    draw_text,
    font_px_for,
    from_pil,
    line_height,
    paste,
    text_band,
    text_width,
    to_pil,
    wrap,
)

log = logging.getLogger(__name__)

Box = tuple[int, int, int, int]
"""(x0, y0, x1, y1) in pixels, x1 / y1 exclusive."""

View = Literal["overlay", "heatmap", "outline", "photo"]
VIEWS: tuple[str, ...] = ("overlay", "heatmap", "outline", "photo")

WHITE: Color = (255, 255, 255)

__all__ = ["VIEWS", "Box", "Figure", "View", "add_title", "colour_bar", "compose_figure", "explain_figure",
           "figure_title", "hstack", "labelled_grid", "legend_band", "vstack"]


@dataclass(frozen=True)
class Figure:
    """A composed figure and where its parts are (so tests and callers can find them)."""

    image: torch.Tensor  # uint8 [H, W, 3]
    title_box: Box | None
    panel_boxes: list[Box] = field(default_factory=list)
    bar_box: Box | None = None  # the colour ramp itself, without frame or ticks


def figure_title(method: str | None = None, label: str | None = None, probability: float | None = None,
                 layer: str | None = None) -> str:
    """``"Grad-CAM · Egyptian cat (p = 0.62) · layer act_head"`` from whichever parts are given."""
    parts = []
    if method:
        parts.append(method)
    if label is not None:
        parts.append(f"{label} (p = {probability:.2f})" if probability is not None else str(label))
    elif probability is not None:
        parts.append(f"p = {probability:.2f}")
    if layer:
        parts.append(f"layer {layer}")
    return " · ".join(parts)


def _ramp(colormap: str, height: int, width: int) -> torch.Tensor:
    """uint8 ``[height, width, 3]``: the colormap from 1 (top row) to 0 (bottom row)."""
    lut = colormap_lut(colormap)
    pos = torch.linspace(1.0, 0.0, height) if height > 1 else torch.ones(1)
    idx = (pos * 255.0).round().long()
    return lut[idx][:, None, :].expand(height, width, 3).contiguous()


def colour_bar(scale: MapScale, colormap: str, height: int, font_px: int, *,
               background: Color = WHITE) -> tuple[torch.Tensor, Box]:
    """A vertical colour bar with tick labels as uint8 ``[height, w, 3]``, and the ramp's box in it.

    Ticks come from :meth:`MapScale.ticks`: raw values at the top, middle and bottom of the ramp.
    """
    px = max(MIN_FONT_PX, round(0.85 * font_px))
    ticks = scale.ticks()
    lab_w = max(text_width(t, px) for _, t in ticks)
    half = line_height(px) // 2 + 1
    bar_w = max(MIN_FONT_PX, round(0.9 * font_px))
    gap, tick = max(4, font_px // 3), max(3, font_px // 4)
    ramp_h = max(8, height - 2 * half)
    width = gap + bar_w + tick + 3 + lab_w + gap
    out = torch.tensor(background, dtype=torch.uint8).expand(height, width, 3).clone()
    x0, y0 = gap, half
    out[y0 - 1:y0 + ramp_h + 1, x0 - 1:x0 + bar_w + 1] = torch.tensor(TEXT_COLOR, dtype=torch.uint8)  # frame
    out[y0:y0 + ramp_h, x0:x0 + bar_w] = _ramp(colormap, ramp_h, bar_w)
    img = to_pil(out)
    draw = ImageDraw.Draw(img)
    for pos, text in ticks:
        y = y0 + (1.0 - pos) * (ramp_h - 1)
        draw.line((x0 + bar_w, y, x0 + bar_w + tick, y), fill=TEXT_COLOR, width=max(1, font_px // 12))
        draw_text(draw, (x0 + bar_w + tick + 3, y), text, px, anchor="lm")
    return from_pil(img), (x0, y0, x0 + bar_w, y0 + ramp_h)


def compose_figure(panels: Sequence[torch.Tensor], *, scale: MapScale | None = None, colormap: str | None = None,
                   title: str = "", subtitle: str = "", panel_titles: Sequence[str] | None = None,
                   font_px: int | None = None, background: Color = WHITE) -> Figure:
    """Lay out same-height uint8 ``[H, W, 3]`` panels side by side under a title, with a colour bar.

    The bar is drawn when both ``scale`` and ``colormap`` are given (a gradient_rgb picture has no
    colormap, so no bar: its subtitle says grey is zero). ``font_px`` defaults to ~4 % of the
    panel's longer side, never under 12 px; the subtitle is a little smaller and grey.
    """
    if not panels:
        raise ValueError("compose_figure needs at least one panel")
    for p in panels:
        if p.dtype != torch.uint8 or p.dim() != 3 or p.shape[2] != 3:
            raise ValueError(f"panels must be uint8 [H, W, 3], got {p.dtype} {tuple(p.shape)}")
    ph = max(int(p.shape[0]) for p in panels)
    pw = max(int(p.shape[1]) for p in panels)
    fp = font_px or font_px_for(pw, ph)
    pad = max(6, fp // 2)
    sub_px = max(MIN_FONT_PX, round(0.8 * fp))
    cap_px = max(MIN_FONT_PX, round(0.85 * fp))
    bar = bar_box = None
    if scale is not None and colormap is not None:
        bar, bar_box = colour_bar(scale, colormap, ph, fp, background=background)
    panels_w = sum(int(p.shape[1]) for p in panels) + pad * (len(panels) - 1)
    width = pad + panels_w + (int(bar.shape[1]) if bar is not None else 0) + pad
    lines, sizes, colors = [], [], []
    if title:
        lines, sizes, colors = [title], [fp], [TEXT_COLOR]
    if subtitle:
        lines, sizes, colors = [*lines, subtitle], [*sizes, sub_px], [*colors, MUTED_COLOR]
    band = text_band(lines, width, fp, sizes=sizes, colors=colors, background=background,
                     margin=pad) if lines else None
    cap_h = line_height(cap_px) + 2 if panel_titles else 0
    top = int(band.shape[0]) if band is not None else pad
    height = top + cap_h + ph + pad
    canvas = torch.tensor(background, dtype=torch.uint8).expand(height, width, 3).clone()
    if band is not None:
        paste(canvas, band, 0, 0)
    boxes: list[Box] = []
    x = pad
    for p in panels:
        h, w = int(p.shape[0]), int(p.shape[1])
        y = top + cap_h + (ph - h) // 2
        paste(canvas, p.cpu(), y, x)
        boxes.append((x, y, x + w, y + h))
        x += w + pad
    if bar is not None and bar_box is not None:
        bx = pad + panels_w
        paste(canvas, bar, top + cap_h, bx)
        bar_box = (bar_box[0] + bx, bar_box[1] + top + cap_h, bar_box[2] + bx, bar_box[3] + top + cap_h)
    if panel_titles:
        img = to_pil(canvas)
        draw = ImageDraw.Draw(img)
        for (x0, _, x1, _), name in zip(boxes, panel_titles, strict=True):
            text = wrap(name, cap_px, x1 - x0)[0]
            draw_text(draw, ((x0 + x1) / 2, top), text, cap_px, fill=MUTED_COLOR, anchor="ma")
        canvas = from_pil(img)
    title_box = (0, 0, width, top) if band is not None else None
    return Figure(canvas, title_box, boxes, bar_box)


def explain_figure(image: torch.Tensor, raw: torch.Tensor, *, method: str | None = None,
                   kind: MapKind | None = None, reduce: str | None = None, method_title: str | None = None,
                   label: str | None = None, probability: float | None = None, layer: str | None = None,
                   clip_percentile: float | None = DEFAULT_CLIP_PERCENTILE, colormap: str | None = None,
                   views: Sequence[View] = ("overlay",), alpha: float | None = None,
                   weighting: Weighting | None = None, positive: PositiveMode = "minmax",
                   outline_fraction: float = 0.25, title: str | None = None,
                   font_px: int | None = None) -> torch.Tensor:
    """One readable picture of a map over its photo: uint8 ``[H', W', 3]``.

    ``image`` is the photo (uint8 ``[H, W, 3]``, any size); ``raw`` the untouched map (``[h, w]``,
    or ``[3, h, w]`` for ``gradient_rgb``), resized to the photo for display. ``kind`` defaults to
    ``method``'s (:data:`~.kinds.DEFAULT_KIND`). ``views`` picks the panels, side by side:
    ``overlay`` (blend per kind), ``heatmap``, ``outline`` (contour of the top ``outline_fraction``
    of the map over the photo) and ``photo``. The title is ``title`` or built from ``method_title``
    (else ``method``), ``label``, ``probability`` and ``layer``; the subtitle says how the colours
    were scaled, and the colour bar's ticks are raw values.
    """
    if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be uint8 [H, W, 3], got {image.dtype} {tuple(image.shape)}")
    if not views:
        raise ValueError("explain_figure needs at least one view")
    bad = [v for v in views if v not in VIEWS]
    if bad:
        raise ValueError(f"unknown views {bad}; valid: {', '.join(VIEWS)}")
    size = (int(image.shape[0]), int(image.shape[1]))
    r: RenderedMap = render_map(raw, kind, method=method, reduce=reduce, clip_percentile=clip_percentile,
                                colormap=colormap, size=size, positive=positive)
    panels = []
    for v in views:
        if v == "overlay":
            panels.append(blend(image, r, alpha=alpha, weighting=weighting))
        elif v == "heatmap":
            panels.append(r.rgb)
        elif v == "outline":
            panels.append(outline(image, r, top_fraction=outline_fraction))
        else:
            panels.append(image)
    names = {"overlay": "overlay", "heatmap": "gradient" if r.kind == "gradient_rgb" else "heatmap", "photo": "photo",
             "outline": f"top {outline_fraction:.0%} of the map"}
    text = title if title is not None else figure_title(method_title or method, label, probability, layer)
    return compose_figure(panels, scale=r.scale, colormap=r.colormap, title=text, subtitle=r.scale.describe(),
                          panel_titles=[names[v] for v in views] if len(views) > 1 else None,
                          font_px=font_px).image


def add_title(img: torch.Tensor, title: str, *, subtitle: str = "", font_px: int | None = None,
              background: Color = WHITE, align: str = "center") -> torch.Tensor:
    """``img`` (uint8 ``[H, W, 3]``) with a text band above it: a title and an optional grey subtitle."""
    h, w = int(img.shape[0]), int(img.shape[1])
    fp = font_px or font_px_for(w, h, fraction=0.035)
    lines, sizes, colors = [title], [fp], [TEXT_COLOR]
    if subtitle:
        lines, sizes, colors = [*lines, subtitle], [*sizes, max(MIN_FONT_PX, round(0.8 * fp))], [*colors, MUTED_COLOR]
    band = text_band(lines, w, fp, sizes=sizes, colors=colors, background=background, align=align)
    return torch.cat([band.to(img.device), img], 0)


def legend_band(entries: Sequence[tuple[str, Color]], width: int, font_px: int | None = None, *,
                background: Color = WHITE, title: str = "") -> torch.Tensor:
    """A uint8 ``[h, width, 3]`` legend: a colour swatch and its name per entry, flowing in rows."""
    fp = font_px or MIN_FONT_PX + 2
    lh = line_height(fp)
    sw = max(10, round(0.8 * fp))
    gap = max(8, fp)
    margin = max(4, fp // 2)
    items = []
    for name, color in entries:
        text = wrap(str(name), fp, max(1, width - 2 * margin - sw - 6))[0]
        items.append((text, color, sw + 6 + text_width(text, fp)))
    rows: list[list[tuple[str, Color, int]]] = [[]]
    x = margin + (text_width(title, fp) + gap if title else 0)
    for it in items:
        if rows[-1] and x + it[2] > width - margin:
            rows.append([])
            x = margin
        rows[-1].append(it)
        x += it[2] + gap
    height = 2 * margin + lh * len(rows)
    out = torch.tensor(background, dtype=torch.uint8).expand(height, width, 3).clone()
    img = to_pil(out)
    draw = ImageDraw.Draw(img)
    y = margin
    x = margin
    if title:
        draw_text(draw, (x, y + lh / 2), title, fp, anchor="lm")
        x += text_width(title, fp) + gap
    for row in rows:
        for text, color, w in row:
            cy = y + lh / 2
            draw.rectangle((x, cy - sw / 2, x + sw - 1, cy + sw / 2 - 1), fill=color, outline=TEXT_COLOR)
            draw_text(draw, (x + sw + 6, cy), text, fp, anchor="lm")
            x += w + gap
        y += lh
        x = margin
    return from_pil(img)


def _stack(images: Sequence[torch.Tensor], axis: int, gap: int, background: int, align: str) -> torch.Tensor:
    if not images:
        raise ValueError("nothing to stack")
    other = 1 - axis
    n = max(int(t.shape[other]) for t in images)
    parts: list[torch.Tensor] = []
    for i, t in enumerate(images):
        if t.dtype != torch.uint8 or t.dim() != 3 or t.shape[2] != 3:
            raise ValueError(f"pictures must be uint8 [H, W, 3], got {t.dtype} {tuple(t.shape)}")
        missing = n - int(t.shape[other])
        before = missing // 2 if align == "center" else 0
        shape_b = list(t.shape)
        shape_b[other] = before
        shape_a = list(t.shape)
        shape_a[other] = missing - before
        t = torch.cat([torch.full(shape_b, background, dtype=torch.uint8), t.cpu(),
                       torch.full(shape_a, background, dtype=torch.uint8)], other)
        if i and gap:
            shape_g = list(t.shape)
            shape_g[axis] = gap
            parts.append(torch.full(shape_g, background, dtype=torch.uint8))
        parts.append(t)
    return torch.cat(parts, axis)


def hstack(images: Sequence[torch.Tensor], *, gap: int = 6, background: int = 255,
           align: Literal["top", "center"] = "top") -> torch.Tensor:
    """uint8 pictures side by side (each keeps its own width, unlike a grid's uniform cells)."""
    return _stack(images, 1, gap, background, align)


def vstack(images: Sequence[torch.Tensor], *, gap: int = 6, background: int = 255,
           align: Literal["top", "center"] = "top") -> torch.Tensor:
    """uint8 pictures one above the other (``top`` aligns them left)."""
    return _stack(images, 0, gap, background, align)


def labelled_grid(tiles: Sequence[torch.Tensor], labels: Sequence[str], *, ncols: int | None = None,
                  pad: int = 4, font_px: int | None = None, title: str = "", pad_value: int = 255,
                  label_color: Color = TEXT_COLOR) -> torch.Tensor:
    """Tiles (uint8 ``[h, w, 3]``, any sizes) in rows of ``ncols``, each with its caption underneath.

    Cells are as wide as the widest tile, or as the widest word of any caption when that is wider
    (a number is never cut in half); captions wrap to the cell and may hold ``\\n``. All cells
    get the height of the longest caption, so rows line up. ``font_px`` defaults to 8 % of the
    cell width, within 12..24 px. ``ncols`` defaults to ceil(sqrt(n)).
    """
    rows, cols = grid_shape(tiles, ncols, pad, caller="labelled_grid")
    if len(labels) != len(tiles):
        raise ValueError(f"{len(labels)} labels for {len(tiles)} tiles")
    th = max(int(t.shape[0]) for t in tiles)
    tw = max(int(t.shape[1]) for t in tiles)
    fp = font_px or int(min(max(round(0.08 * tw), MIN_FONT_PX), 24))
    words = [w for lb in labels for line in str(lb).split("\n") for w in line.split(" ")]
    cw = max(tw, max((text_width(w, fp) for w in words), default=0) + 2)
    wrapped = [[ln for ln in wrap(str(lb), fp, cw) if ln] if str(lb) else [] for lb in labels]
    n_lines = max((len(w) for w in wrapped), default=0)
    lh = line_height(fp)
    cap_h = n_lines * lh + (2 if n_lines else 0)
    cell_h = th + cap_h
    W = cols * cw + (cols + 1) * pad
    H = rows * cell_h + (rows + 1) * pad
    bg = (int(pad_value),) * 3
    canvas = torch.tensor(bg, dtype=torch.uint8).expand(H, W, 3).clone()
    origins = []
    for i, t in enumerate(tiles):
        r, c = divmod(i, cols)
        x = pad + c * (cw + pad)
        y = pad + r * (cell_h + pad)
        h, w = int(t.shape[0]), int(t.shape[1])
        paste(canvas, t.cpu(), y + (th - h) // 2, x + (cw - w) // 2)
        origins.append((x, y + th + 2))
    img = to_pil(canvas)
    draw = ImageDraw.Draw(img)
    for (x, y), lines in zip(origins, wrapped, strict=True):
        for j, line in enumerate(lines):
            draw_text(draw, (x + cw / 2, y + j * lh), line, fp, fill=label_color, anchor="ma")
    out = from_pil(img)
    if title:
        out = add_title(out, title, font_px=max(fp + 2, font_px_for(W, H, fraction=0.02)), background=bg)
    return out
