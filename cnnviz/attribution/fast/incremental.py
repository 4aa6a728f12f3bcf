"""Incremental occlusion: exact window drops without a full forward pass per window.

An occluded input differs from the original only inside one window, so in the early layers of a
CNN only that window's cone of influence changes (Krypton: Nakandala, Kumar & Papakonstantinou,
"Incremental and Approximate Inference for Faster Occlusion-based Deep CNN Explanations", SIGMOD
2019). :func:`occlusion_drops` runs the original image once and keeps its activations; for each
window it then computes, layer by layer, only the patch of each activation that the window can
change: the layer's input patch plus its receptive-field halo is read from the previous layer's
patch stitched into the original activation. Patches of many windows run as one batch. Once a
patch covers most of its map (:data:`FULL_AT`), the activations crossing that point are
materialized in full and the rest of the network runs as usual, batched.

The result is exact (the same numbers as occluding and running the whole network, up to float
rounding): every patch is recomputed from exactly the inputs the full forward would read, zero
padding included, and TF ``SAME`` padding is taken from the padding the layer really applies at
this input size. The network is traced with :mod:`torch.fx` (convolutions are leaves); the
patch stage understands 2-D convolutions (grouped, depthwise, strided, dilated, zero or ``SAME``
padding), eval-mode batch norm (folded into the convolution before it), element-wise activations
and element-wise sums/products of equal-shape maps: all EfficientNet-Lite and MobileNetV2 are
made of before their global pool. Anything else only moves the switch to full maps earlier (a
ResNet switches at its max-pool, a squeeze-excite network at its first channel scale); a model
that cannot be traced, or whose first operation is already unknown, gets ``None`` and the caller
keeps its full-forward sweep. A new plan is also checked once against the module itself on its
first and last windows; any disagreement disables it.

Where the time goes (Lite0, 224 px, 2-core CPU, 32 and 16 px windows): about 80 % in the full
stage. From 14x14 on every window changes every position; the 1x1 convolutions there are about
60 % of Lite0's multiply-adds and run close to the cores' peak in a full forward already, so they
cost the same per window here (~2.5-2.8 ms). The patch stage replaces the 112/56/28 px layers,
memory-bound and most of a full forward's time, with ~0.6-0.8 ms. A window costs about a fifth
of a batched full forward.
"""

from __future__ import annotations

import functools
import logging
import math
import operator
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from ...models.efficientnet_lite import SameConv2d
from ...progress import checkpoint
from .fxtrace import trace
from .windows import window_starts

log = logging.getLogger(__name__)

__all__ = ["CHUNK", "FULL_AT", "OcclusionPlan", "default_chunk", "occlusion_drops", "occlusion_plan",
           "supports_incremental"]

# A patch covering more than this fraction of its map is not worth cutting out: the network
# switches to full activations there. On EfficientNet-Lite0 at 224 px every value in 0.41..0.61
# gives the same plan (the switch at block 7's depthwise convolution, 14x14) for 32 and 16 px
# windows; 0.3 (a block earlier) and 0.9 (later, more stitching) measured 5-10 % slower.
FULL_AT = 0.45
# Windows per chunk (patch stage and full stage alike). Measured on Lite0 at 224 px, 2 threads:
# 12-14 is fastest; 8 leaves the 1x1 convolutions of the full stage short of work, and from 16 on
# glibc's malloc hands the chunk's larger buffers back to the OS and faults them in again
# (~300k page faults per 16/8 sweep at 16, none at 12; MALLOC_TRIM_THRESHOLD_ or another
# allocator at deployment avoids that for every path, full forwards included).
CHUNK = 12
# Index tensors kept per plan for reuse by later sweeps (int64 elements: 64 MB).
_CACHE_ELEMENTS = 8 << 20
# Plans kept per model (one per input size, window and stride asked for); the oldest goes first.
_PLANS_PER_MODEL = 16

_POINTWISE_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.GELU,
    nn.LeakyReLU, nn.ELU, nn.Mish, nn.Identity,
)
_DROPOUTS: tuple[type[nn.Module], ...] = (nn.Dropout, nn.Dropout2d, nn.AlphaDropout)
_POINTWISE_FUNCTIONS: set[Any] = {
    F.relu, torch.relu, F.relu6, F.hardtanh, F.silu, torch.sigmoid, F.sigmoid, torch.tanh, F.gelu, F.leaky_relu,
    F.elu, F.hardswish, F.hardsigmoid, F.mish, torch.clamp, torch.clip,
}
_ELEMENTWISE_FUNCTIONS: set[Any] = {
    operator.add, operator.sub, operator.mul, operator.truediv, torch.add, torch.sub, torch.mul,
}
_ELEMENTWISE_METHODS = {"add", "sub", "mul", "relu", "sigmoid", "tanh", "clamp", "clamp_min", "clamp_max",
                        "contiguous"}


