"""Rendering chosen per kind of map, so that each method's map is shown the way the field shows it.

A raw map is never modified here; these functions only decide how its values become colours.
Four kinds:

``positive``
    Maps that are >= 0 and smooth, where larger means more evidence: the CAM family, Score-CAM,
    RISE. Min-max (or max) scaled onto a sequential colormap, as they always were.
``unsigned``
    Pixel maps whose sign carries little meaning (saliency, SmoothGrad, guided backprop, deconvnet,
    guided Grad-CAM, input x gradient shown unsigned). Their values are heavy-tailed: a few pixels
    are 10-100x the typical one, so min-max scaling shows a dark wash with a few specks. Shown as
    ``|value|`` divided by a high percentile of ``|value|`` (99th by default) and clipped, on a
    sequential colormap (Simonyan et al. 2014, Smilkov et al. 2017 scale their figures this way).
``signed``
    Maps where the sign is the message (integrated gradients, input x gradient, occlusion's score
    drop): a diverging colormap centred at zero, scaled symmetrically by the percentile of
    ``|value|``, so zero is exactly the centre colour and +v / -v are equally saturated.
``gradient_rgb``
    The ``[3, H, W]`` input gradient itself as a picture (Springenberg et al. 2015, Zeiler & Fergus
    2014): standardized per image, clipped at the percentile of ``|z|``, mapped around 0.5 grey.
    Offered for guided backprop and deconvnet, whose gradients look like edges of the object.

Which kinds a method's map takes is declared on the method's class (``map_kinds``, default first,
:attr:`cnnviz.attribution.Method.map_kinds`); :data:`DEFAULT_KIND` and :data:`OFFERED_KINDS` are
read-only views of those declarations, not tables of their own.

:func:`render_map` does all of it and returns a :class:`RenderedMap` (display values, colours,
and the :class:`MapScale` a colour bar needs). :func:`blend` and :func:`outline` lay a rendered
map over the photo.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Literal, TypeVar

import torch
import torch.nn.functional as F

from ..attribution import METHODS, Method
from ..attribution.base import MAP_KINDS, MapKind
from ..blur import gaussian_blur
from .colormap import COLORMAPS, DIVERGING, apply_colormap
from .overlay import resize_map

log = logging.getLogger(__name__)

PositiveMode = Literal["minmax", "max"]
Weighting = Literal["constant", "evidence"]
Region = Literal["top", "otsu"]

V = TypeVar("V")


class _Declared(Mapping[str, V]):
    """A read-only view of what each registered method's class declares (no table of its own).

    Live: a method registered after import (a plug-in, a test's) is in it at once.
    """

    def __init__(self, read: Callable[[Method], V]) -> None:
        self._read = read

    def __getitem__(self, name: str) -> V:
        return self._read(METHODS[name])

    def __iter__(self) -> Iterator[str]:
        return iter(METHODS)

    def __len__(self) -> int:
        return len(METHODS)


DEFAULT_KIND: Mapping[str, MapKind] = _Declared(lambda m: m.map_kinds[0])
"""The kind each registered method's map is rendered as when the client does not say: the first of
its class's ``map_kinds`` (:attr:`cnnviz.attribution.Method.map_kinds`)."""

OFFERED_KINDS: Mapping[str, tuple[MapKind, ...]] = _Declared(lambda m: m.map_kinds)
"""Kinds that make sense per method (default first), as its class declares them. ``gradient_rgb``
needs the ``[3, H, W]`` gradient."""

DEFAULT_COLORMAP: dict[MapKind, str | None] = {
    "positive": "jet",  # what the service has always drawn CAMs with
    "unsigned": "hot",  # black = nothing; climbs fast, so the bulk of a clipped speckled map shows, not only its peaks
    "signed": "seismic",  # white = 0 exactly; leaves white fast, so small values still show
    "gradient_rgb": None,  # the gradient's own three channels are the colours
}
"""The colormap of each kind when the client does not name one."""

DEFAULT_WEIGHTING: dict[MapKind, Weighting] = {
    "positive": "constant",
    "unsigned": "evidence",
    "signed": "evidence",
    "gradient_rgb": "constant",
}
"""How :func:`blend` lays each kind over the photo. A CAM covers the object, so a uniform blend
reads well; a pixel map is mostly near zero, and a uniform blend would only dim the photo, so its
colour is laid on in proportion to the map's magnitude and the photo shows through elsewhere."""

DEFAULT_CLIP_PERCENTILE = 99.0


def default_kind(method: str, reduce: str | None = None) -> MapKind:
    """The kind for ``method``'s map; ``reduce`` (the gradient family's channel reduction) can override.

    A signed channel ``sum`` makes any gradient map signed; ``abs-max``, ``abs-sum`` and ``l2``
    make it unsigned. Unknown methods raise ValueError (listing the known ones), because a silent
    fallback would bring back exactly the unreadable pictures this table exists to avoid.
    """
    try:
        kind = DEFAULT_KIND[method]
    except KeyError:
        known = ", ".join(sorted(DEFAULT_KIND))
        raise ValueError(f"no default map kind for method {method!r}; known: {known}") from None
    if reduce is not None and kind in ("unsigned", "signed"):
        return "signed" if reduce == "sum" else "unsigned"
    return kind


def default_colormap(kind: MapKind) -> str | None:
    """The colormap :func:`render_map` uses for ``kind`` when none is given."""
    _check_kind(kind)
    return DEFAULT_COLORMAP[kind]


def _check_kind(kind: str) -> None:
    if kind not in MAP_KINDS:
        raise ValueError(f"unknown map kind {kind!r}; valid kinds: {', '.join(MAP_KINDS)}")


def percentile(values: torch.Tensor, q: float) -> float:
    """The ``q``-th percentile (0..100, linear interpolation) of the finite values of a tensor.

    Very large maps are subsampled on a regular stride (torch.quantile has an input limit); a
    percentile of millions of pixels does not move with that.
    """
    flat = values.detach().flatten().float()
    flat = flat[torch.isfinite(flat)]
    if flat.numel() == 0:
        return 0.0
    if flat.numel() > 4_000_000:
        flat = flat[:: math.ceil(flat.numel() / 4_000_000)]
    return float(torch.quantile(flat, min(max(q, 0.0), 100.0) / 100.0))


@dataclass(frozen=True)
class MapScale:
    """How raw values became display values: display 0 is raw ``lo``, display 1 is raw ``hi``.

    For ``signed`` (and ``gradient_rgb``) ``lo == -hi`` and 0.5 is zero. ``percentile`` is the clip
    percentile used (None when the full range is shown) and ``saturated`` the fraction of values
    at or beyond the ends, which the colour bar marks with >= / <=. For ``gradient_rgb`` the values
    are in standard deviations of the image's gradient.
    """

    kind: MapKind
    lo: float
    hi: float
    percentile: float | None = None
    saturated: float = 0.0

    @property
    def center(self) -> float | None:
        """The raw value of the colormap's middle: 0 for signed maps, None for the others."""
        return 0.0 if self.kind in ("signed", "gradient_rgb") else None

    def position(self, value: float) -> float:
        """Display position in [0, 1] of a raw value."""
        span = self.hi - self.lo
        return 0.0 if span <= 0 else min(max((value - self.lo) / span, 0.0), 1.0)

    def ticks(self) -> list[tuple[float, str]]:
        """(display position, label) for a colour bar: +v, 0, -v or hi, mid, lo; clipped ends marked.

        Labels are ASCII (plus Latin-1): the bundled font has no glyphs for ≥, − or σ.
        """
        unit = " sd" if self.kind == "gradient_rgb" else ""
        clipped = self.percentile is not None and self.saturated > 0
        hi = f"{'>= ' if clipped else ''}{format_value(self.hi)}{unit}"
        if self.kind in ("signed", "gradient_rgb"):
            lo = f"{'<= ' if clipped else ''}{format_value(self.lo)}{unit}"
            return [(1.0, hi), (0.5, "0"), (0.0, lo)]
        mid = format_value((self.lo + self.hi) / 2) + unit
        return [(1.0, hi), (0.5, mid), (0.0, format_value(self.lo) + unit)]

    def describe(self) -> str:
        """One line saying what the colours mean, for a figure's subtitle."""
        p = f"{self.percentile:g}th percentile" if self.percentile is not None else "maximum"
        if self.kind == "positive":
            return "positive map, scaled min to max" if self.lo != 0 else "positive map, scaled 0 to max"
        if self.kind == "unsigned":
            return f"|value|, clipped at the {p}"
        if self.kind == "signed":
            return f"signed, symmetric at the {p} of |value|; centre colour = 0"
        return f"RGB gradient, standardized, clipped at the {p}; grey = 0"


def format_value(v: float) -> str:
    """A tick label: 3 significant digits, scientific for very small or large magnitudes."""
    if v == 0 or not math.isfinite(v):
        return "0" if v == 0 else str(v)
    a = abs(v)
    if 1e-3 <= a < 1e4:
        s = f"{v:.3g}"
    else:
        s = f"{v:.2e}".replace("e-0", "e-").replace("e+0", "e").replace("e+", "e")
    return s


def _finite(raw: torch.Tensor) -> torch.Tensor:
    x = raw.detach().float()
    return torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0) if not torch.isfinite(x).all() else x


