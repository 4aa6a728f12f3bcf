"""The pictures of an explanation: one map as heatmap, overlay and figure; several overlays as a grid.

:func:`core.explaining.run_explanation` renders each map with :func:`render_pictures`;
:mod:`core.png_answer` lays the overlays of an ``Accept: image/png`` answer out with :func:`grid_png`.
Nothing here computes a map: raw maps come in, uint8 ``[H, W, 3]`` pictures (or PNG bytes) go out.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cnnviz.render import (
    MapKind,
    MapScale,
    NormalizeMode,
    apply_colormap,
    blend,
    compose_figure,
    draw_boxes,
    encode_png,
    labelled_grid,
    normalize_map,
    outline,
    overlay,
    render_map,
    resize_map,
    scale_map,
)
from cnnviz.render.boxes import draw_labelled_box
from cnnviz.render.kinds import PositiveMode, format_value
from cnnviz.render.regions import draw_region
from cnnviz.render.text import NBSP
from core.errors import Invalid
from core.schemas.explain import ExplainParams, ExplainResponse, Region, Rendering, TargetExplanation

MAX_OUTPUT_SIDE = 2048  # heatmaps/overlays of larger originals are scaled down to this long side
GRID_TILE_SIDE = 512  # a multi-map PNG draws each overlay at most this long side
SWEEP_TILE_SIDE = 256  # a layer sweep's row draws each overlay at most this long side


def output_hw(out_size: tuple[int, int] | None, h: int, w: int, max_side: int = MAX_OUTPUT_SIDE) -> tuple[int, int]:
    """(height, width) of rendered pictures: the client's size, else the original's, capped."""
    if out_size is not None:
        if max(out_size) > max_side:
            raise Invalid("output-too-large", f"output.size may not exceed {max_side} px per side",
                          limit=max_side)
        return out_size[1], out_size[0]
    scale = min(1.0, max_side / max(h, w))
    return max(1, round(h * scale)), max(1, round(w * scale))


@dataclass
class Pictures:
    """One map's pictures (None where not asked for) and how its values became colours."""

    heatmap: torch.Tensor | None
    overlay: torch.Tensor | None
    figure: torch.Tensor | None
    rendering: Rendering


_LEGACY_SCALING: dict[str, tuple[MapKind, PositiveMode]] = {
    "minmax": ("positive", "minmax"), "max": ("positive", "max"), "signed": ("signed", "minmax")}
"""``output.normalize`` modes as the engine's scalings: the full range (no clip percentile), the
same display values as :func:`cnnviz.render.normalize_map` and, with them, the scale they used."""


def legacy_scaling(raw: torch.Tensor, mode: NormalizeMode) -> tuple[torch.Tensor, MapScale]:
    """``output.normalize`` given: display values in [0, 1] and their scale, one scaling for every method.

    The values and the scale the colour bar states come from one call, so they cannot disagree;
    ``none`` keeps values as they are (clamped), so its scale is [0, 1] by definition.
    """
    if mode == "none":
        return normalize_map(raw, "none"), MapScale("positive", 0.0, 1.0)
    kind, positive = _LEGACY_SCALING[mode]
    return scale_map(raw, kind, clip_percentile=None, positive=positive)


