"""The receptive field of a layer position, in input pixels, measured on the network itself.

Analytic formulas (kernel, stride, padding per layer) break on anything but a plain chain:
TensorFlow ``SAME`` padding is asymmetric and depends on the input size, residual branches and
squeeze-excite gates widen the field, and a module list says nothing about the order in which
``forward`` uses it. So the field is measured: backpropagate from one output position (all its
channels, with random positive weights) to the input and take the bounding box of the input
pixels with a non-zero gradient.

The plain gradient under-reports the field: a dead ReLU or a saturated ReLU6 passes no gradient,
and max pooling sends gradient to one input of each window only. The probe therefore runs under a
thread-local :class:`~torch.overrides.TorchFunctionMode` that turns every elementwise activation
into the identity and every max pool into an average pool over the same windows. The network is
then linear in the input apart from multiplicative gates, the input is random (so gates pass
gradient both ways), and a pixel has a zero gradient exactly when no path of the computation
graph connects it to the position: the structural receptive field. No weights are copied and the
shared model is untouched; other threads never see the mode.

Results are cached per model, layer, input size and position, so the boxes of top-activating
patches over a collection cost a handful of probes.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ..errors import EngineError
from ..models import LoadedModel, validate_layer
from .features import layer_output

log = logging.getLogger(__name__)

__all__ = ["ReceptiveField", "receptive_field", "receptive_field_size", "receptive_fields"]

Box = tuple[int, int, int, int]

# Elementwise activations that become the identity in the probe (their gradient can be zero).
_ACTIVATIONS: set[Any] = {
    F.relu, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_, F.relu6, F.hardtanh, F.hardtanh_,
    F.leaky_relu, F.leaky_relu_, F.elu, F.selu, F.celu, F.silu, F.hardswish, F.hardsigmoid, F.gelu, F.mish,
    F.softplus, F.threshold, F.rrelu, torch.sigmoid, torch.tanh, torch.Tensor.sigmoid, torch.Tensor.tanh,
}
_MAX_SIZE = 2048  # largest canvas tried when measuring the unclipped extent


@dataclass(frozen=True)
class ReceptiveField:
    """Where one layer position looks in the network input.

    ``box`` is ``(x0, y0, x1, y1)`` in input pixels, clipped to the image, with ``x1``/``y1``
    exclusive (``image[:, y0:y1, x0:x1]`` is the crop). ``size`` is the unclipped ``(h, w)``
    extent of the field, which positions near the border only partly see (None when not
    asked for: measuring it can take a probe on a canvas larger than the field).
    """

    box: Box
    size: tuple[int, int] | None = None

    def crop(self, image: torch.Tensor) -> torch.Tensor:
        """The field's crop of a ``[C,H,W]`` image at the input size the field was measured for."""
        x0, y0, x1, y1 = self.box
        return image[..., y0:y1, x0:x1]

    @property
    def clipped(self) -> bool | None:
        if self.size is None:
            return None
        return (self.box[3] - self.box[1], self.box[2] - self.box[0]) != self.size


class _LinearProbe(TorchFunctionMode):
    """Identity activations and average instead of max pooling, for this thread's forward passes."""

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func in _ACTIVATIONS and args:
            return args[0]
        if func in (F.max_pool2d, torch.max_pool2d) and args:
            return _avg_for_max(*args, **kwargs)
        if func is F.adaptive_max_pool2d and args:
            if kwargs.get("return_indices") or (len(args) > 2 and args[2]):
                return func(*args, **kwargs)
            return F.adaptive_avg_pool2d(args[0], kwargs.get("output_size", args[1] if len(args) > 1 else None))
        return func(*args, **kwargs)


def _avg_for_max(x: torch.Tensor, kernel_size: Any, stride: Any = None, padding: Any = 0, dilation: Any = 1,
                 ceil_mode: bool = False, return_indices: bool = False) -> Any:
    """An average pool over the max pool's windows: every window input gets gradient, not only the max."""
    dil = dilation if isinstance(dilation, (tuple, list)) else (dilation, dilation)
    if return_indices or any(d != 1 for d in dil):
        return F.max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode, return_indices)
    return F.avg_pool2d(x, kernel_size, stride if stride not in (None, []) else kernel_size, padding, ceil_mode,
                        count_include_pad=True)