class _Tracer(fx.Tracer):
    """Keeps every convolution a leaf: ``SameConv2d`` computes its padding from the input shape."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, nn.Conv2d) or super().is_leaf_module(m, module_qualified_name)


# --------------------------------------------------------------------------------------------
# Geometry: per window row (or column), the cells of a map a window can change
# --------------------------------------------------------------------------------------------

# Index tensors of one chunk of windows, by what reads them: ("region", id(request)) ->
# (gather, scatter, selection), ("cut", node) -> (scatter, selection), ("input", 0) -> (rows, rows, mask).
_Indices = dict[tuple[str, int], tuple[Any, ...]]


@dataclass(frozen=True)
class _Span:
    """One axis of a map for every window position along that axis.

    ``start``/``end`` ``[n]`` bound the cells the window can change (clipped to the map); the patch
    actually computed is ``length`` cells from ``off`` ``[n]``: one length for all windows so
    they batch, placed to contain the changed cells and kept inside the map.
    """

    size: int
    start: torch.Tensor
    end: torch.Tensor
    length: int
    off: torch.Tensor

    @staticmethod
    def of(size: int, start: torch.Tensor, end: torch.Tensor) -> _Span:
        start, end = start.clamp(0, size), end.clamp(0, size)
        length = min(size, max(1, int((end - start).max())))
        off = torch.minimum(start, torch.full_like(start, size - length))
        return _Span(size, start, end, length, off)

    def conv(self, size_out: int, k: int, s: int, d: int, pad: int) -> tuple[_Span, torch.Tensor, int]:
        """The output span of a convolution reading this one, and the input region it needs."""
        reach = (k - 1) * d
        start = torch.div(self.start + pad - reach + s - 1, s, rounding_mode="floor")
        end = torch.div(self.end - 1 + pad, s, rounding_mode="floor") + 1
        out = _Span.of(size_out, start, end)
        return out, out.off * s - pad, (out.length - 1) * s + reach + 1

    def union(self, other: _Span) -> _Span:
        return _Span.of(self.size, torch.minimum(self.start, other.start), torch.maximum(self.end, other.end))


def _conv_pads(m: nn.Conv2d, h: int, w: int) -> tuple[int, int, int, int] | None:
    """(top, bottom, left, right) zero padding the convolution applies to an ``h x w`` input, if known."""
    kh, kw = m.weight.shape[-2:]
    if isinstance(m, SameConv2d) and type(m).forward is SameConv2d.forward:
        sh, sw = m.stride
        ph = max((math.ceil(h / sh) - 1) * sh + kh - h, 0)
        pw = max((math.ceil(w / sw) - 1) * sw + kw - w, 0)
        return ph // 2, ph - ph // 2, pw // 2, pw - pw // 2
    if type(m).forward is not nn.Conv2d.forward or m.padding_mode != "zeros":
        return None
    if m.padding == "valid":
        return 0, 0, 0, 0
    if m.padding == "same":
        th, tw = m.dilation[0] * (kh - 1), m.dilation[1] * (kw - 1)
        return th // 2, th - th // 2, tw // 2, tw - tw // 2
    ph, pw = m.padding  # type: ignore[misc]
    return ph, ph, pw, pw


def _fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights and bias of ``bn(conv(x))`` as one convolution (eval mode: BN is per-channel affine)."""
    assert bn.running_mean is not None and bn.running_var is not None
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    bias = shift if conv.bias is None else conv.bias * scale + shift
    weight = (conv.weight * scale.view(-1, 1, 1, 1)).contiguous(memory_format=torch.channels_last)
    return weight.detach(), bias.detach()


def _is_eval_bn(m: nn.Module) -> bool:
    return (isinstance(m, nn.BatchNorm2d) and not m.training and m.running_mean is not None
            and m.running_var is not None)


# --------------------------------------------------------------------------------------------
# The plan: a traced graph split into a patch stage and a full stage
# --------------------------------------------------------------------------------------------

@dataclass
class _Conv:
    """A convolution with its batch norm folded in and its real zero padding."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    stride: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    pads: tuple[int, int, int, int]

    def full(self, x: torch.Tensor) -> torch.Tensor:
        t, b, left, r = self.pads
        if t == b and left == r:
            return F.conv2d(x, self.weight, self.bias, self.stride, (t, left), self.dilation, self.groups)
        # Asymmetric (TF SAME at stride 2): F.pad would zero the whole new buffer first; only the
        # border needs it, and the buffer stays channels_last.
        n, c, h, w = x.shape
        p = torch.empty((n, c, h + t + b, w + left + r), device=x.device, dtype=x.dtype,
                        memory_format=torch.channels_last)
        p[:, :, :t].zero_()
        p[:, :, t + h:].zero_()
        p[:, :, t:t + h, :left].zero_()
        p[:, :, t:t + h, left + w:].zero_()
        p[:, :, t:t + h, left:left + w].copy_(x)
        return F.conv2d(p, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)

    def valid(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


@dataclass(eq=False)
class _Request:
    """A region (per-window offsets, fixed size) of node ``src``'s activation that an op reads."""

    src: int
    y_off: torch.Tensor
    y_len: int
    x_off: torch.Tensor
    x_len: int


@dataclass
class _PatchOp:
    """One node of the patch stage: ``fn`` over patches (or stitched regions) of its inputs."""

    node: int
    fn: Callable[..., torch.Tensor]
    args: list[Any]  # ("patch", j) | ("region", request) | a constant
    kwargs: dict[str, Any]
    full: Callable[..., torch.Tensor] | None = None  # the op on whole maps, where it differs (padding)