def _check_raw(raw: torch.Tensor, kind: MapKind) -> None:
    if kind == "gradient_rgb":
        if raw.dim() != 3 or raw.shape[0] != 3:
            raise ValueError(f"gradient_rgb needs the signed [3, H, W] gradient, got {tuple(raw.shape)}")
    elif raw.dim() != 2:
        raise ValueError(f"a {kind} map must be [H, W], got {tuple(raw.shape)}")
    if raw.numel() == 0:
        raise ValueError("the map is empty")


def scale_map(raw: torch.Tensor, kind: MapKind, *, clip_percentile: float | None = DEFAULT_CLIP_PERCENTILE,
              positive: PositiveMode = "minmax") -> tuple[torch.Tensor, MapScale]:
    """Display values in [0, 1] (``[H, W]``, or ``[3, H, W]`` for gradient_rgb) and the scale used.

    ``clip_percentile`` (0 < p <= 100, None = 100) applies to unsigned, signed and gradient_rgb
    maps; positive maps are scaled ``minmax`` or ``max`` (negatives dropped) over their full range
    so that they look as they always have. A map with nothing in it (constant, or all zeros) gets
    the colour of "nothing": 0, or 0.5 for the centred kinds. NaN and infinities count as 0.
    """
    _check_kind(kind)
    _check_raw(raw, kind)
    if clip_percentile is not None and not 0.0 < clip_percentile <= 100.0:
        raise ValueError(f"clip_percentile must be in (0, 100], got {clip_percentile}")
    p = 100.0 if clip_percentile is None else float(clip_percentile)
    x = _finite(raw)
    if kind == "positive":
        if positive == "max":
            x = x.clamp(min=0.0)
            lo, hi = 0.0, float(x.max())
        elif positive == "minmax":
            lo, hi = float(x.min()), float(x.max())
        else:
            raise ValueError(f"unknown positive scaling {positive!r}; valid: minmax, max")
        if hi <= lo:
            return torch.zeros_like(x), MapScale(kind, lo, lo)
        return ((x - lo) / (hi - lo)).clamp(0.0, 1.0), MapScale(kind, lo, hi)
    if kind == "gradient_rgb":
        std = float(x.std()) if x.numel() > 1 else 0.0
        x = (x - x.mean()) / std if std > 0 else torch.zeros_like(x)
    mag = x.abs()
    m = percentile(mag, p) if p < 100.0 else float(mag.max())
    if m <= 0:  # more than p % of the map is exactly zero: fall back to the full range
        m = float(mag.max())
    clip = p if p < 100.0 else None
    if m <= 0:
        fill = 0.0 if kind == "unsigned" else 0.5
        return torch.full_like(x, fill), MapScale(kind, 0.0, 0.0, clip)
    saturated = float((mag >= m).float().mean()) if clip is not None else 0.0
    if kind == "unsigned":
        return (mag / m).clamp(0.0, 1.0), MapScale(kind, 0.0, m, clip, saturated)
    # signed, gradient_rgb: symmetric, zero -> exactly 0.5
    return (x / (2.0 * m) + 0.5).clamp(0.0, 1.0), MapScale(kind, -m, m, clip, saturated)


