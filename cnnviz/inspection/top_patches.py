"""Top-k maximally activating patches per channel, with deconvnet projections (Zeiler & Fergus 2014, fig. 2).

For each chosen channel of a layer, the collection is scanned once (batched, inference mode, the
network run only up to the layer) for each image's strongest single position; the ``k`` images
with the highest such activation are kept, one position per image as in the paper. Each becomes

* the crop of the network input under the position's receptive field (:mod:`.receptive`), and
* the projection of that one activation back to pixel space: the gradient of
  ``act[c, y, x]`` alone (every other position and channel zero) with respect to the input, under
  the deconvnet rule (rectify the signal going down; max pools unpool through their forward
  switches, convolutions apply their transposed filters, which is what autograd does anyway) or
  the guided-backprop rule, built by :func:`~cnnviz.attribution.rules.rectifier_rule`.

The projection cannot reach outside the receptive field, so the crop shows all of it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

from ..attribution.rules import rectifier_rule
from ..blur import gaussian_blur
from ..errors import EngineError
from ..models import LoadedModel, validate_layer
from ..render import add_title, labelled_grid, make_grid
from .features import CancelFn, ProgressFn, check_cancel, default_batch_size, layer_output
from .receptive import Box, receptive_fields

log = logging.getLogger(__name__)

Projection = Literal["deconvnet", "guided", "gradient", "none"]
PROJECTIONS: tuple[str, ...] = ("deconvnet", "guided", "gradient", "none")

__all__ = ["ChannelPatches", "PROJECTIONS", "Patch", "TopActivations", "patch_grid", "project_units",
           "scan_top_activations", "top_activating_patches"]


@dataclass
class Patch:
    """One of a channel's top-k: where it fired, how strongly, and what it saw there."""

    image: int  # index into the collection
    y: int  # position in the layer's grid
    x: int
    activation: float
    box: Box  # (x0, y0, x1, y1) in network-input pixels, x1/y1 exclusive
    crop: torch.Tensor  # uint8 [h, w, 3]: the network input under the receptive field
    projection: torch.Tensor | None = None  # uint8 [h, w, 3]: the projection, normalized for display
    raw_projection: torch.Tensor | None = None  # float [3, h, w]: the projection before display scaling


@dataclass
class ChannelPatches:
    """A channel's ``k`` strongest images, strongest first."""

    channel: int
    score: float  # mean activation of the k patches (how strongly the channel's best cases fire)
    patches: list[Patch] = field(default_factory=list)


@dataclass
class TopActivations:
    """Per channel, the ``k`` best (value, image, position), strongest first; from one pass over a collection."""

    values: torch.Tensor  # [C, k] float
    images: torch.Tensor  # [C, k] long, -1 where the collection has fewer than k images
    positions: torch.Tensor  # [C, k, 2] long (y, x)
    grid: tuple[int, int]  # the layer's (h, w) at this input size


