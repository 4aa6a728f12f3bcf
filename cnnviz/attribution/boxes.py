"""Box targets: what explaining one detection means, and the two scores that define it.

A :class:`BoxTargets` names boxes of a detector: detections of the same forward by rank (best
first), each image's ``top_k`` detections, or reference boxes with a label (a ground-truth box, a
box from an earlier answer). Before any method runs, :func:`resolve_boxes` turns it into concrete
:class:`BoxRef` s per image from one forward on the unperturbed images; from then on every forward
(masked, occluded, differentiated) is scored against those references:

* ``match`` (the gradient and CAM families): the sum of the scores of the detections with the
  reference's label whose IoU with it is at least ``iou_threshold``. Differentiable in the scores.
* ``similarity`` (black-box methods, D-RISE; Petsiuk et al., CVPR 2021): the best, over the
  detections, of IoU x cosine of the class-score vectors x objectness. A detector that gives no
  class-score vector has the one-hot of its label scaled by its score, whose cosine only says
  "same label"; the detection's score then stands in for the objectness, else the similarity
  would not see the detector lose confidence.

Scores come back as a ``[B, R]`` matrix: each row of a batch against all ``R`` references of all
images, so that an image's targets are columns (:class:`~cnnviz.attribution.base.Objective` picks
them as it picks class logits) and every family's batching works unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from ..errors import EngineError
from ..models import LoadedModel
from ..models.tasks import Detections, read_detections

BoxScore = Literal["match", "similarity"]
Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class BoxRef:
    """One resolved box target: box (network-input px), label, the class vector and score it had."""

    box: Box
    label: int
    vector: tuple[float, ...]
    score: float
    index: int | None  # rank among the image's detections; None for a reference box


@dataclass(frozen=True)
class BoxTargets:
    """Boxes to explain, per image: ``indices`` (ranks, the same for every image), ``references`` (one
    tuple of (box in network-input px, label) for all images, or one per image), else each image's
    ``top_k`` detections scoring at least ``score_threshold``. ``resolved`` is set by :func:`resolve_boxes`."""

    indices: tuple[int, ...] | None = None
    references: tuple[tuple[tuple[Box, int], ...], ...] | None = None
    top_k: int = 1
    score_threshold: float = 0.0
    iou_threshold: float = 0.5
    resolved: tuple[tuple[BoxRef, ...], ...] | None = None

    def columns(self) -> list[list[int]]:
        """Each image's targets as columns of the ``[B, R]`` score matrix."""
        assert self.resolved is not None
        rows, at = [], 0
        for refs in self.resolved:
            rows.append(list(range(at, at + len(refs))))
            at += len(refs)
        return rows

    def describe(self) -> list[list[dict[str, Any]]]:
        """What the answer says of each target (box in network-input pixels)."""
        assert self.resolved is not None
        return [[{"box": r.box, "label": r.label, "score": r.score, "index": r.index} for r in refs]
                for refs in self.resolved]


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU ``[A, B]`` of boxes ``[A,4]`` and ``[B,4]`` (x0, y0, x1, y1); 0 where a union is empty."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area = lambda t: (t[:, 2:] - t[:, :2]).clamp(min=0).prod(-1)  # noqa: E731
    union = area(a)[:, None] + area(b)[None] - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))


def _sorted(d: Detections) -> Detections:
    return d.keep(d.scores.detach().float().argsort(descending=True, stable=True))


def resolve_boxes(model: LoadedModel, x: torch.Tensor, targets: BoxTargets) -> BoxTargets:
    """The targets resolved against one forward of ``x`` (the unperturbed images): concrete references."""
    if targets.resolved is not None:
        return targets
    n = x.shape[0]
    classes = len(model.labels)
    with torch.no_grad():
        dets = [_sorted(d) for d in read_detections(model.spec, model.module(x), n)]
    out = []
    for i, d in enumerate(dets):
        vec = d.class_vectors(classes).detach().float().cpu()
        boxes, labels, scores = d.boxes.detach().float().cpu(), d.labels.cpu(), d.scores.detach().float().cpu()

        def ref(k: int, vec=vec, boxes=boxes, labels=labels, scores=scores) -> BoxRef:
            return BoxRef(tuple(float(v) for v in boxes[k]), int(labels[k]), tuple(float(v) for v in vec[k]),
                          float(scores[k]), k)

        if targets.references is not None:
            given = targets.references[0 if len(targets.references) == 1 else i]
            refs = []
            for box, label in given:
                onehot = [0.0] * classes
                if 0 <= label < classes:
                    onehot[label] = 1.0
                refs.append(BoxRef(box, label, tuple(onehot), 1.0, None))
        elif targets.indices is not None:
            bad = [k for k in targets.indices if not 0 <= k < len(d)]
            if bad:
                raise EngineError("box-out-of-range", f"image {i} has {len(d)} detections (0..{len(d) - 1});"
                                  f" box {bad[0]} is outside them", detections=len(d), image=i)
            refs = [ref(k) for k in targets.indices]
        else:
            live = [k for k in range(len(d)) if float(scores[k]) >= targets.score_threshold][: targets.top_k]
            if not live:
                raise EngineError("no-detections", f"image {i}: the detector found no box"
                                  + (f" scoring at least {targets.score_threshold}" if len(d) else "")
                                  + "; nothing to explain", detections=0, image=i)
            refs = [ref(k) for k in live]
        out.append(tuple(refs))
    return BoxTargets(targets.indices, targets.references, targets.top_k, targets.score_threshold,
                      targets.iou_threshold, tuple(out))


def box_scores(model: LoadedModel, output: Any, n: int, targets: BoxTargets, how: BoxScore) -> torch.Tensor:
    """Scores ``[n, R]`` of each of ``n`` rows' detections against every resolved reference."""
    assert targets.resolved is not None
    refs = [r for image in targets.resolved for r in image]
    dets = read_detections(model.spec, output, n)
    dev = dets[0].scores.device if dets else torch.device("cpu")
    ref_boxes = torch.tensor([r.box for r in refs], device=dev, dtype=torch.float32).reshape(-1, 4)
    ref_labels = torch.tensor([r.label for r in refs], device=dev)
    if how == "similarity":
        classes = len(model.labels)
        ref_vec = torch.tensor([r.vector for r in refs], device=dev, dtype=torch.float32).reshape(-1, classes)
        ref_vec = ref_vec / ref_vec.norm(dim=1, keepdim=True).clamp(min=1e-12)
    rows = []
    for d in dets:
        if len(d) == 0:
            rows.append(torch.zeros(len(refs), device=dev))
            continue
        iou = box_iou(d.boxes.float(), ref_boxes)  # [K, R]
        if how == "match":
            same = d.labels[:, None] == ref_labels[None]
            rows.append((d.scores.float()[:, None] * (same & (iou >= targets.iou_threshold))).sum(0))
        else:
            vec = d.class_vectors(classes).float()
            cos = (vec / vec.norm(dim=1, keepdim=True).clamp(min=1e-12)) @ ref_vec.T  # [K, R]
            if d.objectness is not None:
                obj = d.objectness.float()
            elif d.class_scores is None:
                obj = d.scores.float()
            else:
                obj = torch.ones_like(d.scores, dtype=torch.float32)
            rows.append((iou * cos * obj[:, None]).amax(0))
    return torch.stack(rows)
