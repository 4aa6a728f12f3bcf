"""Pictures of maps over 1-D signals and 3-D volumes, drawn to be read by a clinician.

* :func:`signal_plot`: one panel per channel (named), the trace in black over time (seconds where
  the sampling rate is known, else samples), the map as a colour band behind it, and a colour
  scale saying what the colours mean;
* :func:`volume_slices`: the three orthogonal slices (axial, coronal, sagittal) through the map's
  peak, the scan in grey under the map, a cross at the peak, millimetre axes and the patient
  directions at the panel edges where the affine gives them;
* :func:`volume_montage`: evenly spaced axial slices with the map, each captioned with its slice
  index and position, one shared colour scale.

Unlike the image renderer (:mod:`.kinds`, torch only), these use matplotlib (a dependency of the
WFDB reader already): axes, ticks and colour bars are what make a trace or a slice readable.
The map's values are drawn as they are (a signed map on a diverging scale centred on 0,
a non-negative map from 0 to its maximum); the JSON answer carries the raw values.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np

DPI = 100


def _figure(width: float, height: float):  # noqa: ANN202 - matplotlib's Figure, imported lazily
    from matplotlib.figure import Figure  # noqa: PLC0415 - matplotlib loads in ~0.3 s; only N-D answers need it

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _png(fig) -> bytes:  # noqa: ANN001
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, facecolor="white")
    return buf.getvalue()


def _scale(values: np.ndarray, signed: bool) -> tuple[str, float, float]:
    """Colormap and value range: diverging and symmetric about 0 for a signed map, else 0..max."""
    top = float(np.abs(values).max()) or 1.0
    if signed:
        return "RdBu_r", -top, top
    return "inferno", min(0.0, float(values.min())), float(values.max()) or 1.0


def signal_plot(signal: np.ndarray, attribution: np.ndarray, *, title: str, channel_names: Sequence[str] = (),
                sampling_rate: float | None = None, signed: bool = False, scale_label: str = "attribution") -> bytes:
    """PNG: each channel of ``signal`` ``[C,L]`` drawn over ``attribution`` ``[L]`` (both at the caller's samples)."""
    c, length = signal.shape
    fig = _figure(11, 1.2 + 1.5 * c)
    axes = fig.subplots(c, 1, sharex=True, squeeze=False)[:, 0]
    t = np.arange(length) / sampling_rate if sampling_rate else np.arange(length)
    cmap, lo, hi = _scale(attribution, signed)
    extent_x = (t[0], t[-1] if length > 1 else 1)
    image = None
    for ch, ax in enumerate(axes):
        y = signal[ch]
        pad = 0.08 * (float(y.max() - y.min()) or 1.0)
        y0, y1 = float(y.min()) - pad, float(y.max()) + pad
        image = ax.imshow(attribution[None], aspect="auto", cmap=cmap, vmin=lo, vmax=hi, alpha=0.75,
                          extent=(*extent_x, y0, y1), interpolation="nearest", origin="lower")
        ax.plot(t, y, color="black", linewidth=0.9)
        ax.set_ylim(y0, y1)
        ax.set_xlim(*extent_x)
        ax.set_ylabel(channel_names[ch] if ch < len(channel_names) and channel_names[ch] else f"channel {ch + 1}")
        ax.grid(True, color="white", alpha=0.25, linewidth=0.5)
    axes[-1].set_xlabel("time (s)" if sampling_rate else "sample")
    axes[0].set_title(title, fontsize=11)
    bar = fig.colorbar(image, ax=list(axes), fraction=0.025, pad=0.01)
    bar.set_label(scale_label)
    return _png(fig)


def _alpha(amap: np.ndarray, top: float) -> np.ndarray:
    """Per-voxel opacity of a map laid over a scan: 0.65 at the map's extreme, none where it is 0, so the scan
    stays readable everywhere the map says nothing (a uniform tint would darken it all)."""
    return np.clip(np.abs(amap) / (top or 1.0), 0, 1) * 0.65


def _axis_letters(affine: np.ndarray | None) -> tuple[tuple[str, str], ...]:
    """Patient directions at the low and high end of the D, H, W axes (from the RAS affine), or blanks."""
    if affine is None:
        return (("", ""),) * 3
    from nibabel.orientations import aff2axcodes  # noqa: PLC0415 - nibabel is what reads the volumes

    codes = aff2axcodes(affine)  # for i, j, k = W, H, D: the direction each index increases towards
    opposite = {"R": "L", "L": "R", "A": "P", "P": "A", "S": "I", "I": "S"}
    ends = [(opposite.get(c, ""), c or "") for c in codes]
    return ends[2], ends[1], ends[0]


def volume_slices(volume: np.ndarray, attribution: np.ndarray, *, title: str, spacing: Sequence[float] = (1, 1, 1),
                  affine: np.ndarray | None = None, signed: bool = False, scale_label: str = "attribution",
                  peak: tuple[int, int, int] | None = None) -> bytes:
    """PNG: axial, coronal and sagittal slices of ``volume`` ``[D,H,W]`` through the map's peak, map over scan."""
    d, h, w = volume.shape
    if peak is None:
        peak = tuple(int(v) for v in np.unravel_index(int(np.argmax(np.abs(attribution) if signed else attribution)),
                                                      attribution.shape))
    pd, ph, pw = peak
    sd, sh, sw = (float(v) for v in spacing)
    (d_lo, d_hi), (h_lo, h_hi), (w_lo, w_hi) = _axis_letters(affine)
    cmap, lo, hi = _scale(attribution, signed)
    glo, ghi = np.percentile(volume, [1, 99])
    views = [  # (name, scan slice, map slice, extent x, extent y, cross, x label, y label, letters)
        (f"axial, slice {pd} of {d}", volume[pd], attribution[pd], (0, w * sw), (0, h * sh), (pw * sw, ph * sh),
         "W (mm)", "H (mm)", (w_lo, w_hi, h_lo, h_hi)),
        (f"coronal, row {ph} of {h}", volume[:, ph], attribution[:, ph], (0, w * sw), (0, d * sd),
         (pw * sw, pd * sd), "W (mm)", "D (mm)", (w_lo, w_hi, d_lo, d_hi)),
        (f"sagittal, column {pw} of {w}", volume[:, :, pw], attribution[:, :, pw], (0, h * sh), (0, d * sd),
         (ph * sh, pd * sd), "H (mm)", "D (mm)", (h_lo, h_hi, d_lo, d_hi)),
    ]
    fig = _figure(13, 4.8)
    axes = fig.subplots(1, 3)
    image = None
    for ax, (name, scan, amap, ex, ey, cross, xl, yl, letters) in zip(axes, views, strict=True):
        ext = (*ex, *ey)
        ax.imshow(scan, cmap="gray", vmin=glo, vmax=ghi, extent=ext, origin="lower", interpolation="nearest")
        image = ax.imshow(amap, cmap=cmap, vmin=lo, vmax=hi, alpha=_alpha(amap, max(abs(lo), abs(hi))), extent=ext,
                          origin="lower", interpolation="bilinear")
        ax.axhline(cross[1], color="cyan", linewidth=0.6, alpha=0.8)
        ax.axvline(cross[0], color="cyan", linewidth=0.6, alpha=0.8)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        x_lo, x_hi, y_lo, y_hi = letters
        for text, xy, ha, va in ((x_lo, (0.02, 0.5), "left", "center"), (x_hi, (0.98, 0.5), "right", "center"),
                                 (y_lo, (0.5, 0.02), "center", "bottom"), (y_hi, (0.5, 0.98), "center", "top")):
            if text:
                ax.text(*xy, text, transform=ax.transAxes, ha=ha, va=va, color="yellow", fontsize=11,
                        fontweight="bold")
    fig.suptitle(f"{title}\npeak at voxel (D {pd}, H {ph}, W {pw})", fontsize=11)
    bar = fig.colorbar(image, ax=list(axes), fraction=0.02, pad=0.01)
    bar.set_label(scale_label)
    return _png(fig)


def volume_montage(volume: np.ndarray, attribution: np.ndarray, *, title: str, spacing: Sequence[float] = (1, 1, 1),
                   signed: bool = False, scale_label: str = "attribution", max_slices: int = 16) -> bytes:
    """PNG: up to ``max_slices`` evenly spaced axial slices (D) of ``volume`` with the map, captioned, one scale."""
    d, h, w = volume.shape
    picks = sorted({round(v) for v in np.linspace(0, d - 1, min(d, max_slices))})
    cols = min(len(picks), 4 if len(picks) <= 8 else int(math.ceil(math.sqrt(len(picks)))))
    rows = int(math.ceil(len(picks) / cols))
    cmap, lo, hi = _scale(attribution, signed)
    glo, ghi = np.percentile(volume, [1, 99])
    fig = _figure(2.6 * cols + 1.0, 2.6 * rows + 0.8)
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    sd, sh, sw = (float(v) for v in spacing)
    image = None
    for ax in axes[len(picks):]:
        ax.axis("off")
    for ax, k in zip(axes, picks, strict=False):
        ext = (0, w * sw, 0, h * sh)
        ax.imshow(volume[k], cmap="gray", vmin=glo, vmax=ghi, extent=ext, origin="lower", interpolation="nearest")
        image = ax.imshow(attribution[k], cmap=cmap, vmin=lo, vmax=hi, extent=ext, origin="lower",
                          alpha=_alpha(attribution[k], max(abs(lo), abs(hi))), interpolation="bilinear")
        ax.set_title(f"slice {k}  ({k * sd:.1f} mm)", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{title}\naxial montage: {len(picks)} of {d} slices", fontsize=11)
    bar = fig.colorbar(image, ax=list(axes), fraction=0.02, pad=0.01)
    bar.set_label(scale_label)
    return _png(fig)


def filters_plot(weight: np.ndarray, *, title: str, max_filters: int = 64) -> bytes:
    """PNG of a 1-D layer's kernels ``[out, in, k]`` (one row per filter, in-channels averaged, a diverging
    scale) or a 3-D layer's ``[out, in, k, k, k]`` (each filter's middle slice along D, in-channels averaged)."""
    w = weight[:max_filters].mean(axis=1)  # [out, k] or [out, kd, kh, kw]
    top = float(np.abs(w).max()) or 1.0
    if w.ndim == 2:
        fig = _figure(8, 1.2 + 0.22 * w.shape[0])
        ax = fig.subplots()
        image = ax.imshow(w, cmap="RdBu_r", vmin=-top, vmax=top, aspect="auto", interpolation="nearest")
        ax.set_xlabel("tap (sample offset)")
        ax.set_ylabel("filter")
        ax.set_title(title, fontsize=11)
        fig.colorbar(image, ax=ax, fraction=0.03).set_label("weight (mean over input channels)")
        return _png(fig)
    cols = min(8, w.shape[0])
    rows = int(math.ceil(w.shape[0] / cols))
    fig = _figure(1.4 * cols + 1, 1.4 * rows + 0.8)
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    image = None
    for i, ax in enumerate(axes):
        ax.set_xticks([])
        ax.set_yticks([])
        if i >= w.shape[0]:
            ax.axis("off")
            continue
        image = ax.imshow(w[i, w.shape[1] // 2], cmap="RdBu_r", vmin=-top, vmax=top, interpolation="nearest")
        ax.set_title(f"filter {i}", fontsize=8)
    fig.suptitle(f"{title}\nmiddle slice (along D) of each 3-D kernel", fontsize=10)
    fig.colorbar(image, ax=list(axes), fraction=0.02).set_label("weight (mean over input channels)")
    return _png(fig)


def activations_plot(acts: np.ndarray, channels: Sequence[int], *, title: str, sampling_rate: float | None = None,
                     length: int | None = None) -> bytes:
    """PNG of a 1-D layer's channels ``[C, l]`` (one heat row each, over the input's time) or a 3-D layer's
    ``[C, d, h, w]`` (each channel's axial slice through its own maximum)."""
    sel = acts[list(channels)]
    if sel.ndim == 2:
        fig = _figure(10, 1.2 + 0.28 * len(channels))
        ax = fig.subplots()
        span = (length / sampling_rate if sampling_rate else length) or sel.shape[1]
        image = ax.imshow(sel, aspect="auto", cmap="viridis", interpolation="nearest", extent=(0, span, len(sel), 0))
        ax.set_yticks(np.arange(len(channels)) + 0.5, [str(c) for c in channels])
        ax.set_ylabel("channel")
        ax.set_xlabel("time (s)" if sampling_rate else "sample")
        ax.set_title(title, fontsize=11)
        fig.colorbar(image, ax=ax, fraction=0.03).set_label("activation")
        return _png(fig)
    cols = min(4, len(channels))
    rows = int(math.ceil(len(channels) / cols))
    fig = _figure(2.4 * cols + 1, 2.4 * rows + 0.8)
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for i, ax in enumerate(axes):
        ax.set_xticks([])
        ax.set_yticks([])
        if i >= len(channels):
            ax.axis("off")
            continue
        k = int(np.unravel_index(int(np.argmax(sel[i])), sel[i].shape)[0])
        image = ax.imshow(sel[i, k], cmap="viridis", origin="lower", interpolation="nearest")
        ax.set_title(f"channel {channels[i]}, slice {k}", fontsize=8)
        fig.colorbar(image, ax=ax, fraction=0.046)
    fig.suptitle(f"{title}\neach channel's axial slice through its maximum", fontsize=10)
    return _png(fig)
