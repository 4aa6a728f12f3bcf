"""Convolutions of a frozen CPU model with prepacked oneDNN weights, for input gradients.

On CPU, ``F.conv2d`` hands oneDNN a plain weight tensor, and oneDNN reorders it into its blocked
layout on *every* call, forward and backward. For the wide late layers of a CNN that reorder
costs about as much as the convolution itself (ResNet-18 layer4: 2.3 ms per 3x3 conv, 1.1 ms
with a prepacked weight). A served model's weights never change, so here each weight is packed
once, for the forward convolution and for the input-gradient convolution of the backward pass,
and kept while the weight lives (memory: about two extra copies of the conv weights).

:func:`conv2d` is called by a thread-local :class:`~torch.overrides.TorchFunctionMode` (the
rule mode of :mod:`.rules`, or :func:`packed_convolutions`) in place of ``torch.conv2d``; it
returns None wherever it does not apply (not CPU float32, weights or bias that require grad,
string padding, autocast, ...), and the caller then runs the ordinary convolution. The result
is a :class:`_PackedConv` node whose backward gives only the *input* gradient, which loses
nothing: a weight that does not require grad gets no gradient anyway. It is not twice
differentiable (``create_graph`` through it raises).

The input gradient of a stride-1 convolution is the forward convolution of the output gradient
with the flipped, transposed kernel; of a strided one, a transposed convolution. A strided
convolution with few input channels (the RGB stem, 7x7 stride 2 into 64 channels) is the slow
case of oneDNN's backward-data (about 5x its forward); its input gradient is computed as a
sub-pixel convolution instead: one stride-1 convolution producing all ``stride**2`` phases of
the input grid as channels, then ``pixel_shuffle``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable
from torch.overrides import TorchFunctionMode
from torch.utils.weak import WeakIdKeyDictionary

log = logging.getLogger(__name__)

_CL = torch.channels_last
# At most this many input channels use the sub-pixel input gradient of a strided convolution;
# wider ones are well served by oneDNN's transposed convolution.
SUBPIXEL_MAX_CHANNELS = 4

try:
    _MK: Any = torch.ops.mkldnn
    _AVAILABLE = bool(torch.backends.mkldnn.is_available()) and all(
        hasattr(_MK, op) for op in ("_convolution_pointwise", "_reorder_convolution_weight",
                                    "_convolution_transpose_pointwise", "_reorder_convolution_transpose_weight"))
except (AttributeError, RuntimeError):  # a build without oneDNN
    _MK, _AVAILABLE = None, False


def available() -> bool:
    """Whether this PyTorch build can run prepacked oneDNN convolutions."""
    return _AVAILABLE


def _pair(v: Any) -> tuple[int, int] | None:
    if isinstance(v, int):
        return (v, v)
    if isinstance(v, (tuple, list)) and len(v) == 2 and all(isinstance(i, int) for i in v):
        return (int(v[0]), int(v[1]))
    if isinstance(v, (tuple, list)) and len(v) == 1 and isinstance(v[0], int):
        return (int(v[0]), int(v[0]))
    return None


def _dense(t: torch.Tensor) -> bool:
    return t.is_contiguous() or t.is_contiguous(memory_format=_CL)


def _channels_last(t: torch.Tensor) -> bool:
    """aten's choice of output layout: channels-last when an operand is (and not also plain)."""
    return t.is_contiguous(memory_format=_CL) and not t.is_contiguous()


