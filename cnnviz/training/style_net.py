"""The feed-forward image transformation network of fast style transfer, and applying it.

Johnson, Alahi & Fei-Fei (2016): a 9x9 convolution, two stride-2 convolutions, residual blocks and
two upsampling stages back to full resolution, trained once per style with perceptual losses, then
a single forward pass per image. Three later, widely adopted changes: instance normalization
instead of batch normalization (Ulyanov et al. 2016, sharper and batch-independent), reflection
padding (no dark borders), and nearest-neighbour upsampling followed by a convolution instead of
fractionally strided convolutions (Odena et al. 2016: no checkerboard artefacts).

One change of ours: the network predicts a change of the input's logits, ``sigmoid(logit(x) +
f(x))``, with the last convolution zero-initialized. It starts as the identity (content loss 0),
its output is always a valid image in (0,1) without clipping, and training spends its steps on
the style rather than on learning to reproduce the content.

``width`` is the first stage's channel count (the paper's 32). On a 2-core CPU a 512 px image
takes about 0.35 s at width 16 and 1.0 s at 32 (``bench/bench_training.py``), hence default 16.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cnnviz.synthesis.style import rgb_to_yiq, yiq_to_rgb
from cnnviz.synthesis.transforms import fit_long_side

EPS = 1e-3


def _conv(cin: int, cout: int, k: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.ReflectionPad2d(k // 2), nn.Conv2d(cin, cout, k, stride))


def _norm_relu(c: int) -> list[nn.Module]:
    return [nn.InstanceNorm2d(c, affine=True), nn.ReLU(inplace=True)]


class Residual(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv(c, c, 3), *_norm_relu(c), _conv(c, c, 3), nn.InstanceNorm2d(c, affine=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 convolution (resize-convolution)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = _conv(cin, cout, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class TransformNet(nn.Module):
    """``[B,3,H,W]`` in [0,1] -> the stylized ``[B,3,H,W]`` in (0,1), for any H, W."""

    def __init__(self, width: int = 16, blocks: int = 5) -> None:
        super().__init__()
        self.width, self.blocks = int(width), int(blocks)
        w = self.width
        self.body = nn.Sequential(
            _conv(3, w, 9), *_norm_relu(w),
            _conv(w, 2 * w, 3, 2), *_norm_relu(2 * w),
            _conv(2 * w, 4 * w, 3, 2), *_norm_relu(4 * w),
            *[Residual(4 * w) for _ in range(self.blocks)],
            Upsample(4 * w, 2 * w), *_norm_relu(2 * w),
            Upsample(2 * w, w), *_norm_relu(w),
            _conv(w, 3, 9),
        )
        last = self.body[-1][1]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def config(self) -> dict[str, Any]:
        return {"arch": "transform_net", "width": self.width, "blocks": self.blocks}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        # Two stride-2 stages: pad to a multiple of 4 (and at least 8, which the 9x9 reflection
        # padding needs), crop back after.
        ph, pw = max((-h) % 4, 8 - h), max((-w) % 4, 8 - w)
        xp = F.pad(x, (0, pw, 0, ph), mode="replicate") if ph > 0 or pw > 0 else x
        logits = torch.logit(xp.clamp(EPS, 1 - EPS))
        out = torch.sigmoid(logits + self.body(xp * 2.0 - 1.0))
        return out[..., :h, :w]


def stylize(net: TransformNet, image: torch.Tensor, *, size: int | None = None, strength: float = 1.0,
            preserve_color: bool = False) -> torch.Tensor:
    """Apply a trained style to ``image`` ``[3,H,W]`` in [0,1]; the answer is ``[3,h,w]`` on the CPU.

    ``size`` is the long side of the output (default: the image's own). ``strength`` blends the
    stylized picture with the content (0 = the content, 1 = the full style). ``preserve_color``
    keeps the content's colours (YIQ: the stylized luminance with the content's I and Q), as in
    the luminance-only transfer of Gatys et al. (2016b).
    """
    p = next(net.parameters())
    x = (fit_long_side(image.float().cpu(), int(size)) if size else image.float().cpu().clamp(0, 1))
    x = x[None].to(device=p.device, dtype=p.dtype)
    with torch.inference_mode():
        y = net(x)
        if preserve_color:
            y = yiq_to_rgb(torch.cat([rgb_to_yiq(y)[:, :1], rgb_to_yiq(x)[:, 1:]], dim=1))
        if strength != 1.0:
            y = x + float(strength) * (y - x)
        return y[0].clamp(0, 1).float().cpu()
