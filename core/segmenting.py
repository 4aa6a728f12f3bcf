"""A segmenter's predictions: the label map at the original image's size, each class's area, optional masks.

The network sees the image stretched to its input (a segmenter's models-file entry fits by stretching),
so its ``[C, h, w]`` logits cover the whole picture; they are brought to the original size bilinearly
and *then* the arg-max is taken, so a class's border is as smooth as the network saw it rather than
drawn in blocks of network pixels. Large originals are resampled a band of rows at a time, so a
2048 px photo with 21 classes never holds all its upsampled logits at once.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from cnnviz.attribution.base import segmentation_logits
from cnnviz.models import LoadedModel
from cnnviz.render.regions import label_map_png
from core.schemas.models import ClassArea, ClassMask, Segmentation

BAND_ROWS = 256  # rows of the original resampled at once


def label_map(logits: torch.Tensor, size: tuple[int, int], band: int = BAND_ROWS) -> torch.Tensor:
    """Each pixel's class ``[H, W]`` (int64) of an image of ``size`` = (H, W), from logits ``[C, h, w]``.

    Bilinear resampling as ``F.interpolate(..., align_corners=False)`` does it (the same sample
    positions, clamped at the border), band by band, then the arg-max over classes.
    """
    c, h, w = logits.shape
    H, W = size
    src = logits[None].float()
    xs = ((torch.arange(W, device=src.device, dtype=torch.float32) + 0.5) / W) * 2 - 1
    out = torch.empty(H, W, dtype=torch.long, device=src.device)
    for y0 in range(0, H, band):
        y1 = min(H, y0 + band)
        ys = ((torch.arange(y0, y1, device=src.device, dtype=torch.float32) + 0.5) / H) * 2 - 1
        grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij")[::-1], -1)[None]  # [1, b, W, 2] as (x, y)
        up = F.grid_sample(src, grid, mode="bilinear", padding_mode="border", align_corners=False)
        out[y0:y1] = up[0].argmax(0)
    return out


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _mask_png(mask: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(mask.cpu().numpy().astype(np.uint8) * 255, mode="L").convert("1").save(buf, format="PNG",
                                                                                          optimize=True)
    return buf.getvalue()


def segmentation_answer(model: LoadedModel, logits: torch.Tensor, size: tuple[int, int],
                        masks: bool = False) -> Segmentation:
    """One image's answer: the label map PNG (values = class indices), every predicted class's area, masks."""
    labels = label_map(logits, size)
    counts = torch.bincount(labels.flatten(), minlength=logits.shape[0]).tolist()
    total = size[0] * size[1]
    present = sorted((c for c, n in enumerate(counts) if n), key=lambda c: (-counts[c], c))
    name = (lambda c: model.labels[c] if c < len(model.labels) else str(c))  # noqa: E731
    return Segmentation(
        label_map_png=_b64(label_map_png(labels)),
        classes=[ClassArea(index=c, label=name(c), pixels=counts[c], fraction=counts[c] / total) for c in present],
        masks=[ClassMask(index=c, label=name(c), mask_png=_b64(_mask_png(labels == c))) for c in present]
        if masks else None)


EAGER_CHUNK = 4  # images per forward (a CPU forward gains nothing from larger batches; memory grows with them)


def predict_segmentation(model: LoadedModel, images: list[torch.Tensor], sizes: list[tuple[int, int]], size: int,
                         masks: bool = False) -> list[Segmentation]:
    """Each ``[3, h, w]`` image (in [0, 1], as decoded) segmented: stretched to ``size``, one batched forward per
    chunk, the answer at its original ``sizes`` (height, width), which a large upload was decoded below."""
    prep = model.preprocessing
    answers = []
    for start in range(0, len(images), EAGER_CHUNK):
        part = images[start:start + EAGER_CHUNK]
        x = prep.batch(part, size, "stretch", model.device)
        with torch.inference_mode():
            logits = segmentation_logits(model.module(x)).float().cpu()
        answers += [segmentation_answer(model, logits[i], sizes[start + i], masks) for i in range(len(part))]
    return answers