@dataclass
class OcclusionPlan:
    """What :func:`occlusion_drops` needs for one (model, input size, window, stride).

    Built once and cached: the traced graph compiled into a patch stage (per-window spans of every
    node, the stitched regions each op reads) and a full stage (everything after the switch,
    batch norm folded into convolutions), plus per-chunk index tensors filled in on first use.
    """

    size: tuple[int, int]
    window: int
    stride: int
    ys: torch.Tensor
    xs: torch.Tensor
    spans: dict[int, tuple[_Span, _Span]]
    patch_ops: list[_PatchOp]
    cut_nodes: list[int]  # patch-stage nodes read by the full stage: materialized at the switch
    full_ops: list[tuple[int, Callable[..., Any], tuple[Any, ...], dict[str, Any]]]
    n_nodes: int
    output: Any
    requests: list[_Request]
    margins: dict[int, int]
    full_from: int  # first node of the full stage
    keep: set[int]  # nodes whose original activation the patch stage reads
    names: list[str]  # of the traced nodes, for describe()
    fractions: dict[int, float] = field(default_factory=dict)
    relative_cost: float = 1.0  # convolution multiply-adds per window, as a fraction of a full forward's
    # Values dropped right after the patch op / full op that reads them last: a chunk then holds a
    # forward's working set, not every activation of every window in it (which the C allocator
    # would hand back to the OS at the chunk's end and fault in again for the next chunk).
    free_patch: list[list[int]] = field(default_factory=list)
    free_full: list[list[int]] = field(default_factory=list)
    verified: bool = False
    broken: bool = False
    _chunks: dict[tuple[int, int, int], _Indices] = field(default_factory=dict)
    _cached: int = 0  # index elements held in _chunks

    @property
    def n_windows(self) -> int:
        return len(self.ys) * len(self.xs)

    def describe(self) -> str:
        """Where the switch to full maps falls and how big the patches were (for logs and tuning)."""
        last = self.patch_ops[-1].node
        return (f"{len(self.patch_ops)} patch ops up to {self.names[last]} (patch {self.fractions[last]:.0%} of its "
                f"map), full maps from {self.names[self.full_from]}; conv work per window "
                f"{self.relative_cost:.0%} of a forward")

    def indices(self, n: int, s: int, e: int, device: torch.device) -> _Indices:
        """The index tensors of rows ``s:e`` of an ``n``-image sweep, cached while they stay small."""
        idx = self._chunks.get((n, s, e))
        if idx is None:
            r = torch.arange(s, e, device=device)
            idx = _chunk_indices(self, r // self.n_windows, r % self.n_windows)
            size = sum(t.numel() for v in idx.values() for t in v if isinstance(t, torch.Tensor))
            if self._cached + size <= _CACHE_ELEMENTS:
                self._chunks[(n, s, e)] = idx
                self._cached += size
        return idx


def _run_node(node: fx.Node, env: list[Any], index: dict[fx.Node, int], gm: fx.GraphModule) -> Any:
    args = fx.node.map_arg(node.args, lambda n: env[index[n]])
    kwargs = fx.node.map_arg(node.kwargs, lambda n: env[index[n]])
    if node.op == "call_module":
        return gm.get_submodule(str(node.target))(*args, **kwargs)
    if node.op == "call_function":
        return node.target(*args, **kwargs)  # type: ignore[operator]
    if node.op == "call_method":
        self_obj, *rest = args
        return getattr(self_obj, str(node.target))(*rest, **kwargs)
    if node.op == "get_attr":
        obj: Any = gm
        for part in str(node.target).split("."):
            obj = getattr(obj, part)
        return obj
    raise RuntimeError(f"unexpected fx node {node.op}")


_TRACES: weakref.WeakKeyDictionary[nn.Module, fx.GraphModule | None] = weakref.WeakKeyDictionary()
_PLANS: weakref.WeakKeyDictionary[nn.Module, dict[tuple[Any, ...], OcclusionPlan | None]] = (
    weakref.WeakKeyDictionary())
_LOCK = threading.Lock()


def _trace(module: nn.Module) -> fx.GraphModule | None:
    with _LOCK:
        if module in _TRACES:
            return _TRACES[module]
    try:
        graph = trace(_Tracer(), module)
        gm: fx.GraphModule | None = fx.GraphModule(module, graph)
    except Exception as exc:  # noqa: BLE001 - any model fx cannot trace keeps the full-forward path
        log.info("incremental occlusion: cannot trace %s (%s); full forwards", type(module).__name__, exc)
        gm = None
    with _LOCK:
        _TRACES[module] = gm
    return gm


def default_chunk(x: torch.Tensor) -> int:
    """Windows per chunk when the client does not say: :data:`CHUNK` on a CPU, more on a GPU (untuned)."""
    return 64 if x.device.type == "cuda" else CHUNK


def supports_incremental(module: nn.Module) -> bool:
    """Whether ``module`` traces, takes one input and starts with a convolution or activation module.

    Cheap after the first call (the trace is cached), for capability checks and cost estimates. A
    True here can still end in ``None`` from :func:`occlusion_drops`: at a size where no patch is
    smaller than :data:`FULL_AT` of its map, or where a convolution pads in a way it does not know.
    """
    gm = _trace(module)
    if gm is None:
        return False
    nodes = list(gm.graph.nodes)
    if len(nodes) < 2 or nodes[0].op != "placeholder" or nodes[1].op != "call_module":
        return False
    if any(n.op == "placeholder" for n in nodes[1:]):
        return False
    first = gm.get_submodule(str(nodes[1].target))
    return isinstance(first, (nn.Conv2d, *_POINTWISE_MODULES))


def occlusion_plan(module: nn.Module, size: tuple[int, int], window: int, stride: int, channels: int = 3,
                   device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                   full_at: float = FULL_AT) -> OcclusionPlan | None:
    """The cached plan for this model, input size ``(H, W)``, square window and stride; None if unsupported."""
    key = (tuple(size), window, stride, channels, str(device), dtype, full_at)
    with _LOCK:
        cached = _PLANS.get(module, {})
        if key in cached:
            return cached[key]
    gm = _trace(module)
    plan = None
    if gm is not None:
        try:
            plan = _build(gm, size, window, stride, channels, torch.device(device), dtype, full_at)
        except _Unsupported as exc:
            log.info("incremental occlusion unsupported for %s: %s; full forwards", type(module).__name__, exc)
        except Exception:  # noqa: BLE001 - a graph this code misreads must cost speed, not the request
            log.warning("incremental occlusion: no plan for %s; full forwards", type(module).__name__, exc_info=True)
    with _LOCK:
        plans = _PLANS.setdefault(module, {})
        plans[key] = plan
        while len(plans) > _PLANS_PER_MODEL:
            del plans[next(iter(plans))]
    return plan


class _Unsupported(Exception):
    """The model (or this size) has nothing the patch stage can do: keep the full-forward sweep."""


def _build(gm: fx.GraphModule, size: tuple[int, int], window: int, stride: int, channels: int,
           device: torch.device, dtype: torch.dtype, full_at: float) -> OcclusionPlan:

    h, w = size
    nodes = list(gm.graph.nodes)
    index = {n: i for i, n in enumerate(nodes)}
    placeholders = [n for n in nodes if n.op == "placeholder"]
    if len(placeholders) != 1 or nodes[0] is not placeholders[0]:
        raise _Unsupported("the model takes more than one input")
    outputs = [n for n in nodes if n.op == "output"]

    # Shapes of every node at this size (one forward of a zero image).
    shapes: list[torch.Size | None] = [None] * len(nodes)
    env: list[Any] = [None] * len(nodes)
    with torch.no_grad():
        env[0] = torch.zeros(1, channels, h, w, device=device, dtype=dtype).contiguous(
            memory_format=torch.channels_last)
        for i, node in enumerate(nodes[1:], 1):
            if node.op == "output":
                continue
            env[i] = _run_node(node, env, index, gm)
            if isinstance(env[i], torch.Tensor):
                shapes[i] = env[i].shape
    shapes[0] = env[0].shape
    in_shapes = {i: [shapes[index[a]] for a in n.all_input_nodes] for i, n in enumerate(nodes)}
    del env

    # Batch norms that only read a convolution used by nothing else fold into it.
    folded: dict[int, int] = {}  # bn node -> conv node
    for i, node in enumerate(nodes):
        if node.op == "call_module" and _is_eval_bn(gm.get_submodule(str(node.target))):
            srcs = node.all_input_nodes
            if (len(srcs) == 1 and srcs[0].op == "call_module" and len(srcs[0].users) == 1 and not node.kwargs
                    and len(node.args) == 1 and isinstance(gm.get_submodule(str(srcs[0].target)), nn.Conv2d)):
                folded[i] = index[srcs[0]]
    convs: dict[int, _Conv] = {}
    for i, node in enumerate(nodes):
        if node.op != "call_module" or len(node.args) != 1 or node.kwargs:
            continue
        m = gm.get_submodule(str(node.target))
        shape = in_shapes[i][0] if in_shapes[i] else None
        if not isinstance(m, nn.Conv2d) or shape is None or len(shape) != 4:
            continue
        pads = _conv_pads(m, shape[2], shape[3])
        if pads is None:
            continue
        bn_node = next((b for b, c in folded.items() if c == i), None)
        if bn_node is not None:
            weight, bias = _fold_bn(m, gm.get_submodule(str(nodes[bn_node].target)))
        else:
            weight = m.weight.detach().contiguous(memory_format=torch.channels_last)
            bias = None if m.bias is None else m.bias.detach()
        convs[i] = _Conv(weight.to(device, dtype), None if bias is None else bias.to(device, dtype),
                         tuple(m.stride), tuple(m.dilation), m.groups, pads)  # type: ignore[arg-type]
    folded = {b: c for b, c in folded.items() if c in convs}
    # An activation right after a convolution (or its folded batch norm) that nothing else reads
    # can overwrite it: one pass over memory less per layer, and no new buffer.
    inplace: dict[int, Callable[[torch.Tensor], torch.Tensor]] = {}
    for i, node in enumerate(nodes):
        fn = _inplace_of(gm.get_submodule(str(node.target))) if node.op == "call_module" else None
        src = node.all_input_nodes
        if (fn is not None and len(node.args) == 1 and not node.kwargs and len(src) == 1
                and (index[src[0]] in convs or index[src[0]] in folded) and len(src[0].users) == 1):
            inplace[i] = fn
        # A residual sum can land in the convolution output it adds to, likewise.
        if (node.op == "call_function" and node.target in (operator.add, torch.add) and len(node.args) == 2
                and not node.kwargs and all(isinstance(a, fx.Node) for a in node.args)):
            a0 = node.args[0]
            assert isinstance(a0, fx.Node)
            if ((index[a0] in convs or index[a0] in folded) and len(a0.users) == 1 and a0 is not node.args[1]
                    and shapes[index[a0]] == shapes[i]):
                inplace[i] = torch.Tensor.add_

    # Patch stage: the longest prefix of nodes the patch rules cover, while patches stay small.
    ys, xs = window_starts(h, window, stride), window_starts(w, window, stride)
    spans: dict[int, tuple[_Span, _Span]] = {
        0: (_Span.of(h, ys, ys + window), _Span.of(w, xs, xs + window))}
    patch_ops: list[_PatchOp] = []
    requests: list[_Request] = []
    pending: list[_Request] = []  # stitches of the op being looked at, kept if it joins the patch stage
    fractions: dict[int, float] = {}
    full_from = len(nodes)

    def spatial(i: int) -> bool:
        s = shapes[i]
        return s is not None and len(s) == 4

    def region(j: int, sy: _Span, sx: _Span, y_off: torch.Tensor | None = None, y_len: int = 0,
               x_off: torch.Tensor | None = None, x_len: int = 0) -> tuple[str, Any]:
        """Read node j over a region: its own patch when the region is exactly that, else a stitch."""
        jy, jx = spans[j]
        if y_off is None:
            y_off, y_len, x_off, x_len = sy.off, sy.length, sx.off, sx.length
        assert x_off is not None
        if jy.length == y_len and jx.length == x_len and torch.equal(jy.off, y_off) and torch.equal(jx.off, x_off):
            return ("patch", j)
        req = _Request(j, y_off, y_len, x_off, x_len)
        pending.append(req)
        return ("region", req)

    for i, node in enumerate(nodes[1:], 1):
        pending.clear()
        if node.op == "output" or not spatial(i):
            full_from = i
            break
        ins = [index[a] for a in node.all_input_nodes]
        if any(j not in spans for j in ins) or not ins:
            full_from = i
            break
        op: _PatchOp | None = None
        out: tuple[_Span, _Span] | None = None
        target = gm.get_submodule(str(node.target)) if node.op == "call_module" else None
        if i in convs:
            (j,) = ins
            c = convs[i]
            t, _, left, _ = c.pads
            k = c.weight.shape[-2:]
            jy, jx = spans[j]
            oy, ry, ly = jy.conv(shapes[i][2], k[0], c.stride[0], c.dilation[0], t)  # type: ignore[index]
            ox, rx, lx = jx.conv(shapes[i][3], k[1], c.stride[1], c.dilation[1], left)  # type: ignore[index]
            out = (oy, ox)
            op = _PatchOp(i, c.valid, [region(j, oy, ox, ry, ly, rx, lx)], {}, c.full)
        elif i in folded:
            out = spans[folded[i]]
            op = _PatchOp(i, _identity, [("patch", folded[i])], {})
        elif target is not None and (not getattr(target, "inplace", False) or _sole_reader(node)) and (
                isinstance(target, _POINTWISE_MODULES) or _is_eval_bn(target)
                or (isinstance(target, _DROPOUTS) and not target.training)):
            # (a module's own in-place update of a value something else reads would change what the
            # stitches take for originals)
            (j,) = ins
            out = spans[j]
            op = _PatchOp(i, inplace.get(i, target), [("patch", j)], {}, target)
        elif _elementwise(node):
            writes = bool(node.kwargs.get("inplace")) or any(a is True for a in node.args)
            if (any(shapes[j] != shapes[i] for j in ins) or _has_node(node.kwargs)
                    or (writes and not _sole_reader(node))
                    or any(not isinstance(a, fx.Node) and _has_node(a) for a in node.args)):
                full_from = i  # broadcasting (squeeze-excite scales, ...) mixes in global values
                break
            sy, sx = spans[ins[0]]
            for j in ins[1:]:
                sy, sx = sy.union(spans[j][0]), sx.union(spans[j][1])
            out = (sy, sx)
            args = [region(index[a], sy, sx) if isinstance(a, fx.Node) else a for a in node.args]
            fn = node.target if node.op == "call_function" else _method(str(node.target))
            op = _PatchOp(i, inplace.get(i, fn), args, dict(node.kwargs), fn)  # type: ignore[arg-type]
        if op is None or out is None:
            full_from = i
            break
        frac = out[0].length * out[1].length / (out[0].size * out[1].size)
        if frac > full_at:
            full_from = i
            break
        fractions[i] = frac
        spans[i] = out
        patch_ops.append(op)
        requests.extend(pending)
    patch_nodes = {0} | {op.node for op in patch_ops}
    if not patch_ops:
        raise _Unsupported(f"the first operation ({nodes[1].op} {nodes[1].target}) has no patch rule")

    # Full stage: everything from full_from on, with folded batch norms.
    full_ops: list[tuple[int, Callable[..., Any], tuple[Any, ...], dict[str, Any]]] = []
    cut_nodes: set[int] = set()
    for i in range(full_from, len(nodes)):
        node = nodes[i]
        if node.op == "output":
            continue
        for a in node.all_input_nodes:
            if index[a] in patch_nodes:
                cut_nodes.add(index[a])
        args = fx.node.map_arg(node.args, lambda n: _Ref(index[n]))
        kwargs = fx.node.map_arg(node.kwargs, lambda n: _Ref(index[n]))
        if i in convs:
            full_ops.append((i, convs[i].full, args, kwargs))
        elif i in folded:
            full_ops.append((i, _identity, (_Ref(folded[i]),), {}))
        elif node.op == "call_module":
            m = gm.get_submodule(str(node.target))
            if isinstance(m, _DROPOUTS) and not m.training and not kwargs:
                full_ops.append((i, _identity, args, {}))
            else:
                full_ops.append((i, inplace.get(i, m), args, kwargs))
        elif node.op == "call_function":
            full_ops.append((i, inplace.get(i, node.target), args, kwargs))  # type: ignore[arg-type]
        elif node.op == "call_method":
            full_ops.append((i, _method(str(node.target)), args, kwargs))
        else:
            value = _run_node(node, [None] * len(nodes), index, gm)
            full_ops.append((i, _constant(value), (), {}))
    (out_node,) = outputs
    output = fx.node.map_arg(out_node.args[0], lambda n: _Ref(index[n]))
    if any(index[a] in patch_nodes for a in out_node.all_input_nodes):
        raise _Unsupported("the output is a spatial map of the patch stage")

    margins: dict[int, int] = {0: 0}  # the input's rows are always read (the input patch)
    for r in requests:
        sy, sx = spans[r.src]
        lo = max(0, -int(r.y_off.min()), -int(r.x_off.min()))
        hi = max(0, int(r.y_off.max()) + r.y_len - sy.size, int(r.x_off.max()) + r.x_len - sx.size)
        margins[r.src] = max(margins.get(r.src, 0), lo, hi)
    keep = {r.src for r in requests} | cut_nodes | {0}
    last_patch: dict[int, int] = {}
    for p, op in enumerate(patch_ops):
        for a in op.args:
            if isinstance(a, tuple) and a and a[0] == "patch":
                last_patch[a[1]] = p
            elif isinstance(a, tuple) and a and a[0] == "region":
                last_patch[a[1].src] = p
    free_patch: list[list[int]] = [[] for _ in patch_ops]
    for j, p in last_patch.items():
        if j not in cut_nodes:
            free_patch[p].append(j)
    last_full: dict[int, int] = {}
    for q, (_, _, args, kwargs) in enumerate(full_ops):
        for j in _refs((args, kwargs)):
            last_full[j] = q
    free_full: list[list[int]] = [[] for _ in full_ops]
    for j, q in last_full.items():
        if j not in _refs(output):
            free_full[q].append(j)
    full_macs = incremental_macs = 0.0
    for i, c in convs.items():
        per_cell = c.weight[0].numel() * c.weight.shape[0]
        cells = shapes[i][2] * shapes[i][3]  # type: ignore[index]
        full_macs += per_cell * cells
        incremental_macs += per_cell * (spans[i][0].length * spans[i][1].length if i in spans else cells)
    log.debug("incremental occlusion plan for %s at %dx%d, window %d stride %d: %d patch ops, full from %s",
              type(gm).__name__, h, w, window, stride, len(patch_ops), nodes[full_from].name)
    return OcclusionPlan((h, w), window, stride, ys, xs, spans, patch_ops, sorted(cut_nodes), full_ops, len(nodes),
                         output, requests, margins, full_from, keep, [n.name for n in nodes], fractions,
                         incremental_macs / max(full_macs, 1.0), free_patch, free_full)


def _inplace_of(m: nn.Module) -> Callable[[torch.Tensor], torch.Tensor] | None:
    if isinstance(m, nn.Hardtanh):  # ReLU6 too
        return functools.partial(F.hardtanh_, min_val=m.min_val, max_val=m.max_val)
    if isinstance(m, nn.ReLU):
        return torch.relu_
    return None


def _sole_reader(node: fx.Node) -> bool:
    """Whether ``node`` is the only reader of each of its inputs (and none is the network input)."""
    return all(len(a.users) == 1 and a.op != "placeholder" for a in node.all_input_nodes)


def _elementwise(node: fx.Node) -> bool:
    if node.op == "call_function":
        return node.target in _POINTWISE_FUNCTIONS or node.target in _ELEMENTWISE_FUNCTIONS
    return node.op == "call_method" and node.target in _ELEMENTWISE_METHODS


def _has_node(obj: Any) -> bool:
    found = []
    fx.node.map_arg(obj, lambda n: found.append(n))
    return bool(found)


def _refs(obj: Any) -> set[int]:
    """Nodes a full-stage argument structure reads."""
    if isinstance(obj, _Ref):
        return {obj.i}
    if isinstance(obj, (tuple, list)):
        return set().union(*(_refs(o) for o in obj)) if obj else set()
    if isinstance(obj, dict):
        return _refs(list(obj.values()))
    return set()


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _method(name: str) -> Callable[..., Any]:
    def call(self_obj: Any, *args: Any, **kwargs: Any) -> Any:
        return getattr(self_obj, name)(*args, **kwargs)

    return call


def _constant(value: Any) -> Callable[[], Any]:
    return lambda: value


@dataclass(frozen=True)
class _Ref:
    """A full-stage argument that is node ``i``'s value."""

    i: int


# --------------------------------------------------------------------------------------------
# Running a plan
# --------------------------------------------------------------------------------------------

def _resolve(obj: Any, env: list[Any]) -> Any:
    if isinstance(obj, _Ref):
        return env[obj.i]
    if isinstance(obj, tuple):
        return tuple(_resolve(o, env) for o in obj)
    if isinstance(obj, list):
        return [_resolve(o, env) for o in obj]
    if isinstance(obj, dict):
        return {k: _resolve(v, env) for k, v in obj.items()}
    return obj


@dataclass
class _Originals:
    """The original images' activations, as the patch stage reads them (NHWC rows, zero margins)."""

    padded: dict[int, torch.Tensor]  # node -> [N*(H+2M)*(W+2M), C]
    full: dict[int, torch.Tensor]  # node -> [N, H*W*C] (for materializing at the switch)
    fill: torch.Tensor  # [N*H*W, 3] the fill, NHWC rows


def _nhwc(t: torch.Tensor) -> torch.Tensor:
    return t.permute(0, 2, 3, 1).contiguous()


def _originals(plan: OcclusionPlan, x: torch.Tensor, fill: torch.Tensor) -> _Originals:
    env: list[Any] = [None] * plan.n_nodes
    env[0] = x.contiguous(memory_format=torch.channels_last)
    padded: dict[int, torch.Tensor] = {}
    full: dict[int, torch.Tensor] = {}

    def keep(i: int) -> None:
        a = _nhwc(env[i])
        n, _, _, c = a.shape
        m = plan.margins.get(i)
        if m is not None:
            padded[i] = (F.pad(a, (0, 0, m, m, m, m)) if m else a.clone()).reshape(-1, c)
        if i in plan.cut_nodes:
            full[i] = a.reshape(n, -1).clone()

    keep(0)
    # The patch stage's nodes run in full once, with the same (folded) ops as the patches; what
    # the stitches read is copied out as soon as it exists.
    for op in plan.patch_ops:
        args = [env[a[1].src] if isinstance(a, tuple) and a and a[0] == "region" else
                env[a[1]] if isinstance(a, tuple) and a and a[0] == "patch" else a for a in op.args]
        env[op.node] = (op.full or op.fn)(*args, **op.kwargs)
        if op.node in plan.keep:
            keep(op.node)
    return _Originals(padded, full, _nhwc(fill).reshape(-1, fill.shape[1]))


def _chunk_indices(plan: OcclusionPlan, img: torch.Tensor, k: torch.Tensor) -> _Indices:
    """Index tensors of one chunk of windows: gathers and scatters of every stitch, the input mask."""
    dev = img.device
    nx = len(plan.xs)
    iy, ix = k // nx, k % nx
    b = img.shape[0]
    out: _Indices = {}

    def scatter(src: int, y_off: torch.Tensor, y_len: int, x_off: torch.Tensor, x_len: int) -> tuple[Any, Any]:
        sy, sx = plan.spans[src]
        ry = (sy.off.to(dev)[iy] - y_off[iy])[:, None] + torch.arange(sy.length, device=dev)  # [B,Ly]
        rx = (sx.off.to(dev)[ix] - x_off[ix])[:, None] + torch.arange(sx.length, device=dev)  # [B,Lx]
        vy, vx = (ry >= 0) & (ry < y_len), (rx >= 0) & (rx < x_len)
        base = torch.arange(b, device=dev)[:, None, None] * (y_len * x_len)
        dst = (base + ry[:, :, None] * x_len + rx[:, None, :]).flatten()
        if bool(vy.all()) and bool(vx.all()):
            return dst, None
        valid = (vy[:, :, None] & vx[:, None, :]).flatten()
        return dst[valid], valid.nonzero()[:, 0]

    for r in plan.requests:
        sy, _ = plan.spans[r.src]
        sx = plan.spans[r.src][1]
        m = plan.margins[r.src]
        hp, wp = sy.size + 2 * m, sx.size + 2 * m
        y_off, x_off = r.y_off.to(dev), r.x_off.to(dev)
        rows = (y_off[iy] + m)[:, None] + torch.arange(r.y_len, device=dev)  # [B,h]
        cols = (x_off[ix] + m)[:, None] + torch.arange(r.x_len, device=dev)  # [B,w]
        gather = (img[:, None, None] * (hp * wp) + rows[:, :, None] * wp + cols[:, None, :]).flatten()
        out[("region", id(r))] = (gather, *scatter(r.src, y_off, r.y_len, x_off, r.x_len))
    for c in plan.cut_nodes:
        sy, sx = plan.spans[c]
        zero = torch.zeros_like(sy.off).to(dev)
        out[("cut", c)] = scatter(c, zero, sy.size, torch.zeros_like(sx.off).to(dev), sx.size)
    # The input patch: the window's cells come from the fill, the rest of the patch from x.
    sy, sx = plan.spans[0]
    ys0, ye = sy.start.to(dev)[iy], sy.end.to(dev)[iy]
    xs0, xe = sx.start.to(dev)[ix], sx.end.to(dev)[ix]
    rows = sy.off.to(dev)[iy][:, None] + torch.arange(sy.length, device=dev)
    cols = sx.off.to(dev)[ix][:, None] + torch.arange(sx.length, device=dev)
    inside = (((rows >= ys0[:, None]) & (rows < ye[:, None]))[:, :, None]
              & ((cols >= xs0[:, None]) & (cols < xe[:, None]))[:, None, :])
    m = plan.margins.get(0, 0)
    hp, wp = sy.size + 2 * m, sx.size + 2 * m
    x_rows = (img[:, None, None] * (hp * wp) + (rows[:, :, None] + m) * wp + cols[:, None, :] + m).flatten()
    f_rows = (img[:, None, None] * (sy.size * sx.size) + rows[:, :, None] * sx.size + cols[:, None, :]).flatten()
    out[("input", 0)] = (x_rows, f_rows, inside.flatten()[:, None])
    return out


def _stitch(orig: torch.Tensor, gather: torch.Tensor, dst: torch.Tensor, sel: torch.Tensor | None,
            patch: torch.Tensor, b: int, h: int, w: int) -> torch.Tensor:
    """The region ``[B,C,h,w]``: original rows ``gather`` with the patch's rows written over them."""
    c = orig.shape[1]
    out = orig.index_select(0, gather)
    rows = patch.permute(0, 2, 3, 1).reshape(-1, c)
    out.index_copy_(0, dst, rows if sel is None else rows.index_select(0, sel))
    return out.view(b, h, w, c).permute(0, 3, 1, 2)


def _run_chunk(plan: OcclusionPlan, orig: _Originals, img: torch.Tensor, idx: _Indices
               ) -> torch.Tensor:
    b = img.shape[0]
    patches: dict[int, torch.Tensor] = {}
    x_rows, f_rows, inside = idx[("input", 0)]
    sy, sx = plan.spans[0]
    c0 = orig.fill.shape[1]
    patch0 = torch.where(inside, orig.fill.index_select(0, f_rows), orig.padded[0].index_select(0, x_rows))
    patches[0] = patch0.view(b, sy.length, sx.length, c0).permute(0, 3, 1, 2)
    for op, dead in zip(plan.patch_ops, plan.free_patch, strict=True):
        args = []
        for a in op.args:
            if isinstance(a, tuple) and a and a[0] == "patch":
                args.append(patches[a[1]])
            elif isinstance(a, tuple) and a and a[0] == "region":
                r: _Request = a[1]
                gather, dst, sel = idx[("region", id(r))]
                args.append(_stitch(orig.padded[r.src], gather, dst, sel, patches[r.src], b, r.y_len, r.x_len))
            else:
                args.append(a)
        patches[op.node] = op.fn(*args, **op.kwargs)
        del args
        for j in dead:
            del patches[j]
    env: list[Any] = [None] * plan.n_nodes
    for cnode in plan.cut_nodes:
        sy, sx = plan.spans[cnode]
        full = orig.full[cnode]
        c = full.shape[1] // (sy.size * sx.size)
        dst, sel = idx[("cut", cnode)]
        out = full.index_select(0, img).view(-1, c)
        rows = patches[cnode].permute(0, 2, 3, 1).reshape(-1, c)
        out.index_copy_(0, dst, rows if sel is None else rows.index_select(0, sel))
        env[cnode] = out.view(b, sy.size, sx.size, c).permute(0, 3, 1, 2)
    patches.clear()
    for (i, fn, args, kwargs), dead in zip(plan.full_ops, plan.free_full, strict=True):
        env[i] = fn(*_resolve(args, env), **_resolve(kwargs, env))
        for j in dead:
            env[j] = None
    return _resolve(plan.output, env)


def occlusion_drops(module: nn.Module, x: torch.Tensor, fill: torch.Tensor, window: int, stride: int,
                    pick: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], base: torch.Tensor,
                    batch: int = CHUNK, full_at: float = FULL_AT, window_work: float = 0.0) -> torch.Tensor | None:
    """Score drops ``[N, K, T]`` of every (image, window), or None where the patch stage cannot help.

    The same numbers as :meth:`Occlusion.sweep`'s ``drops`` (up to float rounding): ``drops[i, k]``
    is ``base[i] - pick(module(x_ik), i)`` where ``x_ik`` is image ``i`` with the ``window x
    window`` square at window ``k`` replaced by ``fill[i]``; windows are row-major over
    ``window_starts(H, window, stride)`` x ``window_starts(W, ...)``, edge windows clipped.

    ``module`` maps ``[B,C,H,W]`` to ``[B,classes]`` (eval mode, frozen); ``x`` and ``fill`` are
    ``[N,C,H,W]`` on the module's device; ``pick(out, img)`` turns outputs ``[B,classes]`` of rows
    belonging to images ``img`` ``[B]`` into target scores ``[B,T]`` and ``base`` ``[N,T]`` holds
    the originals' scores. ``batch`` windows run per chunk; each chunk reports ``window_work`` per
    window to :func:`cnnviz.progress.checkpoint` (progress, and where a cancel stops the sweep).
    None (nothing computed) when the model cannot be traced, its first operation has no patch
    rule, or no patch is smaller than ``full_at`` of its map: the caller then runs its
    full-forward sweep.
    """
    n, c, h, w = x.shape
    window = min(window, h, w)
    plan = occlusion_plan(module, (h, w), window, stride, c, x.device, x.dtype, full_at)
    if plan is None or plan.broken:
        return None
    k_all = plan.n_windows
    drops = torch.empty(n * k_all, base.shape[1], device=x.device, dtype=torch.float32)
    with torch.no_grad():
        if plan.verified:
            orig = _originals(plan, x, fill)
        else:
            try:
                orig = _originals(plan, x, fill)
                ok = _verify(plan, module, x, fill, orig)
            except Exception:  # noqa: BLE001 - as in occlusion_plan: fall back, loudly
                log.warning("incremental occlusion failed on %s; full forwards", type(module).__name__, exc_info=True)
                plan.broken, ok = True, False
            if not ok:
                return None
        total = n * k_all
        for s in range(0, total, batch):
            e = min(total, s + batch)
            img = torch.arange(s, e, device=x.device) // k_all
            out = _run_chunk(plan, orig, img, plan.indices(n, s, e, x.device))
            drops[s:e] = (base[img] - pick(out, img)).float()
            checkpoint((e - s) * window_work)
    return drops.view(n, k_all, -1)


