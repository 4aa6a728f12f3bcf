"""Feature vectors of a layer for an image collection, and the pixel-space baseline beside them.

Collection views (neighbours, 2-D maps, embeddings, top patches) all start from one layer's
output for many images. :func:`layer_output` runs the network only as far as that layer: a
forward hook raises once the layer has produced its (last) output for the pass, so the part of
the network after it costs nothing. :func:`extract_features` batches a collection through it and
pools each spatial map to a vector.

Long collection passes run as jobs, so every batched loop here takes ``progress(done, total,
stage)`` and ``cancel() -> bool``; cancel is checked between batches and raises
:class:`~cnnviz.synthesis.loop.Cancelled`, the exception the worker runtime already maps to a
cancelled job.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..hooks import thread_hooks
from ..models import LoadedModel, validate_layer
from ..synthesis.loop import Cancelled

log = logging.getLogger(__name__)

Pool = Literal["avg", "max", "none"]
POOLS: tuple[str, ...] = ("avg", "max", "none")
ProgressFn = Callable[[int, int, str], None]
CancelFn = Callable[[], bool]

__all__ = [
    "CancelFn", "Cancelled", "POOLS", "Pool", "ProgressFn", "check_cancel", "default_batch_size", "extract_features",
    "fitted_images",
    "layer_output", "pixel_features", "pool_features",
]


class _Stop(Exception):
    """Raised by the capture hook once the layer's output is in hand: the rest of the net is skipped."""


# How many times each layer's module runs in one forward (a shared ReLU may run several times; the
# last call's output is the layer's output, as in LayerCapture). Keyed weakly by the module.
_CALLS: weakref.WeakKeyDictionary[nn.Module, dict[str, int]] = weakref.WeakKeyDictionary()
_CALLS_LOCK = threading.Lock()


def _calls_per_forward(module: nn.Module, layer: str, x: torch.Tensor) -> int:
    with _CALLS_LOCK:
        known = _CALLS.setdefault(module, {})
        if layer in known:
            return known[layer]
    count = 0

    def hook(_m: nn.Module, _i: Any, _o: Any) -> None:
        nonlocal count
        count += 1

    with thread_hooks([(module.get_submodule(layer), hook)]), torch.inference_mode():
        module(x[:1].detach())
    with _CALLS_LOCK:
        _CALLS.setdefault(module, {})[layer] = count
    if count != 1:
        log.debug("layer %s runs %d times per forward; using its last output", layer, count)
    return count


def layer_output(model: LoadedModel | nn.Module, x: torch.Tensor, layer: str) -> torch.Tensor:
    """The output of ``layer`` for the normalized batch ``x``, running the network only that far.

    Grad mode is the caller's: under ``torch.inference_mode`` this is a cheap feature pass; with
    ``x.requires_grad`` the returned tensor is in the graph (projections, receptive fields).
    Safe to call inside :func:`~cnnviz.attribution.rules.rectifier_rule`: the hook is installed
    after the rule's, so it sees the ruled output.
    """
    module = model.module if isinstance(model, LoadedModel) else model
    calls = _calls_per_forward(module, layer, x)
    seen: list[torch.Tensor] = []

    def hook(_m: nn.Module, _i: Any, out: Any) -> None:
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"layer {layer!r} outputs {type(out).__name__}, not a tensor; choose another layer")
        seen.append(out)
        if len(seen) >= calls:
            raise _Stop

    try:
        with thread_hooks([(module.get_submodule(layer), hook)]):
            module(x)
    except _Stop:
        pass
    if not seen:
        raise RuntimeError(f"layer {layer!r} did not run in the forward pass")
    return seen[-1]


