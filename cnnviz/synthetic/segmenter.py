"""The small segmenter cnnviz trains on its synthetic scenes (``factory:cnnviz.synthetic.segmenter:build``).

An FCN-8s in miniature (Long et al. 2015): a backbone of a stem and two stride-2 stages (1/2 and
1/4 of the input), a context stage (stride 2 and a dilated convolution: 1/8, seeing most of a
scene), a classifier at each of the last three scales summed after upsampling, and the sum
upsampled bilinearly to the input, so the output is ``[N, classes, H, W]`` logits like
torchvision's FCN, DeepLabV3 and LR-ASPP (which return them under ``"out"``). About 0.1 M
parameters: it trains on a laptop CPU in a few minutes and its weights file is under half a megabyte.

Module names are what a user types as ``layer``. The CAM family's default is the backbone's last
stage, ``backbone.stage2`` (a 16 x 16 grid at 64 px: fine enough for a region's map to follow a
shape), as for torchvision's segmenters; ``context`` (8 x 8) sees more and localizes less.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Backbone", "SceneSegmenter", "build"]


def _conv(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU())


class Backbone(nn.Module):
    """Stem and two stride-2 stages: features at 1/2 and 1/4 of the input."""

    def __init__(self, w: int) -> None:
        super().__init__()
        self.stem = _conv(3, w)
        self.stage1 = nn.Sequential(_conv(w, 2 * w, stride=2), _conv(2 * w, 2 * w))
        self.stage2 = nn.Sequential(_conv(2 * w, 3 * w, stride=2), _conv(3 * w, 3 * w))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s1 = self.stage1(self.stem(x))
        return s1, self.stage2(s1)


class SceneSegmenter(nn.Module):
    """Backbone (1/2, 1/4), context (1/8), a classifier at each scale, fused and upsampled to the input."""

    def __init__(self, num_classes: int = 4, width: int = 16) -> None:
        super().__init__()
        w = width
        self.backbone = Backbone(w)
        self.context = nn.Sequential(_conv(3 * w, 4 * w, stride=2), _conv(4 * w, 4 * w, dilation=2))
        self.classifier = nn.Conv2d(4 * w, num_classes, 1)
        self.skip2 = nn.Conv2d(3 * w, num_classes, 1)
        self.skip1 = nn.Conv2d(2 * w, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s1, s2 = self.backbone(x)
        y = self.classifier(self.context(s2))
        y = F.interpolate(y, size=s2.shape[-2:], mode="bilinear", align_corners=False) + self.skip2(s2)
        y = F.interpolate(y, size=s1.shape[-2:], mode="bilinear", align_corners=False) + self.skip1(s1)
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)


def build(num_classes: int = 4, width: int = 16) -> SceneSegmenter:
    """The models file's factory: ``arch = "factory:cnnviz.synthetic.segmenter:build"``."""
    return SceneSegmenter(num_classes, width)
