"""Scenes of a few shape kinds on textured backgrounds, several objects each, with exact boxes and masks.

One scene is drawn from a seeded :class:`numpy.random.Generator` only, so a seed gives the same
picture on every machine. Each object is a filled circle, square or triangle of a random colour
(the colour says nothing about the kind: only the outline does), placed so that objects overlap
little; the background is a random mix of stripes, blobs and noise, tinted, so that a model has to
look at shapes rather than at a flat backdrop. Class 0 is the background (torchvision's detectors
and segmenters count it too), classes 1.. are :data:`SHAPES` in order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

SHAPES = ("circle", "square", "triangle")
LABELS = ("__background__", *SHAPES)


@dataclass(frozen=True)
class Scene:
    """An image ``[3,H,W]`` in [0,1], its boxes ``[K,4]`` (x0, y0, x1, y1; pixel edges, x1/y1 exclusive),
    labels ``[K]`` (1..len(SHAPES)) and the class of each pixel ``[H,W]`` (0 = background)."""

    image: torch.Tensor
    boxes: torch.Tensor
    labels: torch.Tensor
    mask: torch.Tensor


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    base = rng.uniform(0.2, 0.8, 3).astype(np.float32)
    tex = np.zeros((size, size), np.float32)
    for _ in range(3):  # stripes at random angles and frequencies
        ang, freq, ph = rng.uniform(0, np.pi), rng.uniform(2, 9), rng.uniform(0, 2 * np.pi)
        tex += np.sin(2 * np.pi * freq * (xx * np.cos(ang) + yy * np.sin(ang)) + ph) * rng.uniform(0.03, 0.09)
    noise = rng.normal(0, 0.04, (size, size)).astype(np.float32)
    tint = rng.uniform(0.5, 1.0, 3).astype(np.float32)
    return np.clip(base[:, None, None] + (tex + noise)[None] * tint[:, None, None], 0, 1)


def _shape_mask(kind: str, cx: float, cy: float, r: float, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    if kind == "circle":
        return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
    if kind == "square":
        return (np.abs(xx - cx) <= r) & (np.abs(yy - cy) <= r)
    # an upright triangle, apex at the top, base of 2r at the bottom
    t = (yy - (cy - r)) / (2 * r)
    return (t >= 0) & (t <= 1) & (np.abs(xx - cx) <= t * r)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def make_scene(rng: np.random.Generator, size: int = 128, objects: tuple[int, int] = (2, 4),
               radius: tuple[float, float] = (0.08, 0.16)) -> Scene:
    """One scene of ``objects[0]..objects[1]`` shapes of radius ``radius`` x ``size`` px."""
    img = _background(rng, size)
    cls = np.zeros((size, size), np.int64)
    boxes: list[np.ndarray] = []
    labels: list[int] = []
    want = int(rng.integers(objects[0], objects[1] + 1))
    for _ in range(want * 20):
        if len(boxes) == want:
            break
        r = float(rng.uniform(*radius)) * size
        cx, cy = (float(v) for v in rng.uniform(r + 1, size - r - 1, 2))
        kind = int(rng.integers(len(SHAPES)))
        m = _shape_mask(SHAPES[kind], cx, cy, r, size)
        if m.sum() < 16:
            continue
        ys, xs = np.nonzero(m)
        box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)
        if any(_iou(box, b) > 0.05 for b in boxes):
            continue
        colour = rng.uniform(0, 1, 3).astype(np.float32)
        while np.abs(colour - img[:, m].mean(1)).max() < 0.3:  # visible against its backdrop
            colour = rng.uniform(0, 1, 3).astype(np.float32)
        shade = colour[:, None] + rng.normal(0, 0.03, (3, int(m.sum()))).astype(np.float32)
        img[:, m] = np.clip(shade, 0, 1)
        cls[m] = kind + 1
        boxes.append(box)
        labels.append(kind + 1)
    return Scene(torch.from_numpy(img), torch.from_numpy(np.stack(boxes)) if boxes else torch.zeros(0, 4),
                 torch.tensor(labels, dtype=torch.int64), torch.from_numpy(cls))


def scene_batch(seed: int, count: int, size: int = 128, **kw: object) -> list[Scene]:
    """``count`` scenes from one seed (scene ``i`` of a seed is the same whatever ``count`` is)."""
    return [make_scene(np.random.default_rng([seed, i]), size, **kw) for i in range(count)]  # type: ignore[arg-type]