def render_pictures(raw: torch.Tensor, gradient: torch.Tensor | None, image_u8: torch.Tensor, params: ExplainParams,
                    kind: MapKind, regions: list[Region] | None, title: str,
                    orig_hw: tuple[int, int] | None = None,
                    target_region: tuple[torch.Tensor, str | None] | None = None,
                    box: tuple[tuple[float, float, float, float], str] | None = None) -> Pictures:
    """The heatmap, overlay and figure ``params.output`` asks for, at the output size, regions boxed.

    ``target_region``: a region target's mask at the pictures' size and its class's label, outlined and
    tagged on the overlay (and so on the figure), so the picture says what was explained.
    ``box``: an explained detection (box in original pixels, caption), outlined and labelled on the overlay.
    """
    out = params.output
    h, w = image_u8.shape[:2]
    orig_hw = orig_hw or (h, w)
    size = output_hw(out.size, h, w)
    base = image_u8 if (h, w) == size else resize_image(image_u8, size)
    want_overlay = out.overlay or out.figure
    if out.normalize is not None:
        cmap = out.colormap or "jet"
        values, scale = legacy_scaling(raw, out.normalize)
        heat = apply_colormap(resize_map(values, size), cmap)  # type: ignore[arg-type]
        ov = None
        if want_overlay:
            if out.mode == "outline":
                ov = outline(base, values, top_fraction=out.outline_fraction)
            else:
                ov = overlay(base, heat, 0.5 if out.alpha is None else out.alpha)
        rendering = Rendering(kind=None, normalize=out.normalize, colormap=cmap, mode=out.mode, lo=scale.lo,
                              hi=scale.hi, center=scale.center)
        subtitle = f"normalize {out.normalize}: {format_value(scale.lo)} .. {format_value(scale.hi)}"
    else:
        src = gradient if kind == "gradient_rgb" else raw
        if src is None:  # pragma: no cover - map_kind only offers gradient_rgb where the engine keeps it
            raise Invalid("unsupported-kind", "this method's answer has no RGB gradient to render")
        r = render_map(src, kind, clip_percentile=out.clip_percentile, colormap=out.colormap, size=size)
        heat, scale, cmap = r.rgb, r.scale, r.colormap
        ov = None
        if want_overlay:
            ov = (outline(base, r, top_fraction=out.outline_fraction) if out.mode == "outline"
                  else blend(base, r, alpha=out.alpha))
        rendering = Rendering(kind=kind, colormap=cmap, mode=out.mode, lo=scale.lo, hi=scale.hi,
                              center=scale.center, clip_percentile=scale.percentile, saturated=scale.saturated)
        subtitle = scale.describe()
    if ov is not None and regions:
        sx, sy = size[1] / orig_hw[1], size[0] / orig_hw[0]  # regions are in original pixels
        boxes = [(round(r.box[0] * sx), round(r.box[1] * sy), round(r.box[2] * sx), round(r.box[3] * sy))
                 for r in regions]
        ov = draw_boxes(ov, boxes)
    if ov is not None and target_region is not None:
        ov = draw_region(ov, target_region[0], target_region[1])
    if ov is not None and box is not None:
        (x0, y0, x1, y1), caption = box
        sx, sy = size[1] / orig_hw[1], size[0] / orig_hw[0]
        ov = draw_labelled_box(ov, (x0 * sx, y0 * sy, x1 * sx, y1 * sy), caption)
    fig = None
    if out.figure and ov is not None:
        if out.mode == "outline":
            subtitle = f"outline of the top {out.outline_fraction:.0%} of the map; {subtitle}"
        if kind == "gradient_rgb" and out.normalize is None and out.mode == "blend":
            # The gradient is itself the picture (Springenberg et al.): shown beside the photo, not blended.
            fig = compose_figure([base, heat], scale=scale, colormap=cmap, title=title, subtitle=subtitle,
                                 panel_titles=["photo", "input gradient"]).image
        else:
            fig = compose_figure([ov], scale=scale, colormap=cmap, title=title, subtitle=subtitle).image
    return Pictures(heat if out.heatmap else None, ov if out.overlay else None, fig, rendering)


def resize_image(img: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A uint8 ``[H, W, 3]`` picture resized to ``size`` = (H, W), antialiased."""
    x = img.permute(2, 0, 1)[None].float()
    x = torch.nn.functional.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    return x[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8)


def sweep_row(overlays: list[torch.Tensor], captions: list[str], title: str) -> torch.Tensor:
    """A layer sweep's figure: one row of overlays, each captioned with its layer and resolution."""
    tiles = []
    for ov in overlays:
        h, w = int(ov.shape[0]), int(ov.shape[1])
        s = min(1.0, SWEEP_TILE_SIDE / max(h, w))
        tiles.append(ov if s == 1.0 else resize_image(ov, (max(1, round(h * s)), max(1, round(w * s)))))
    return labelled_grid(tiles, captions, ncols=len(tiles), title=title)


def stack_rows(rows: list[torch.Tensor], pad: int = 8) -> torch.Tensor:
    """Pictures ``[h, w, 3]`` one under the other on white, left-aligned (several sweeps' rows in one PNG)."""
    width = max(int(r.shape[1]) for r in rows)
    parts = []
    for k, r in enumerate(rows):
        canvas = torch.full((int(r.shape[0]) + (pad if k < len(rows) - 1 else 0), width, 3), 255, dtype=torch.uint8)
        canvas[: r.shape[0], : r.shape[1]] = r
        parts.append(canvas)
    return torch.cat(parts)


def grid_png(kept: list[tuple[int, TargetExplanation, torch.Tensor]], resp: ExplainResponse, title: str) -> bytes:
    """The captioned grid of several overlays, one row per image, each tile at most 512 px long."""
    pics, captions = [], []
    for i, e, ov in kept:
        h, w = int(ov.shape[0]), int(ov.shape[1])
        s = min(1.0, GRID_TILE_SIDE / max(h, w))
        pics.append(ov if s == 1.0 else resize_image(ov, (max(1, round(h * s)), max(1, round(w * s)))))
        p = f" · p{NBSP}={NBSP}{e.target.probability:.2f}" if e.target.probability is not None else ""
        captions.append(f"image {i} · {e.target.label or e.target.index} ({e.target.index}){p}")
    per_image = [len(img.explanations) for img in resp.images]
    ncols = per_image[0] if len(set(per_image)) == 1 else None
    layer = f" · layer {resp.layer}" if resp.layer else ""
    grid = labelled_grid(pics, captions, ncols=ncols, title=f"{title} · {resp.model}{layer}")
    return encode_png(grid)
