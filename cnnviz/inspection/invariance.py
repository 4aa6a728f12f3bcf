"""Feature invariance: how a layer's features move as an image is shifted, scaled and rotated.

Zeiler & Fergus (2014, section 4.2, fig. 5) transform one image and plot, against the amount of
transformation, the distance between the transformed and the original image's feature vectors
at a layer, and the probability of the true class. Early layers change a lot under small shifts,
deep layers little; scaling and rotation (other than by symmetric angles) are not learned away.

Every variant is made on the image already fitted to the network input (so shifts are in
network-input pixels), the empty area a transform uncovers is filled with the image's mean
colour (a black border would itself be a feature), and all variants run through the network in
batches of one forward that also captures the layer. A zero shift, unit scale or zero rotation
reuses the original's features, so its distance is exactly zero.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode

from ..hooks import LayerCapture, capture
from ..models import LoadedModel, validate_layer
from .features import CancelFn, Pool, ProgressFn, check_cancel, default_batch_size, pool_features

log = logging.getLogger(__name__)

KINDS: tuple[str, ...] = ("shift", "scale", "rotation")
UNITS = {"shift": "px", "scale": "x", "rotation": "deg"}
DEFAULT_SHIFTS: tuple[int, ...] = (-48, -32, -16, -8, 0, 8, 16, 32, 48)
DEFAULT_SCALES: tuple[float, ...] = (0.6, 0.8, 0.9, 1.0, 1.1, 1.25, 1.5, 1.8)
DEFAULT_ROTATIONS: tuple[float, ...] = tuple(float(a) for a in range(0, 361, 30))

__all__ = ["DEFAULT_ROTATIONS", "DEFAULT_SCALES", "DEFAULT_SHIFTS", "KINDS", "invariance_curves", "plot_curves",
           "rotate", "scale", "shift"]


def _fill(img: torch.Tensor) -> list[float]:
    return img.mean((1, 2)).tolist()


def shift(img: torch.Tensor, pixels: int, axis: Literal["x", "y"] = "y") -> torch.Tensor:
    """``[3,H,W]`` moved by whole ``pixels`` (down or right when positive), uncovered area in the mean colour."""
    out = torch.empty_like(img)
    out[:] = torch.tensor(_fill(img), dtype=img.dtype)[:, None, None]
    p = int(pixels)
    dim = 1 if axis == "y" else 2
    n = img.shape[dim]
    if abs(p) >= n:
        return out
    src = img.narrow(dim, max(0, -p), n - abs(p))
    out.narrow(dim, max(0, p), n - abs(p)).copy_(src)
    return out


def scale(img: torch.Tensor, factor: float) -> torch.Tensor:
    """``[3,H,W]`` resized by ``factor`` about its centre and cropped (or padded with the mean) back to ``H x W``."""
    h, w = img.shape[-2:]
    nh, nw = max(1, round(h * factor)), max(1, round(w * factor))
    big = F.interpolate(img[None], size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)[0]
    out = torch.empty_like(img)
    out[:] = torch.tensor(_fill(img), dtype=img.dtype)[:, None, None]
    # Overlap of the centred resized image with the canvas, in both frames.
    sy, dy = max(0, (nh - h) // 2), max(0, (h - nh) // 2)
    sx, dx = max(0, (nw - w) // 2), max(0, (w - nw) // 2)
    ch, cw = min(h, nh), min(w, nw)
    out[:, dy:dy + ch, dx:dx + cw] = big[:, sy:sy + ch, sx:sx + cw]
    return out.clamp_(0, 1)


def rotate(img: torch.Tensor, degrees: float) -> torch.Tensor:
    """``[3,H,W]`` rotated counter-clockwise about its centre (bilinear), corners in the mean colour."""
    return TF.rotate(img, float(degrees), interpolation=InterpolationMode.BILINEAR, fill=_fill(img)).clamp_(0, 1)


def _identity(kind: str, v: float) -> bool:
    return (kind == "scale" and v == 1.0) or (kind != "scale" and v == 0)


def invariance_curves(model: LoadedModel, image: torch.Tensor, layer: str | None = None, *,
                      shifts: Sequence[int] = DEFAULT_SHIFTS, scales: Sequence[float] = DEFAULT_SCALES,
                      rotations: Sequence[float] = DEFAULT_ROTATIONS, size: int | None = None,
                      shift_axis: Literal["x", "y"] = "y", pool: Pool | str = "avg", batch_size: int | None = None,
                      progress: ProgressFn | None = None, cancel: CancelFn | None = None) -> dict[str, Any]:
    """Distance curves of ``layer``'s features under shifts, scales and rotations of ``image`` ``[3,H,W]``.

    Returns a JSON-ready dict: the layer, the original's top class (index, label, probability),
    and per kind (``shift``, ``scale``, ``rotation``) its ``unit``, parameter ``values``, the
    ``distance`` (L2 between the L2-normalized pooled features of each variant and the original,
    in [0, 2]), the ``probability`` of the original top class and its change from the original.
    """
    layer = validate_layer(model, layer, spatial=False)
    base = model.preprocessing.fit(image.float().cpu(), size)
    params = {"shift": [int(v) for v in shifts], "scale": [float(v) for v in scales],
              "rotation": [float(v) for v in rotations]}
    makers = {"shift": lambda v: shift(base, v, shift_axis), "scale": lambda v: scale(base, v),
              "rotation": lambda v: rotate(base, v)}
    # Slot 0 is the original; identity parameters point at it.
    variants: list[tuple[str, float]] = [(kind, v) for kind in KINDS for v in params[kind] if not _identity(kind, v)]
    slots = [("original", 0.0), *variants]
    feats, logits = [], []
    batch_size = batch_size or default_batch_size(model)
    chunks = list(range(0, len(slots), batch_size))
    for b, i0 in enumerate(chunks):
        check_cancel(cancel, "measuring invariance")
        imgs = [base if kind == "original" else makers[kind](v) for kind, v in slots[i0:i0 + batch_size]]
        x = model.preprocessing.normalize(torch.stack(imgs)).to(model.device)
        cap = LayerCapture()
        with capture(model.module, {layer: cap}), torch.inference_mode():
            out = model.module(x.contiguous(memory_format=torch.channels_last))
        feats.append(F.normalize(pool_features(cap.output.float(), pool), dim=1).cpu())  # type: ignore[union-attr]
        logits.append(out.float().cpu())
        if progress is not None:
            progress(b + 1, len(chunks), "invariance")
    f, lg = torch.cat(feats), torch.cat(logits)
    probs = lg.softmax(1)
    top = int(probs[0].argmax())
    p0 = float(probs[0, top])
    dist = (f - f[0]).norm(dim=1)
    where = {s: i for i, s in enumerate(slots)}
    result: dict[str, Any] = {
        "layer": layer, "pool": pool, "class_index": top,
        "class_label": model.labels[top] if top < len(model.labels) else str(top), "probability": p0,
    }
    for kind in KINDS:
        idx = [0 if _identity(kind, v) else where[(kind, v)] for v in params[kind]]
        result[kind] = {
            "unit": UNITS[kind] if kind != "shift" else f"px ({shift_axis})",
            "values": params[kind],
            "distance": [0.0 if i == 0 else float(dist[i]) for i in idx],
            "probability": [float(probs[i, top]) for i in idx],
            "probability_change": [float(probs[i, top]) - p0 for i in idx],
        }
    log.debug("invariance of %s: %d variants", layer, len(variants))
    return result


_COLORS = {"distance": (31, 119, 180), "probability": (255, 127, 14)}
_NAMES = {"shift": "shift", "scale": "scale", "rotation": "rotation"}
_AXIS = {"x": "scale factor", "deg": "degrees, counter-clockwise"}


def _ticks(values: list[float], n_max: int) -> list[float]:
    """At most ``n_max`` of the parameter values, evenly picked and always with both ends."""
    vals = sorted(set(values))
    if len(vals) <= n_max:
        return vals
    step = (len(vals) - 1) / (n_max - 1)
    return [vals[round(i * step)] for i in range(n_max)]


def _panel(draw: Any, box: tuple[int, int, int, int], title: str, xs: list[float],
           series: dict[str, list[float]], y_max: float, font_px: int = 14, x_label: str = "") -> None:
    """One transform's curves in ``box``: framed axes, tick labels on both axes, a title and an x label."""
    from ..render.text import draw_text, line_height, text_width

    fp = font_px
    lh = line_height(fp)
    x0, y0, x1, y1 = box
    y_labels = [f"{frac * y_max:.2g}" for frac in (0.0, 0.25, 0.5, 0.75, 1.0)]
    left = x0 + max(text_width(t, fp) for t in y_labels) + fp
    right, top, bottom = x1 - fp, y0 + lh + fp // 2, y1 - 2 * lh - 4
    draw_text(draw, ((left + right) / 2, y0 + 2), title, fp, anchor="ma")
    lo, hi = (min(xs), max(xs)) if xs else (0.0, 1.0)
    span = hi - lo or 1.0

    def px(v: float) -> float:
        return left + (v - lo) / span * (right - left)

    def py(v: float) -> float:
        return bottom - min(max(v / y_max, 0.0), 1.0) * (bottom - top)

    for frac, label in zip((0.0, 0.25, 0.5, 0.75, 1.0), y_labels, strict=True):
        yy = py(frac * y_max)
        draw.line((left + 1, yy, right - 1, yy), fill=(232, 232, 232))
        draw.line((left - 4, yy, left, yy), fill=(0, 0, 0))
        draw_text(draw, (left - 6, yy), label, fp, anchor="rm")
    draw.rectangle((left, top, right, bottom), outline=(0, 0, 0))  # after the grid lines, which share its edges
    room = max(2, int((right - left) // max(1, text_width("-360", fp) + fp)))
    for v in _ticks(xs, min(room, 9)) if xs else []:
        xx = px(v)
        draw.line((xx, bottom, xx, bottom + 4), fill=(0, 0, 0))
        draw_text(draw, (xx, bottom + 6), f"{v:.3g}", fp, anchor="ma")
    if x_label:
        draw_text(draw, ((left + right) / 2, bottom + 6 + lh), x_label, fp, anchor="ma", fill=(90, 90, 90))
    for name, ys in series.items():
        pts = [(px(x), py(y)) for x, y in sorted(zip(xs, ys, strict=True))]
        if len(pts) > 1:
            draw.line(pts, fill=_COLORS[name], width=max(2, fp // 6))
        r = max(2, fp // 5)
        for p in pts:
            draw.ellipse((p[0] - r, p[1] - r, p[0] + r, p[1] + r), fill=_COLORS[name])


def plot_curves(curves: dict[str, Any], width: int = 960, height: int = 320, *,
                font_px: int | None = None) -> torch.Tensor:
    """The curves of :func:`invariance_curves` as a uint8 ``[height,width,3]`` picture (PIL, no matplotlib).

    One panel per transform: feature distance (blue) and the original class's probability
    (orange) against the transform's parameter, on a shared 0..max(1, largest distance) axis,
    with tick labels on both axes, the parameter's unit under each panel and a legend with line
    swatches. ``font_px`` defaults to ~4.5 % of the height (at least 12 px), so the labels stay
    readable when the picture is shown at its own size.
    """
    from PIL import Image, ImageDraw

    from ..render.text import draw_text, font_px_for, line_height, text_width

    fp = font_px or font_px_for(height, height, fraction=0.045, maximum=32)
    kinds = [k for k in KINDS if k in curves and curves[k]["values"]]
    img = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    legend_h = line_height(fp) + fp // 2
    ly = height - legend_h / 2
    x = fp // 2
    label = curves.get("class_label", "?")
    draw_text(draw, (x, ly), f"layer {curves.get('layer', '?')}:", fp, anchor="lm")
    x += text_width(f"layer {curves.get('layer', '?')}:", fp) + fp
    for name, text in (("distance", "feature distance to the original"), ("probability", f"p({label})")):
        draw.line((x, ly, x + 2 * fp, ly), fill=_COLORS[name], width=max(2, fp // 6))
        x += 2 * fp + fp // 2
        draw_text(draw, (x, ly), text, fp, anchor="lm")
        x += text_width(text, fp) + fp
    if kinds:
        y_max = max([1.0] + [max(curves[k]["distance"]) for k in kinds])
        w = width // len(kinds)
        for i, k in enumerate(kinds):
            c = curves[k]
            _panel(draw, (i * w, 0, (i + 1) * w, height - legend_h), _NAMES.get(k, k), c["values"],
                   {"distance": c["distance"], "probability": c["probability"]}, y_max, fp,
                   _AXIS.get(str(c["unit"]), str(c["unit"]).replace("px", "pixels")))
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy())