# (layer, H, W) -> {(y, x): box}, per model module; and (layer) -> unclipped size.
_BOXES: weakref.WeakKeyDictionary[nn.Module, dict[tuple[str, int, int], dict[tuple[int, int], Box]]] = (
    weakref.WeakKeyDictionary())
_SIZES: weakref.WeakKeyDictionary[nn.Module, dict[str, tuple[int, int]]] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def _hw(model: LoadedModel, input_size: int | tuple[int, int] | None) -> tuple[int, int]:
    if input_size is None:
        s = model.preprocessing.input_size
        return s, s
    if isinstance(input_size, int):
        return input_size, input_size
    return int(input_size[0]), int(input_size[1])


def _probe(model: LoadedModel, layer: str, hw: tuple[int, int], positions: list[tuple[int, int]],
           seed: int = 0) -> list[Box]:
    """One batched linearized backward from each position; the bounding box of the non-zero input gradient."""
    gen = torch.Generator().manual_seed(seed)
    h, w = hw
    base = torch.randn(1, 3, h, w, generator=gen).to(model.device)
    x = base.expand(len(positions), -1, -1, -1).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(False), torch.enable_grad():
        x.requires_grad_(True)
        with _LinearProbe():
            out = layer_output(model, x, layer)
        if out.dim() != 4:
            raise EngineError("layer-not-spatial", f"layer {layer!r} has no spatial output to locate")
        gh, gw = out.shape[-2:]
        cot = torch.zeros_like(out)
        weights = (torch.rand(out.shape[1], generator=gen) + 0.5).to(device=out.device, dtype=out.dtype)
        for i, (py, px) in enumerate(positions):
            if not (0 <= py < gh and 0 <= px < gw):
                raise EngineError("bad-position", f"position ({py},{px}) is outside the {gh}x{gw} grid of {layer}")
            cot[i, :, py, px] = weights
        (grad,) = torch.autograd.grad(out, x, cot)
    mag = grad.detach().abs().sum(1)  # [P,H,W]
    if not torch.isfinite(mag).all():
        log.warning("receptive field probe of %s produced non-finite gradients; boxes may be too large", layer)
        mag = torch.nan_to_num(mag, nan=1.0, posinf=1.0)
    boxes: list[Box] = []
    for m in (mag > 0).cpu():
        rows = m.any(1).nonzero()
        cols = m.any(0).nonzero()
        if rows.numel() == 0:
            boxes.append((0, 0, 0, 0))  # no path at all (a constant layer): an empty field
            continue
        boxes.append((int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1))
    return boxes


def _extent_at(model: LoadedModel, layer: str, s: int) -> tuple[int, int] | None:
    """Unclipped ``(h, w)`` from the boxes of the first two and the last grid positions on an ``s`` canvas.

    On a translation-equivariant grid the field of position ``i`` spans ``[i*stride + offset,
    i*stride + offset + size)``: positions 0 and 1 give ``stride`` from their (unclipped) far ends,
    the last position gives ``offset`` from its (unclipped) near end. None if those ends are clipped.
    """
    gh, gw = layer_output_shape(model, layer, (s, s))
    if gh < 2 or gw < 2:
        return None
    b0, b1, bl = _boxes(model, layer, (s, s), [(0, 0), (1, 1), (gh - 1, gw - 1)])
    out = []
    for lo, hi, g in ((1, 3, gh), (0, 2, gw)):  # y uses box indices 1/3, x uses 0/2
        if b1[hi] >= s or bl[lo] <= 0:
            return None
        stride = b1[hi] - b0[hi]
        offset = bl[lo] - (g - 1) * stride
        out.append(b0[hi] - offset)
    return out[0], out[1]