def _verify(plan: OcclusionPlan, module: nn.Module, x: torch.Tensor, fill: torch.Tensor, orig: _Originals) -> bool:
    """Check a new plan on image 0's first and last windows against the module itself, once."""
    k = torch.tensor([0, plan.n_windows - 1], device=x.device)
    img = torch.zeros_like(k)
    out = _run_chunk(plan, orig, img, _chunk_indices(plan, img, k))
    nx = len(plan.xs)
    ref = []
    for kk in k.tolist():
        y0, x0 = int(plan.ys[kk // nx]), int(plan.xs[kk % nx])
        occ = x[:1].clone()
        occ[:, :, y0:y0 + plan.window, x0:x0 + plan.window] = fill[:1, :, y0:y0 + plan.window, x0:x0 + plan.window]
        ref.append(module(occ.contiguous(memory_format=torch.channels_last)))
    want = torch.cat(ref)
    if not isinstance(out, torch.Tensor) or out.shape != want.shape:
        log.warning("incremental occlusion: %s output not understood; full forwards", type(module).__name__)
        plan.broken = True
        return False
    err = float((out.float() - want.float()).abs().max())
    scale = float(want.float().abs().max()) + 1.0
    if not err <= 1e-3 * scale:
        log.warning("incremental occlusion disagrees with %s by %.3g (scale %.3g); full forwards",
                    type(module).__name__, err, scale)
        plan.broken = True
        return False
    plan.verified = True
    return True