def scan_top_activations(model: LoadedModel, images: Sequence[torch.Tensor], layer: str, k: int = 9, *,
                         size: int | None = None, batch_size: int | None = None, progress: ProgressFn | None = None,
                         cancel: CancelFn | None = None, total: int | None = None) -> TopActivations:
    """Each channel's ``k`` highest single-position activations over ``images``, one position per image.

    A running top-k per channel is merged with each batch's per-image maxima; ties keep the
    earlier image (stable sort), and within an image the first maximal position in row-major order.
    ``total`` is the progress total when this scan is one stage of a larger job.
    """
    n = len(images)
    batch_size = batch_size or default_batch_size(model)
    n_batches = math.ceil(n / batch_size)
    total = total or n_batches
    vals = idx = pos = None
    grid = (0, 0)
    for b, i0 in enumerate(range(0, n, batch_size)):
        check_cancel(cancel, "scanning activations")
        x = model.preprocessing.batch(list(images[i0:i0 + batch_size]), size, device=model.device)
        with torch.inference_mode():
            act = layer_output(model, x.contiguous(memory_format=torch.channels_last), layer).float()
        if act.dim() != 4:
            raise EngineError("layer-not-spatial", f"layer {layer!r} has no spatial output")
        nb, c, h, w = act.shape
        grid = (h, w)
        flat = act.flatten(2)  # [B,C,h*w]
        bval, barg = flat.max(2)  # first maximal position per image and channel
        bval, barg = bval.T.cpu(), barg.T.cpu()  # [C,B]
        bidx = torch.arange(i0, i0 + nb).expand(c, nb)
        bpos = torch.stack([barg // w, barg % w], -1)  # [C,B,2]
        if vals is None:
            vals, idx, pos = bval, bidx, bpos
        else:
            vals, idx, pos = torch.cat([vals, bval], 1), torch.cat([idx, bidx], 1), torch.cat([pos, bpos], 1)
        order = vals.sort(dim=1, descending=True, stable=True).indices[:, :k]
        vals, idx = vals.gather(1, order), idx.gather(1, order)
        pos = pos.gather(1, order[..., None].expand(-1, -1, 2))
        if progress is not None:
            progress(b + 1, total, "scanning")
    assert vals is not None and idx is not None and pos is not None
    if vals.shape[1] < k:  # fewer images than k: pad so every row has k slots
        pad = k - vals.shape[1]
        vals = torch.cat([vals, torch.full((vals.shape[0], pad), float("-inf"))], 1)
        idx = torch.cat([idx, torch.full((idx.shape[0], pad), -1, dtype=torch.long)], 1)
        pos = torch.cat([pos, torch.zeros(pos.shape[0], pad, 2, dtype=torch.long)], 1)
    return TopActivations(vals, idx, pos, grid)


def project_units(model: LoadedModel, x: torch.Tensor, layer: str, channels: Sequence[int],
                  positions: Sequence[tuple[int, int]], rule: Projection | str = "deconvnet") -> torch.Tensor:
    """Project one activation per image back to the input: ``[N,3,H,W]`` for a normalized batch ``x``.

    Row ``i`` is the gradient of ``act[i, channels[i], y_i, x_i]`` alone with respect to ``x[i]``
    under ``rule`` (``deconvnet``, ``guided``, or the plain ``gradient``). Images in a batch are
    independent (eval mode), so one backward of the sum gives every row its own projection.
    """
    if rule not in ("deconvnet", "guided", "gradient"):
        raise ValueError(f"unknown projection {rule!r}; expected deconvnet, guided or gradient")
    n = x.shape[0]
    if not (len(channels) == len(positions) == n):
        raise ValueError("project_units needs one channel and one position per image")
    with torch.inference_mode(False), torch.enable_grad():
        xg = x.detach().clone().contiguous(memory_format=torch.channels_last).requires_grad_(True)
        if rule == "gradient":
            act = layer_output(model, xg, layer)
        else:
            with rectifier_rule(model.module, rule):
                act = layer_output(model, xg, layer)
        ch = torch.as_tensor(list(channels), device=act.device)
        ys = torch.as_tensor([p[0] for p in positions], device=act.device)
        xs = torch.as_tensor([p[1] for p in positions], device=act.device)
        picked = act[torch.arange(n, device=act.device), ch, ys, xs]
        (grad,) = torch.autograd.grad(picked.sum(), xg)
    return grad.detach().float()


def _to_uint8(img: torch.Tensor) -> torch.Tensor:
    """``[3,h,w]`` in [0,1] as uint8 ``[h,w,3]``."""
    return (img.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous()


def display_projection(p: torch.Tensor, saturate: float = 0.99, smooth: float = 1.0,
                       gamma: float = 0.7) -> torch.Tensor:
    """A signed ``[3,h,w]`` projection as uint8 ``[h,w,3]``, contrast-normalized per projection (Zeiler & Fergus).

    Zero is mid grey and ±(the ``saturate`` quantile of this projection's magnitudes) is black/white,
    so every tile uses the full range whatever its scale; scaling by the maximum would let a few hot
    pixels grey out the rest. Two things make the pattern readable rather than a grey square with
    faint blobs: a light Gaussian blur (``smooth`` px) removes the checkerboard that strided
    convolutions leave in a projection, and ``gamma`` < 1 on the magnitude lifts the weak parts of
    the pattern, which on a modern network spread over the whole receptive field, without moving zero.
    """
    x = p.float()
    if smooth > 0 and min(x.shape[-2:]) > 2:
        x = gaussian_blur(x.unsqueeze(0), smooth)[0]
    mag = x.abs().flatten()
    m = torch.quantile(mag, saturate) if 0 < mag.numel() <= 16_000_000 else mag.max()
    if m <= 0:
        m = mag.max()
    if m <= 0:
        return _to_uint8(torch.full_like(x, 0.5))
    y = (x / m).clamp(-1, 1)
    return _to_uint8(0.5 + 0.5 * y.sign() * y.abs().pow(gamma))


def top_activating_patches(model: LoadedModel, images: Sequence[torch.Tensor], layer: str | None = None,
                           channels: Sequence[int] | None = None, *, top_channels: int = 8, k: int = 9,
                           projection: Projection | str = "deconvnet", size: int | None = None,
                           batch_size: int | None = None, progress: ProgressFn | None = None,
                           cancel: CancelFn | None = None) -> list[ChannelPatches]:
    """The ``k`` strongest patches of each of ``channels`` (or the ``top_channels`` strongest) over ``images``.

    Images are ``[3,H,W]`` in [0,1], fitted to the network input (``size``, default the model's)
    like every other view. Channels chosen automatically are those whose k best activations have
    the highest mean. Progress stages: ``scanning`` (one step per batch), ``projecting``.
    """
    if projection not in PROJECTIONS:
        raise EngineError("bad-projection", f"unknown projection {projection!r}", list(PROJECTIONS))
    if k < 1 or top_channels < 1:
        raise ValueError("k and top_channels must be >= 1")
    layer = validate_layer(model, layer)
    if not images:
        raise ValueError("top_activating_patches needs at least one image")
    n_ch = model.layer(layer).output_shape[0]  # type: ignore[index]
    if channels is not None:
        bad = [c for c in channels if not 0 <= c < n_ch]
        if bad or not channels:
            raise EngineError("unknown-channel", f"channels {bad} outside 0..{n_ch - 1} of {layer}")
    k = min(k, len(images))
    batch_size = batch_size or default_batch_size(model)
    n_scan = math.ceil(len(images) / batch_size)
    picked_channels = list(channels) if channels is not None else None
    n_items = k * (len(picked_channels) if picked_channels is not None else min(top_channels, n_ch))
    n_proj = 0 if projection == "none" else math.ceil(n_items / batch_size)
    total = n_scan + n_proj
    top = scan_top_activations(model, images, layer, k, size=size, batch_size=batch_size, progress=progress,
                               cancel=cancel, total=total)
    scores = top.values.mean(1)
    if picked_channels is None:
        picked_channels = scores.argsort(descending=True, stable=True)[: min(top_channels, n_ch)].tolist()

    items = [(c, r) for c in picked_channels for r in range(k)]
    where = [(int(top.positions[c, r, 0]), int(top.positions[c, r, 1])) for c, r in items]
    input_size = size or model.preprocessing.input_size
    fields = receptive_fields(model, layer, where, input_size, with_size=False)
    used = sorted({int(top.images[c, r]) for c, r in items})
    fitted = {i: model.preprocessing.fit(images[i].float().cpu(), size) for i in used}

    patches: list[Patch] = []
    for (c, r), (py, px), rf in zip(items, where, fields, strict=True):
        i = int(top.images[c, r])
        patches.append(Patch(i, py, px, float(top.values[c, r]), rf.box, _to_uint8(rf.crop(fitted[i]))))

    if projection != "none":
        for b, j0 in enumerate(range(0, len(items), batch_size)):
            check_cancel(cancel, "projecting")
            chunk = list(range(j0, min(j0 + batch_size, len(items))))
            x = model.preprocessing.normalize(torch.stack([fitted[patches[j].image] for j in chunk])).to(model.device)
            proj = project_units(model, x, layer, [items[j][0] for j in chunk],
                                 [(patches[j].y, patches[j].x) for j in chunk], projection).cpu()
            for j, p in zip(chunk, proj, strict=True):
                x0, y0, x1, y1 = patches[j].box
                raw = p[:, y0:y1, x0:x1]
                patches[j].raw_projection = raw
                patches[j].projection = display_projection(raw)
            if progress is not None:
                progress(n_scan + b + 1, total, "projecting")

    out = [ChannelPatches(c, float(scores[c]), patches[i * k:(i + 1) * k]) for i, c in enumerate(picked_channels)]
    log.debug("top patches of %d channels of %s over %d images (k=%d, %s)", len(out), layer, len(images), k,
              projection)
    return out


def _fit_tile(t: torch.Tensor, tile: int | None) -> torch.Tensor:
    """Scale a uint8 ``[h,w,3]`` so its longer side is ``tile`` (nearest when enlarging keeps pixels crisp)."""
    if tile is None:
        return t
    h, w = t.shape[:2]
    scale = tile / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    if (nh, nw) == (h, w):
        return t
    x = t.permute(2, 0, 1)[None].float()
    if scale > 1:
        x = F.interpolate(x, size=(nh, nw), mode="nearest")
    else:
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
    return x[0].clamp(0, 255).round().to(torch.uint8).permute(1, 2, 0).contiguous()


def patch_grid(channels: Sequence[ChannelPatches], *, tile: int | None = 64, ncols: int | None = None,
               pad: int = 2, projections: bool = True, labels: bool = True, layer: str | None = None,
               projection: str | None = None, font_px: int | None = None) -> torch.Tensor:
    """One uint8 ``[H,W,3]`` picture: per channel, its projections beside its crops (Zeiler & Fergus fig. 2).

    Each channel is a block of two near-square grids (projections left, crops right, in the same
    order); blocks are laid out ``ncols`` per row with wider white gaps between them. Tiles are
    scaled so their longer side is ``tile`` pixels (None keeps network-input pixels).

    With ``labels`` (the default) the picture says what it shows: each block is titled with its
    channel index and the mean activation of its patches, every crop has its activation under it
    and every projection the collection index of its image; a header names the ``layer`` and the
    ``projection`` rule when given. ``labels=False`` draws the bare grids.
    """
    if not channels:
        raise ValueError("patch_grid needs at least one channel")
    blocks = []
    head_px = font_px or max(14, round(0.22 * (tile or 64)))  # one size for every block's title
    for ch in channels:
        if not ch.patches:
            continue
        cols = math.ceil(math.sqrt(len(ch.patches)))
        crop_tiles = [_fit_tile(p.crop, tile) for p in ch.patches]
        with_proj = projections and all(p.projection is not None for p in ch.patches)
        proj_tiles = [_fit_tile(p.projection, tile) for p in ch.patches] if with_proj else []  # type: ignore[arg-type]
        if labels:
            parts = [labelled_grid(crop_tiles, [f"{p.activation:.3g}" for p in ch.patches], ncols=cols, pad=1,
                                   font_px=font_px)]
            if with_proj:
                parts.insert(0, labelled_grid(proj_tiles, [f"img {p.image}" for p in ch.patches], ncols=cols, pad=1,
                                              font_px=font_px))
            block = make_grid(parts, ncols=len(parts), pad=pad, pad_value=255)
            blocks.append(add_title(block, f"channel {ch.channel}", subtitle=f"mean activation {ch.score:.3g}",
                                    font_px=head_px))
            continue
        parts = [make_grid(crop_tiles, ncols=cols, pad=1)]
        if with_proj:
            parts.insert(0, make_grid(proj_tiles, ncols=cols, pad=1))
        blocks.append(make_grid(parts, ncols=len(parts), pad=pad, pad_value=255))
    if not blocks:
        raise ValueError("patch_grid: no channel has patches")
    grid = make_grid(blocks, ncols=ncols, pad=4 * pad, pad_value=255)
    if not labels:
        return grid
    n = max(len(ch.patches) for ch in channels)
    head = f"Top {n} patches per channel" + (f" · layer {layer}" if layer else "")
    rule = f"{projection} projection" if projection else "projection"
    sub = (f"left: {rule} (caption: image index); right: input under the receptive field (caption: activation)"
           if projections and any(p.projection is not None for ch in channels for p in ch.patches)
           else "input under the receptive field (caption: activation)")
    return add_title(grid, head, subtitle=sub, font_px=font_px, align="left")