@dataclass(frozen=True)
class RenderedMap:
    """A map made displayable. ``raw`` is not kept: the caller still has it, untouched.

    ``values``: display values in [0, 1], ``[H, W]`` (``[3, H, W]`` for gradient_rgb);
    ``rgb``: uint8 ``[H, W, 3]``; ``magnitude``: ``[H, W]`` in [0, 1], how strongly each pixel
    speaks either way (the opacity of an ``evidence`` blend); ``evidence``: ``[H, W]`` in [0, 1],
    positive evidence only (what an outline encloses: for signed maps, the part for the class).
    """

    kind: MapKind
    colormap: str | None
    values: torch.Tensor
    rgb: torch.Tensor
    magnitude: torch.Tensor
    evidence: torch.Tensor
    scale: MapScale


def render_map(raw: torch.Tensor, kind: MapKind | None = None, *, method: str | None = None,
               reduce: str | None = None, clip_percentile: float | None = DEFAULT_CLIP_PERCENTILE,
               colormap: str | None = None, size: tuple[int, int] | None = None,
               positive: PositiveMode = "minmax") -> RenderedMap:
    """Render a raw map by its kind (or by ``method``'s default kind, see :data:`DEFAULT_KIND`).

    ``raw`` is ``[h, w]`` at the method's native resolution (``[3, h, w]`` for ``gradient_rgb``);
    the scale is computed on it, so tick labels are the raw values a client receives. ``size``
    = (H, W) bilinearly resizes the display values (e.g. to the client's photo). ``colormap``
    defaults per kind (:data:`DEFAULT_COLORMAP`); a sequential map for a signed kind works but its
    middle is not neutral, which is the caller's choice to make.
    """
    if kind is None:
        if method is None:
            raise ValueError("render_map needs a kind or a method name")
        kind = default_kind(method, reduce)
    _check_kind(kind)
    values, scale = scale_map(raw, kind, clip_percentile=clip_percentile, positive=positive)
    if size is not None and tuple(values.shape[-2:]) != (int(size[0]), int(size[1])):
        if values.dim() == 3:
            values = torch.stack([resize_map(c, size) for c in values]).clamp(0.0, 1.0)
        else:
            values = resize_map(values, size).clamp(0.0, 1.0)
    if kind == "gradient_rgb":
        cmap = None
        rgb = (values * 255.0).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).contiguous()
        magnitude = (2.0 * values - 1.0).abs().amax(0)
        evidence = magnitude
    else:
        cmap = colormap or DEFAULT_COLORMAP[kind]
        assert cmap is not None
        if cmap not in COLORMAPS:
            raise ValueError(f"unknown colormap {cmap!r}; valid colormaps: {', '.join(COLORMAPS)}")
        rgb = apply_colormap(values, cmap)
        if kind == "signed":
            magnitude = (2.0 * values - 1.0).abs()
            evidence = (2.0 * values - 1.0).clamp(min=0.0)
        else:
            magnitude = evidence = values
    if kind == "signed" and cmap not in DIVERGING:
        log.debug("signed map on sequential colormap %s: zero is not a neutral colour", cmap)
    return RenderedMap(kind, cmap, values, rgb, magnitude, evidence, scale)


