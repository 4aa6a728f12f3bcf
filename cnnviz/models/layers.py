"""The layer table: every named module with its output shape, found by one dry-run forward.

Besides the shape, the table records how a layer's output is laid out spatially (its *grid*):

* ``chw``    a convolutional map ``[C,h,w]``;
* ``nhwc``   channels last ``[h,w,C]`` (timm's Swin stages, ConvNeXt block internals);
* ``tokens`` a transformer sequence ``[P+h*w, C]`` with ``P`` prefix (class, distillation,
  register) tokens before the patch tokens (ViT, DeiT).

:func:`to_grid` turns any of them into ``[N,C,h,w]`` (and :func:`from_grid` back), so the CAM
family works on transformers' token grids unchanged. With gradients available the dry run also
takes one backward pass and records which layers *feed the head*: in a ViT that pools its class
token, the patch tokens after the last attention reach the logits no more, and a CAM there is 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import EngineError

Grid = str  # "chw" | "nhwc" | "tokens" | "cl" | "cdhw"
GRIDS = ("chw", "nhwc", "tokens", "cl", "cdhw")
# The grids of 1-D and 3-D convnets: a signal's [C,l] and a volume's [C,d,h,w], channels first.
ND_GRIDS = {1: "cl", 3: "cdhw"}
# Modules that pass their input through (or only resample it): never the default target layer.
PASS_THROUGH = frozenset({
    "Identity", "Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout", "DropPath", "DropBlock2d",
    "AdaptiveAvgPool2d", "AdaptiveMaxPool2d", "Flatten", "SelectAdaptivePool2d", "FastAdaptiveAvgPool",
    "LayerScale", "LayerScale2d",
})
MAX_PREFIX_TOKENS = 4


@dataclass(frozen=True)
class LayerInfo:
    """One named module as the API shows it."""

    name: str
    kind: str
    output_shape: tuple[int, ...] | None  # without the batch dimension; None if not a tensor (or unknown)
    order: int  # position in execution order (first call)
    grid: Grid | None = None  # how the output is a spatial grid, if it is one
    prefix_tokens: int = 0  # tokens before the patch grid (grid == "tokens")
    feeds_head: bool | None = None  # the grid part reaches the logits; None where no backward was taken
    hookable: bool = True  # forward hooks see this module's output (False inside TorchScript)
    input_hw: tuple[int, int] | None = None  # grid size of the module's input, where it has one
    tensor_group: int = -1  # layers returning the very same tensor share a group

    @property
    def spatial(self) -> bool:
        """A convolutional ``[C,h,w]`` output larger than 1x1 (what the inspection views need)."""
        return self.grid == "chw"

    @property
    def grid_hw(self) -> tuple[int, int] | None:
        s = self.output_shape
        if self.grid is None or s is None or self.grid in ("cl", "cdhw"):
            return None
        if self.grid == "chw":
            return s[1], s[2]
        if self.grid == "nhwc":
            return s[0], s[1]
        g = math.isqrt(s[0] - self.prefix_tokens)
        return g, g

    @property
    def channels(self) -> int | None:
        s = self.output_shape
        if not s:
            return None
        return s[0] if self.grid in (None, "chw", "cl", "cdhw") else s[-1]

    def usable_by(self, gradients: bool = True) -> list[str]:
        """Method families that can use this layer: the CAM family needs a grid, unit targets a tensor."""
        if not self.hookable or self.output_shape is None:
            return []
        out = ["cam"] if self.grid is not None else []
        if gradients:
            out.append("gradient")
        out.append("perturbation")
        return out


def _square(n: int) -> int | None:
    g = math.isqrt(n)
    return g if g > 1 and g * g == n else None


def detect_grid(shape: tuple[int, ...], size: int, prefix_hint: int | None = None) -> tuple[Grid | None, int]:
    """``(grid, prefix_tokens)`` of an output shape (batch dimension removed) for a square input.

    Square feature maps only (the dry run feeds a square image): ``[C,g,g]`` is ``chw``,
    ``[g,g,C]`` is ``nhwc`` (``chw`` wins when all three agree), ``[P+g*g, C]`` is ``tokens``
    with ``P`` the model's ``num_prefix_tokens`` when it declares one, else the first of 0..4 that
    leaves a square (two of them never do for a grid of 2x2 or more).
    """
    if len(shape) == 3:
        a, b, c = shape
        if b == c and 1 < b <= size:
            return "chw", 0
        if a == b and 1 < a <= size:
            return "nhwc", 0
        return None, 0
    if len(shape) == 2:
        length = shape[0]
        hints = [prefix_hint] if prefix_hint is not None else range(MAX_PREFIX_TOKENS + 1)
        for p in hints:
            g = _square(length - p)
            if g is not None and g <= size:
                return "tokens", p
    return None, 0


def detect_nd_grid(shape: tuple[int, ...], dims: int) -> Grid | None:
    """The grid of an output of a 1-D (``[C,l]``) or 3-D (``[C,d,h,w]``) convnet, if it is one.

    Channels first as the convolutions leave them; a grid of one position in all (after global
    pooling) is not a grid, a depth of 1 in a volume is (video nets pool time early).
    """
    if len(shape) == dims + 1 and shape[0] >= 1 and math.prod(shape[1:]) > 1:
        return ND_GRIDS[dims]
    return None


def to_grid(t: torch.Tensor, info: LayerInfo) -> torch.Tensor:
    """A layer output ``[N,...]`` as ``[N,C,h,w]`` (a view where the layout allows); ``[N,C,l]`` and
    ``[N,C,d,h,w]`` grids of 1-D and 3-D convnets are already channels first and stay as they are."""
    if info.grid in (None, "chw", "cl", "cdhw"):
        return t
    if info.grid == "nhwc":
        return t.permute(0, 3, 1, 2)
    body = t[:, info.prefix_tokens:]
    n, hw, c = body.shape
    g = math.isqrt(hw)
    if g * g != hw:
        raise EngineError("layer-unusable", f"layer {info.name!r} has {hw} patch tokens, not a square grid")
    return body.transpose(1, 2).reshape(n, c, g, g)


def from_grid(g: torch.Tensor, like: torch.Tensor, info: LayerInfo) -> torch.Tensor:
    """``[B,C,h,w]`` back into the layer's own layout; prefix tokens are taken from ``like`` ``[1 or B,...]``."""
    if info.grid in (None, "chw", "cl", "cdhw"):
        return g
    if info.grid == "nhwc":
        return g.permute(0, 2, 3, 1)
    tokens = g.flatten(2).transpose(1, 2)
    p = info.prefix_tokens
    if not p:
        return tokens
    prefix = like[:, :p].expand(g.shape[0], p, like.shape[-1])
    return torch.cat([prefix.to(tokens.dtype), tokens], 1)