def pool_features(act: torch.Tensor, pool: Pool | str = "avg") -> torch.Tensor:
    """``[N,C,h,w]`` (or ``[N,C]``) layer output as ``[N,D]`` vectors: spatial mean, max, or flattened."""
    if pool not in POOLS:
        raise ValueError(f"unknown pooling {pool!r}; expected one of {POOLS}")
    if act.dim() <= 2:
        return act.reshape(act.shape[0], -1)
    if pool == "avg":
        return act.flatten(2).mean(2)
    if pool == "max":
        return act.flatten(2).amax(2)
    return act.flatten(1)


def check_cancel(cancel: CancelFn | None, stage: str) -> None:
    """Raise :class:`Cancelled` if the caller asked to stop (checked between batches)."""
    if cancel is not None and cancel():
        raise Cancelled(f"cancelled while {stage}")


def fitted_images(model: LoadedModel, images: Sequence[torch.Tensor], size: int | None = None) -> torch.Tensor:
    """Images ``[3,H,W]`` in [0,1] resized to the network input ``[N,3,S,S]`` (not normalized), on the CPU."""
    return torch.stack([model.preprocessing.fit(img.float().cpu(), size) for img in images])


def default_batch_size(model: LoadedModel) -> int:
    """Images per forward when the caller does not say: 4 on a CPU, 64 on a GPU.

    Measured with ``bench/bench_inspection.py`` on a 2-core CPU (EfficientNet-Lite0, 224 px):
    batch 4 runs about 120 images/s, batch 32 about 40; large batches' activations no longer fit
    the caches (and each forward maps and faults in fresh pages). A GPU wants large batches.
    """
    return 64 if model.device.type == "cuda" else 4


def _batches(n: int, batch_size: int) -> list[tuple[int, int]]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return [(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


def extract_features(model: LoadedModel, images: Sequence[torch.Tensor], layer: str | None = None, *,
                     batch_size: int | None = None, pool: Pool | str = "avg", size: int | None = None,
                     progress: ProgressFn | None = None, cancel: CancelFn | None = None) -> torch.Tensor:
    """Feature vectors ``[N,D]`` (float32, CPU) of ``layer`` for images ``[3,H,W]`` in [0,1].

    Spatial outputs are pooled (``avg``/``max``) to one value per channel, or flattened
    (``none``; ``D = C*h*w``, comparable only at one input ``size``). ``layer`` defaults to the
    model's default layer, whose average-pooled output is the penultimate feature vector of a GAP
    network. Images are resized (not cropped) to ``size`` (the model's input size by default) one
    batch at a time, so a large collection never sits in memory at network resolution;
    ``batch_size`` defaults to :func:`default_batch_size`.
    """
    if pool not in POOLS:
        raise ValueError(f"unknown pooling {pool!r}; expected one of {POOLS}")
    layer = validate_layer(model, layer, spatial=False)
    n = len(images)
    if n == 0:
        raise ValueError("extract_features needs at least one image")
    chunks = _batches(n, batch_size or default_batch_size(model))
    out: list[torch.Tensor] = []
    for done, (i0, i1) in enumerate(chunks):
        check_cancel(cancel, "extracting features")
        x = model.preprocessing.batch(list(images[i0:i1]), size, device=model.device)
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            act = layer_output(model, x, layer)
            out.append(pool_features(act.float(), pool).cpu())
        if progress is not None:
            progress(done + 1, len(chunks), "features")
    feats = torch.cat(out)
    log.debug("features of %d images from %s: %s", n, layer, tuple(feats.shape))
    return feats


def pixel_features(images: Sequence[torch.Tensor], size: int = 32) -> torch.Tensor:
    """Images as downsampled pixel vectors ``[N, 3*size*size]``: the baseline that feature space must beat.

    Antialiased resizing to a small square keeps the colour layout and drops the detail, which is
    what "nearest in pixel space" means in Krizhevsky et al. (2012, figure 4).
    """
    if not images:
        raise ValueError("pixel_features needs at least one image")
    rows = []
    for img in images:
        small = F.interpolate(img.float().cpu()[None], size=(size, size), mode="bilinear", antialias=True,
                              align_corners=False)
        rows.append(small.flatten())
    return torch.stack(rows)
