"""A small anchor-free detector (CenterNet-style) for the synthetic scenes, loaded through ``factory:``.

Why its own network and not a torchvision one: it trains on two contended CPU cores in minutes
and is the kind of model a user brings through ``factory:`` (a YOLO-like head whose output the
models file maps). Its output per image is a fixed number of candidate boxes (the strongest peaks
of the class heatmaps), as batched tensors in a tuple::

    boxes [N,K,4] (x0, y0, x1, y1, input pixels), scores [N,K], labels [N,K], class_scores [N,K,C]

mapped in the models file by ``outputs = { boxes = "0", scores = "1", labels = "2", class_scores = "3" }``.
Labels count the background as class 0 (the scenes' and torchvision's convention), so the heatmap
channel ``c`` is label ``c + 1``. Everything from the heatmaps to the boxes is differentiable in
the scores and sizes: the gradient and CAM families explain a box through its score.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class ShapeDetector(nn.Module):
    """Backbone to stride 8, one upsampling to stride 4, then heatmap, size and offset heads."""

    def __init__(self, num_classes: int = 4, width: int = 16, max_detections: int = 16) -> None:
        super().__init__()
        w = width
        self.classes = num_classes - 1  # heatmap channels: the background has none
        self.k = max_detections
        self.backbone = nn.Sequential(
            _block(3, w, 2), _block(w, w, 1), _block(w, 2 * w, 2), _block(2 * w, 2 * w, 1),
            _block(2 * w, 4 * w, 2), _block(4 * w, 4 * w, 1), _block(4 * w, 4 * w, 1),
        )
        self.neck = _block(4 * w + 2 * w, 2 * w, 1)
        self.heatmap = nn.Conv2d(2 * w, self.classes, 1)
        self.size = nn.Conv2d(2 * w, 2, 1)
        self.offset = nn.Conv2d(2 * w, 2, 1)
        nn.init.constant_(self.heatmap.bias, -2.19)  # sigmoid 0.1: the focal loss's usual start

    def maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Heatmap logits ``[N,C,h,w]``, box sizes ``[N,2,h,w]`` (log px), offsets ``[N,2,h,w]`` at stride 4."""
        mid = self.backbone[:4](x)
        deep = self.backbone[4:](mid)
        f = self.neck(torch.cat([mid, F.interpolate(deep, size=mid.shape[-2:], mode="nearest")], 1))
        return self.heatmap(f), self.size(f), self.offset(f)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        heat, size, offset = self.maps(x)
        return decode(heat, size, offset, x.shape[-1] / heat.shape[-1], self.k)


def decode(heat: torch.Tensor, size: torch.Tensor, offset: torch.Tensor, stride: float,
           k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``k`` strongest local maxima of the heatmaps as boxes, scores, labels and class-score vectors."""
    n, c, h, w = heat.shape
    prob = heat.sigmoid()
    peak = prob == F.max_pool2d(prob, 3, 1, 1)  # a 3x3 local maximum: CenterNet's NMS
    best, cls = (prob * peak).flatten(2).max(1)  # per cell: the strongest class [N, hw]
    k = min(k, h * w)
    _, idx = best.topk(k, 1)  # [N,K]
    flat = prob.flatten(2)  # [N,C,hw]
    vectors = flat.gather(2, idx[:, None].expand(n, c, k)).transpose(1, 2)  # [N,K,C], with their graph
    labels = cls.gather(1, idx)
    scores = vectors.gather(2, labels[..., None])[..., 0]
    cy, cx = (idx // w).float(), (idx % w).float()
    off = offset.flatten(2).gather(2, idx[:, None].expand(n, 2, k))  # [N,2,K]
    wh = size.flatten(2).gather(2, idx[:, None].expand(n, 2, k)).exp()  # [N,2,K]
    px = (cx + off[:, 0]) * stride
    py = (cy + off[:, 1]) * stride
    boxes = torch.stack([px - wh[:, 0] / 2, py - wh[:, 1] / 2, px + wh[:, 0] / 2, py + wh[:, 1] / 2], -1)
    # class-score vectors over all labels, background first (0: the heatmaps have no background channel)
    return boxes, scores, labels + 1, F.pad(vectors, (1, 0))


def build(num_classes: int = 4, width: int = 16, max_detections: int = 16) -> ShapeDetector:
    """The factory the models file names: ``arch = "factory:cnnviz.synthetic.detector:build"``."""
    return ShapeDetector(num_classes, width, max_detections)