def _input_hw(inp: tuple[Any, ...], size: int, prefix_hint: int | None) -> tuple[int, int] | None:
    if not inp or not isinstance(inp[0], torch.Tensor) or inp[0].dim() < 2 or inp[0].shape[0] != 1:
        return None
    shape = tuple(inp[0].shape[1:])
    grid, p = detect_grid(shape, size, prefix_hint)
    if grid is None:
        return None
    return LayerInfo("", "", shape, 0, grid, p).grid_hw


def layer_table(model: nn.Module, input_size: int, device: torch.device | str = "cpu",
                gradients: bool = True, input_shape: tuple[int, ...] | None = None,
                scalar: Callable[[Any], torch.Tensor] | None = None) -> list[LayerInfo]:
    """Run one forward (and, with ``gradients``, one backward) and describe each named module.

    Records each module's first output shape, in call order, its grid and, from the backward,
    whether that grid reaches the logits. Modules that never run (e.g. an unused auxiliary head)
    are listed last with no shape. ``scalar`` reduces the output to what the backward starts from
    (a detector's or segmenter's output is no tensor: :func:`cnnviz.models.tasks.dry_scalar`); where
    it has no graph (a detector that found nothing), no layer's ``feeds_head`` is known.
    ``input_shape`` (one input without the batch) is a signal's ``[C,L]`` or a volume's
    ``[C,D,H,W]`` for 1-D and 3-D convnets; default the square image.
    """
    shape_in = input_shape or (3, input_size, input_size)
    dims = len(shape_in) - 1
    prefix_hint = getattr(model, "num_prefix_tokens", None)
    prefix_hint = prefix_hint if isinstance(prefix_hint, int) else None
    seen: dict[str, tuple[tuple[int, ...] | None, int, tuple[int, int] | None]] = {}
    outputs: dict[str, torch.Tensor] = {}
    handles = []

    def make_hook(name: str):
        def hook(_mod: nn.Module, inp: tuple[Any, ...], out: object) -> None:
            if name in seen:
                return
            if isinstance(out, torch.Tensor):
                # A module run once per window (Swin's attention) has a batch other than 1: no grid.
                shape = tuple(out.shape[1:])
                outputs[name] = out
                if out.shape[0] != 1:
                    shape = None
                elif out.requires_grad:
                    out.retain_grad()
            else:
                shape = None
            seen[name] = (shape, len(seen), _input_hw(inp, input_size, prefix_hint) if dims == 2 else None)
        return hook

    for name, mod in model.named_modules():
        if name:
            handles.append(mod.register_forward_hook(make_hook(name)))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, *shape_in, generator=gen).to(device)
    try:
        if gradients:
            with torch.enable_grad():
                x.requires_grad_(True)
                out = model(x)
                s = scalar(out) if scalar is not None else out.float().sum()
                if s.requires_grad:
                    s.backward()
                # A detector that found nothing in the noise has a scalar with no (or an all-zero) graph:
                # which layers reach its answer is then unknown, not "none".
                gradients = x.grad is not None and bool(x.grad.abs().sum() > 0)
        else:
            with torch.no_grad():
                model(x)
    finally:
        for h in handles:
            h.remove()
    groups: dict[int, int] = {}
    table = []
    names = dict(model.named_modules())
    for name, (shape, order, in_hw) in seen.items():
        if dims != 2:
            grid, prefix = (detect_nd_grid(shape, dims) if shape else None), 0
        else:
            grid, prefix = detect_grid(shape, input_size, prefix_hint) if shape else (None, 0)
        feeds = None
        out = outputs.get(name)
        if grid is not None and gradients and out is not None:
            g = out.grad
            part = g[:, prefix:] if (g is not None and grid == "tokens") else g
            feeds = bool(part is not None and part.abs().sum() > 0)
        group = groups.setdefault(id(out), len(groups)) if out is not None else -1
        table.append(LayerInfo(name, type(names[name]).__name__, shape, order, grid, prefix, feeds, True,
                               in_hw, group))
    outputs.clear()
    table.sort(key=lambda li: li.order)
    for name, mod in model.named_modules():
        if name and name not in seen:
            table.append(LayerInfo(name, type(mod).__name__, None, len(table)))
    return table