def _check_image(image: torch.Tensor) -> None:
    if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be uint8 [H, W, 3], got {image.dtype} {tuple(image.shape)}")


def _fit(t: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A float ``[H, W]`` or ``[H, W, 3]`` brought to ``size`` bilinearly (if it is not already)."""
    if tuple(t.shape[:2]) == size:
        return t.float()
    x = t.float().permute(2, 0, 1)[None] if t.dim() == 3 else t.float()[None, None]
    y = F.interpolate(x, size=size, mode="bilinear", align_corners=False)[0]
    return y.permute(1, 2, 0) if t.dim() == 3 else y[0]


def blend(image: torch.Tensor, rendered: RenderedMap, *, alpha: float | None = None,
          weighting: Weighting | None = None) -> torch.Tensor:
    """The rendered map laid over ``image`` (uint8 ``[H, W, 3]``); the map is resized to the image.

    ``constant``: ``(1 - alpha) * photo + alpha * colour`` everywhere (the classic CAM overlay,
    alpha 0.5). ``evidence``: the opacity is ``alpha * magnitude``, so where the map is near zero
    the photo shows unchanged and the strongest pixels are drawn at ``alpha`` (default 0.85).
    Defaults per kind: :data:`DEFAULT_WEIGHTING`.
    """
    _check_image(image)
    weighting = weighting or DEFAULT_WEIGHTING[rendered.kind]
    if alpha is None:
        alpha = 0.5 if weighting == "constant" else 0.85
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    size = (int(image.shape[0]), int(image.shape[1]))
    heat = _fit(rendered.rgb.to(image.device), size)
    photo = image.float()
    if weighting == "constant":
        a: torch.Tensor | float = alpha
    elif weighting == "evidence":
        a = (alpha * _fit(rendered.magnitude.to(image.device), size).clamp(0.0, 1.0))[..., None]
    else:
        raise ValueError(f"unknown weighting {weighting!r}; valid: constant, evidence")
    # In place on the fresh float copy: this runs once per answer on the request path (1.3 -> 0.1 ms at 224 px).
    out = photo.mul_(1.0 - a)
    if isinstance(a, torch.Tensor):
        out.addcmul_(heat, a)
    else:
        out.add_(heat, alpha=a)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def region_mask(evidence: torch.Tensor, *, region: Region = "top", top_fraction: float = 0.25,
                smooth: float = 0.0) -> torch.Tensor:
    """Boolean ``[H, W]`` of the map's top region: the ``top_fraction`` of pixels with the most
    evidence (``top``), or those above Otsu's threshold (``otsu``), after an optional Gaussian blur
    of ``smooth`` px (pixel maps are speckled: blurring first outlines where the evidence is dense,
    not every speck). A map with nothing in it has no region.
    """
    if evidence.dim() != 2:
        raise ValueError(f"evidence must be [H, W], got {tuple(evidence.shape)}")
    e = gaussian_blur(_finite(evidence), smooth, "replicate")
    if float(e.max()) <= float(e.min()):
        return torch.zeros(e.shape, dtype=torch.bool, device=e.device)
    if region == "otsu":
        from ..localization.threshold import otsu_threshold

        thr = otsu_threshold(e)
    elif region == "top":
        if not 0.0 < top_fraction < 1.0:
            raise ValueError(f"top_fraction must be in (0, 1), got {top_fraction}")
        thr = percentile(e, 100.0 * (1.0 - top_fraction))
    else:
        raise ValueError(f"unknown region {region!r}; valid: top, otsu")
    return e > thr


def _dilate(mask: torch.Tensor, r: int) -> torch.Tensor:
    if r <= 0:
        return mask
    x = mask.float()[None, None]
    return F.max_pool2d(x, 2 * r + 1, stride=1, padding=r)[0, 0] > 0


def boundary(mask: torch.Tensor) -> torch.Tensor:
    """The inner boundary of a boolean ``[H, W]`` mask: pixels of the mask with a 4-neighbour outside it.

    The image border does not count as outside (edges are replicated): a region cut by the frame
    is not outlined along the frame, which would look like a box around the whole picture.
    """
    x = F.pad(mask.float()[None, None], (1, 1, 1, 1), mode="replicate")[0, 0]
    inside = (x[:-2, 1:-1] > 0) & (x[2:, 1:-1] > 0) & (x[1:-1, :-2] > 0) & (x[1:-1, 2:] > 0)
    return mask & ~inside


def outline(image: torch.Tensor, source: RenderedMap | torch.Tensor, *, region: Region = "top",
            top_fraction: float = 0.25, smooth: float | None = None, color: tuple[int, int, int] = (0, 255, 64),
            halo: tuple[int, int, int] | None = (0, 0, 0), width: int | None = None) -> torch.Tensor:
    """``image`` with the contour of the map's top region drawn over it (a copy; uint8 ``[H, W, 3]``).

    ``source`` is a :class:`RenderedMap` (its ``evidence``: for signed maps the positive part) or
    an ``[h, w]`` evidence map; it is resized to the image. The line is ``width`` px (default
    ~0.8 % of the longer side) in ``color`` over a dark ``halo`` one pixel wider each side, so it
    stays visible on light and dark photos alike. ``smooth`` defaults to 2 % of the shorter side
    for pixel maps (unsigned, signed, gradient_rgb) and 0 for positive (already smooth) maps.
    Pixels away from the boundary are left exactly as they were.
    """
    _check_image(image)
    H, W = int(image.shape[0]), int(image.shape[1])
    kind: MapKind | None = source.kind if isinstance(source, RenderedMap) else None
    ev = source.evidence if isinstance(source, RenderedMap) else source
    ev = _fit(ev.detach().to(image.device), (H, W))
    if smooth is None:
        smooth = 0.0 if kind in (None, "positive") else 0.02 * min(H, W)
    mask = region_mask(ev, region=region, top_fraction=top_fraction, smooth=smooth)
    edge = boundary(mask)
    width = max(2, round(0.008 * max(H, W))) if width is None else int(width)
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    out = image.clone()
    r = (width - 1) // 2
    line = _dilate(edge, r)
    if halo is not None:
        out[_dilate(edge, r + 1)] = torch.tensor(halo, dtype=torch.uint8, device=out.device)
    out[line] = torch.tensor(color, dtype=torch.uint8, device=out.device)
    return out