def receptive_field_size(model: LoadedModel, layer: str) -> tuple[int, int]:
    """The unclipped ``(h, w)`` receptive field of ``layer``.

    Read from the boxes at the model's input size when the field fits (it then costs no extra
    probe), else on canvases doubled up to 2048 px; a field larger still is reported clipped.
    """
    layer = validate_layer(model, layer)
    with _LOCK:
        cached = _SIZES.get(model.module, {}).get(layer)
    if cached is not None:
        return cached
    s = model.preprocessing.input_size
    size = _extent_at(model, layer, s)
    while size is None and s * 2 <= _MAX_SIZE:
        s *= 2
        size = _extent_at(model, layer, s)
    if size is None:
        log.warning("receptive field of %s exceeds %d px or is not on a regular grid; reporting its clipped size",
                    layer, s)
        gh, gw = layer_output_shape(model, layer, (s, s))
        (x0, y0, x1, y1), = _boxes(model, layer, (s, s), [(gh // 2, gw // 2)])
        size = (y1 - y0, x1 - x0)
    with _LOCK:
        _SIZES.setdefault(model.module, {})[layer] = size
    return size


def layer_output_shape(model: LoadedModel, layer: str, hw: tuple[int, int]) -> tuple[int, int]:
    """The spatial ``(h, w)`` grid of ``layer`` for an ``hw`` input (one cheap forward, up to the layer)."""
    if hw == _hw(model, None):
        shape = model.layer(layer).output_shape
        if shape is not None and len(shape) == 3:
            return int(shape[1]), int(shape[2])
    with torch.inference_mode():
        out = layer_output(model, torch.zeros(1, 3, *hw, device=model.device), layer)
    if out.dim() != 4:
        raise EngineError("layer-not-spatial", f"layer {layer!r} has no spatial output to locate")
    return int(out.shape[-2]), int(out.shape[-1])


def _boxes(model: LoadedModel, layer: str, hw: tuple[int, int], positions: Sequence[tuple[int, int]],
           batch_size: int = 32) -> list[Box]:
    key = (layer, *hw)
    with _LOCK:
        known = dict(_BOXES.get(model.module, {}).get(key, {}))
    wanted = [(int(y), int(x)) for y, x in positions]
    missing = sorted({p for p in wanted if p not in known})
    for i in range(0, len(missing), batch_size):
        chunk = missing[i:i + batch_size]
        known.update(zip(chunk, _probe(model, layer, hw, chunk), strict=True))
    if missing:
        with _LOCK:
            _BOXES.setdefault(model.module, {}).setdefault(key, {}).update(known)
        log.debug("probed %d receptive fields of %s at %dx%d", len(missing), layer, *hw)
    return [known[p] for p in wanted]


def receptive_fields(model: LoadedModel, layer: str, positions: Sequence[tuple[int, int]],
                     input_size: int | tuple[int, int] | None = None, batch_size: int = 32,
                     with_size: bool = True) -> list[ReceptiveField]:
    """Receptive fields of several ``(y, x)`` positions of ``layer``'s grid, for an input of ``input_size``.

    Positions not yet cached are probed together, ``batch_size`` per backward pass. ``with_size``
    adds the unclipped extent (:func:`receptive_field_size`, cached per layer; for a deep layer
    whose field is larger than the image the first call probes a larger canvas, seconds on a CPU).
    """
    layer = validate_layer(model, layer)
    boxes = _boxes(model, layer, _hw(model, input_size), positions, batch_size)
    size = receptive_field_size(model, layer) if with_size else None
    return [ReceptiveField(b, size) for b in boxes]


def receptive_field(model: LoadedModel, layer: str, y: int, x: int,
                    input_size: int | tuple[int, int] | None = None, with_size: bool = True) -> ReceptiveField:
    """The receptive field of position ``(y, x)`` of ``layer`` (see :func:`receptive_fields`)."""
    return receptive_fields(model, layer, [(y, x)], input_size, with_size=with_size)[0]