def opaque_layer_table(model: nn.Module) -> list[LayerInfo]:
    """The named modules of a TorchScript archive: its graph's structure, outputs not observable."""
    table = []
    for name, mod in model.named_modules():
        if name:
            kind = getattr(mod, "original_name", None) or type(mod).__name__
            table.append(LayerInfo(name, str(kind), None, len(table), hookable=False))
    return table


def default_target_layer(table: list[LayerInfo], num_classes: int | None = None) -> str:
    """The last layer with a spatial grid that feeds the head: what CAM methods conventionally use.

    Skipped: pass-through modules (identity, dropout, adaptive pooling), a final 1x1 logits
    convolution (SqueezeNet-style heads, ``num_classes`` channels) and what follows it, token
    projections inside attention (``Linear``), and grids that do not reach the logits (a ViT's
    patch tokens after its last attention). Of the modules returning that very tensor (a stage and
    its last block), the outermost one that downsamples at most once is named: ``layer4`` of a
    ResNet, ``stages.3`` of a ConvNeXt, ``features`` of a VGG.
    """
    ordered = sorted(table, key=lambda li: li.order)
    convs = [li for li in ordered if li.kind in ("Conv1d", "Conv2d", "SameConv2d", "Conv3d")
             and li.grid in ("chw", "cl", "cdhw")]
    cut = None
    if num_classes and convs and convs[-1].channels == num_classes:
        cut = convs[-1].order
    candidates = [li for li in ordered if li.grid is not None and li.hookable and li.kind not in PASS_THROUGH
                  and not (li.kind == "Linear" and li.grid != "chw") and li.feeds_head is not False
                  and (cut is None or li.order < cut)]
    if not candidates:
        raise ValueError("the model has no layer with a spatial output")
    last = candidates[-1]
    group = [li for li in candidates if li.tensor_group == last.tensor_group and li.tensor_group >= 0] or [last]
    for li in sorted(group, key=lambda li: (li.name.count("."), li.order)):
        hw, in_hw = li.grid_hw, li.input_hw
        if hw is None or in_hw is None or in_hw[0] <= 2 * hw[0]:
            return li.name
    return last.name