class _Packed:
    """One frozen weight in oneDNN's layout, forward and input-gradient (built at first backward)."""

    __slots__ = ("weight", "version", "ptr", "stride", "padding", "dilation", "groups", "fwd", "bwd", "kind", "lock")

    def __init__(self, weight: torch.Tensor, stride: tuple[int, int], padding: tuple[int, int],
                 dilation: tuple[int, int], groups: int) -> None:
        self.weight = weight.detach()  # holds the storage, so its address is not reused while this lives
        self.version = weight._version
        self.ptr = weight.data_ptr()
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        self.fwd = _MK._reorder_convolution_weight(self.weight.contiguous(memory_format=_CL), list(padding),
                                                   list(stride), list(dilation), groups, None)
        self.bwd: Any = None
        self.kind = ""
        self.lock = threading.Lock()

    def current(self, weight: torch.Tensor) -> bool:
        """Still the weight's values: no in-place change (version) and no ``.data =`` swap (address)."""
        return self.version == weight._version and self.ptr == weight.data_ptr()

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return _MK._convolution_pointwise(x, self.fwd, bias, list(self.padding), list(self.stride),
                                          list(self.dilation), self.groups, "none", [], "")

    # ------------------------------------------------------------------ backward (input gradient)

    def _build_backward(self) -> None:
        w = self.weight
        o, i_g, kh, kw = w.shape
        k = (kh, kw)
        (sh, sw), (ph, pw), d, g = self.stride, self.padding, self.dilation, self.groups
        if (sh, sw) == (1, 1) and d == (1, 1) and ph <= kh - 1 and pw <= kw - 1:
            # grad_in = conv(grad_out, flip(W^T)), padded by k-1-p; W^T per group.
            wt = w.view(g, o // g, i_g, kh, kw).transpose(1, 2).reshape(g * i_g, o // g, kh, kw).flip(-2, -1)
            pad = (kh - 1 - ph, kw - 1 - pw)
            self.bwd = (_MK._reorder_convolution_weight(wt.contiguous(memory_format=_CL), list(pad), [1, 1],
                                                        [1, 1], g, None), pad)
            self.kind = "flip"
        elif g == 1 and d == (1, 1) and sh == sw and i_g <= SUBPIXEL_MAX_CHANNELS:
            self.bwd = _subpixel_kernel(w, sh, k, (ph, pw))
            self.kind = "subpixel"
        else:
            self.bwd = {}  # packed per output padding, which depends on the input size
            self.kind = "transpose"

    def input_grad(self, grad: torch.Tensor, in_shape: torch.Size) -> torch.Tensor:
        """The gradient with respect to the convolution's input ``[N,C,H,W]`` (``in_shape``)."""
        if not self.kind:
            with self.lock:
                if not self.kind:
                    self._build_backward()
        if not _dense(grad):
            grad = grad.contiguous(memory_format=_CL)
        if self.kind == "flip":
            wt, pad = self.bwd
            return _MK._convolution_pointwise(grad, wt, None, list(pad), [1, 1], [1, 1], self.groups, "none", [], "")
        if self.kind == "subpixel":
            kern, taps, s = self.bwd
            h, w = in_shape[-2:]
            # Phase row u reads grad rows u+lo .. u+hi (zero outside): the convolution's own zero
            # padding P provides them, and phase row u is output row u + P + lo (no padded copy).
            start = []
            pad = []
            for j, n_in in enumerate((h, w)):
                lo, hi = taps[j]
                before, after = -lo, -(-n_in // s) + hi - grad.shape[-2 + j]
                pad.append(max(0, before, after))
                start.append(s * (pad[-1] - before))
            y = F.pixel_shuffle(F.conv2d(grad, kern, padding=tuple(pad)), s)
            return y[..., start[0]:start[0] + h, start[1]:start[1] + w]
        out_pad = tuple(in_shape[-2 + j] - ((grad.shape[-2 + j] - 1) * self.stride[j] - 2 * self.padding[j]
                                            + self.dilation[j] * (self.weight.shape[-2 + j] - 1) + 1)
                        for j in range(2))
        packed = self.bwd.get(out_pad)
        if packed is None:
            with self.lock:
                packed = self.bwd.get(out_pad)
                if packed is None:
                    packed = _MK._reorder_convolution_transpose_weight(
                        self.weight.contiguous(memory_format=_CL), list(self.padding), list(out_pad),
                        list(self.stride), list(self.dilation), self.groups, None)
                    self.bwd[out_pad] = packed
        return _MK._convolution_transpose_pointwise(grad, packed, None, list(self.padding), list(out_pad),
                                                    list(self.stride), list(self.dilation), self.groups, "none",
                                                    [], "")


def _subpixel_kernel(w: torch.Tensor, s: int, k: tuple[int, int],
                     p: tuple[int, int]) -> tuple[torch.Tensor, tuple[tuple[int, int], tuple[int, int]], int]:
    """Kernel and padding of the sub-pixel form of a stride-``s`` convolution's input gradient.

    With ``Y = s*u + q`` (phase ``q``), ``grad_in[c, Y] = sum_{o,d} W[o, c, q + p - s*d] grad[o, u + d]``:
    for each phase a stride-1 correlation over the taps ``d`` in ``[d_lo, d_hi]``. All phases of
    all input channels are the ``C*s*s`` output channels of one convolution (channel
    ``c*s*s + qy*s + qx``, the order ``pixel_shuffle`` reads). Returns the kernel, the tap
    ranges ``(d_lo, d_hi)`` per dimension, and ``s``.
    """
    o, c = w.shape[:2]
    taps = []
    for j in range(2):
        lo = -((k[j] - 1 - p[j]) // s)
        hi = (s - 1 + p[j]) // s
        taps.append((lo, hi))
    (ly, hy), (lx, hx) = taps
    ty, tx = hy - ly + 1, hx - lx + 1
    kern = w.new_zeros(c, s, s, o, ty, tx)
    for qy in range(s):
        for r in range(ty):
            ky = qy + p[0] - s * (ly + r)
            if not 0 <= ky < k[0]:
                continue
            for qx in range(s):
                for t in range(tx):
                    kx = qx + p[1] - s * (lx + t)
                    if 0 <= kx < k[1]:
                        kern[:, qy, qx, :, r, t] = w[:, :, ky, kx].t()
    return kern.reshape(c * s * s, o, ty, tx).contiguous(memory_format=_CL), ((ly, hy), (lx, hx)), s


class _PackedConv(torch.autograd.Function):
    """A prepacked convolution whose backward returns the input gradient only (the weights are frozen)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, packed: _Packed, bias: torch.Tensor | None,  # type: ignore[override]
                want_cl: bool) -> torch.Tensor:
        ctx.packed = packed
        ctx.in_shape = x.shape
        ctx.in_cl = _channels_last(x)
        out = packed.forward(x, bias)
        return out if want_cl or out.is_contiguous() else out.contiguous()

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:  # type: ignore[override]
        packed: _Packed = ctx.packed
        fmt = _CL if ctx.in_cl else torch.contiguous_format
        try:
            g = packed.input_grad(grad, ctx.in_shape)
        except RuntimeError as exc:  # a geometry oneDNN will not pack for the backward: aten's own
            log.debug("prepacked input gradient unavailable for weight %s: %s", tuple(packed.weight.shape), exc)
            shape_of_input = grad.new_empty(ctx.in_shape).contiguous(memory_format=fmt)
            g = torch.ops.aten.convolution_backward(
                grad, shape_of_input, packed.weight, None, list(packed.stride), list(packed.padding),
                list(packed.dilation), False, [0, 0], packed.groups, (True, False, False))[0]
        return g.contiguous(memory_format=fmt), None, None, None


# Keyed by the weight tensor's identity (a tensor's ``==`` is elementwise, so not a plain weak dict):
# an entry lives as long as the model's parameter does.
_CACHE: WeakIdKeyDictionary = WeakIdKeyDictionary()
_CACHE_LOCK = threading.Lock()
_FAILED: WeakIdKeyDictionary = WeakIdKeyDictionary()


def _packed(weight: torch.Tensor, stride: tuple[int, int], padding: tuple[int, int], dilation: tuple[int, int],
            groups: int) -> _Packed | None:
    key = (stride, padding, dilation, groups)
    table = _CACHE.get(weight)
    entry = table.get(key) if table is not None else None
    if entry is not None and entry.current(weight):
        return entry
    if weight in _FAILED:
        return None
    with _CACHE_LOCK:
        table = _CACHE.setdefault(weight, {})
        entry = table.get(key)
        if entry is None or not entry.current(weight):
            try:
                entry = _Packed(weight, stride, padding, dilation, groups)
            except RuntimeError as exc:  # a geometry oneDNN will not pack: the ordinary conv
                log.debug("no prepacked convolution for weight %s: %s", tuple(weight.shape), exc)
                _FAILED[weight] = True
                return None
            table[key] = entry
    return entry


def _autocast_cpu() -> bool:
    try:
        return bool(torch.is_autocast_enabled("cpu"))
    except TypeError:  # torch < 2.4
        return bool(torch.is_autocast_cpu_enabled())


def _conv_args(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
    defaults = (None, None, None, 1, 0, 1, 1)
    return tuple(args[i] if i < len(args) else kwargs.get(n, defaults[i]) for i, n in enumerate(names))


def conv2d(args: tuple[Any, ...], kwargs: dict[str, Any] | None) -> torch.Tensor | None:
    """``torch.conv2d(*args, **kwargs)`` with a prepacked frozen weight, or None where that does not apply."""
    if not _AVAILABLE:
        return None
    x, weight, bias, stride, padding, dilation, groups = _conv_args(args, kwargs or {})
    if not (isinstance(x, torch.Tensor) and isinstance(weight, torch.Tensor)) or x.dim() != 4 or weight.dim() != 4:
        return None
    if x.device.type != "cpu" or not isinstance(groups, int) or not x.dtype == weight.dtype == torch.float32:
        return None
    if _autocast_cpu():
        return None  # autocast lowers the conv to bf16/fp16 itself: leave it to do so
    if weight.requires_grad or (bias is not None and (not isinstance(bias, torch.Tensor) or bias.requires_grad
                                                      or bias.dtype != torch.float32)):
        return None
    st, pad, dil = _pair(stride), _pair(padding), _pair(dilation)
    if st is None or pad is None or dil is None or not _dense(x) or not _dense(weight):
        return None
    if type(x) is not torch.Tensor or not isinstance(weight, torch.nn.Parameter) or x.numel() == 0:
        # Tensor subclasses keep their own dispatch; a weight computed per call (weight
        # standardization) would be packed on every call, for nothing.
        return None
    entry = _packed(weight, st, pad, dil, groups)
    if entry is None:
        return None
    want_cl = _channels_last(x) or _channels_last(weight)
    if torch.is_grad_enabled() and x.requires_grad:
        return _PackedConv.apply(x, entry, bias, want_cl)
    out = entry.forward(x, bias)
    return out if want_cl or out.is_contiguous() else out.contiguous()


class _ConvMode(TorchFunctionMode):
    """Thread-local: ``torch.conv2d`` calls go to :func:`conv2d` where it applies."""

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        if func is torch.conv2d:
            out = conv2d(args, kwargs)
            if out is not None:
                return out
        return func(*args, **(kwargs or {}))


@contextmanager
def packed_convolutions() -> Iterator[None]:
    """Run the frozen CPU convolutions of forward passes in this thread with prepacked weights.

    For callers outside the rule context (which does this itself), e.g. the Grad-CAM half of
    guided Grad-CAM. Other threads are not affected; nothing is installed on any model.
    """
    if not _AVAILABLE:
        yield
        return
    with _ConvMode():
        yield
