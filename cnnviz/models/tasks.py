"""What a network's output means, per task: the one place that reads a raw output.

A classifier returns logits ``[N, classes]``. A detector returns one set of detections per image:
torchvision's ``[{"boxes": [K,4], "labels": [K], "scores": [K]}, ...]``, or a layout of its own
that the models file maps with ``outputs`` (a path per field: ``"0"`` is the first item of a
tuple, ``"dets.boxes"`` a key of a dict, paths joined by dots; a tensor with a leading batch
dimension is split per image). A segmenter returns ``[N, classes, H, W]`` logits or a dict with
them under ``"out"`` (torchvision's FCN, DeepLabV3, LR-ASPP).

Everything downstream (the catalog's dry run, predict, the box targets of the engine) asks this
module instead of assuming ``[N, classes]``, so a new output layout is a change here only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .specs import ModelLoadError, ModelSpec

CLASSIFIERS = ("classification", "multilabel")


@dataclass
class Detections:
    """One image's detections, boxes ``[K,4]`` as (x0, y0, x1, y1) in network-input pixels.

    ``class_scores`` ``[K, classes]`` and ``objectness`` ``[K]`` are there when the detector gives
    them; D-RISE's similarity uses them (else the one-hot of the label scaled by the score).
    Tensors keep their graph: the gradient and CAM families differentiate the scores.
    """

    boxes: torch.Tensor
    labels: torch.Tensor
    scores: torch.Tensor
    class_scores: torch.Tensor | None = None
    objectness: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def keep(self, idx: torch.Tensor) -> Detections:
        """The detections at ``idx`` (a bool mask or indices), in that order."""
        pick = (lambda t: None if t is None else t[idx])  # noqa: E731 - five fields, one rule
        return Detections(self.boxes[idx], self.labels[idx], self.scores[idx], pick(self.class_scores),
                          pick(self.objectness))

    def class_vectors(self, num_classes: int) -> torch.Tensor:
        """``[K, classes]``: the detector's own class scores, else one-hot(label) x score."""
        if self.class_scores is not None:
            return self.class_scores
        onehot = torch.zeros(len(self), num_classes, dtype=self.scores.dtype, device=self.scores.device)
        if len(self):
            onehot.scatter_(1, self.labels.long().clamp(0, num_classes - 1)[:, None], self.scores[:, None])
        return onehot


def _follow(out: Any, path: str) -> Any:
    for part in path.split(".") if path else ():
        if isinstance(out, Mapping):
            if part not in out:
                raise KeyError(f"no key {part!r} (keys: {list(out)})")
            out = out[part]
        elif isinstance(out, (list, tuple)) and part.lstrip("-").isdigit():
            out = out[int(part)]
        else:
            raise KeyError(f"cannot take {part!r} of a {type(out).__name__}")
    return out


def _per_image(value: Any, n: int, field: str) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        if value.shape[0] != n:
            raise ValueError(f"{field} has a batch of {value.shape[0]} for {n} images")
        return list(value)
    if isinstance(value, (list, tuple)) and len(value) == n and all(isinstance(v, torch.Tensor) for v in value):
        return list(value)
    raise ValueError(f"{field} is a {type(value).__name__}, not a tensor per image")


def read_detections(spec: ModelSpec, out: Any, n: int) -> list[Detections]:
    """The detections of each of ``n`` images from a detector's raw output (ValueError if unreadable)."""
    if not spec.outputs:
        if not (isinstance(out, Sequence) and len(out) == n and all(isinstance(d, Mapping) for d in out)):
            raise ValueError(f"a detector returns one dict per image (boxes, labels, scores), got "
                             f"{type(out).__name__}; map its layout with outputs = {{ ... }} in the models file")
        dets = []
        for d in out:
            missing = [k for k in ("boxes", "labels", "scores") if k not in d]
            if missing:
                raise ValueError(f"a detection dict lacks {missing} (keys: {list(d)})")
            dets.append(Detections(d["boxes"], d["labels"], d["scores"], d.get("class_scores"),
                                   d.get("objectness")))
        return dets
    fields: dict[str, list[torch.Tensor]] = {}
    for field, path in spec.outputs:
        try:
            fields[field] = _per_image(_follow(out, path), n, field)
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"outputs.{field} = {path!r}: {exc}") from exc
    return [Detections(*(fields[f][i] if f in fields else None
                         for f in ("boxes", "labels", "scores", "class_scores", "objectness")))
            for i in range(n)]


def segmentation_logits(out: Any) -> torch.Tensor:
    """``[N, classes, H, W]`` logits of a segmenter's output (a tensor, or a dict with ``"out"``)."""
    if isinstance(out, Mapping):
        if "out" not in out:
            raise ValueError(f"a segmenter's dict output needs an 'out' entry (keys: {list(out)})")
        out = out["out"]
    if not isinstance(out, torch.Tensor) or out.dim() != 4:
        raise ValueError(f"a segmenter returns [N, classes, H, W] logits, got {type(out).__name__}"
                         f"{list(out.shape) if isinstance(out, torch.Tensor) else ''}")
    return out


def output_classes(spec: ModelSpec, out: Any, n: int = 1) -> int | None:
    """How many classes the output shows (None for a detector: its labels are indices, not a row).

    Raises :class:`ModelLoadError` naming the model where the output does not read as its task says.
    """
    where = f"model {spec.name!r} ({spec.weights or spec.arch})"
    try:
        if spec.task == "detection":
            read_detections(spec, out, n)
            return None
        if spec.task == "segmentation":
            return int(segmentation_logits(out).shape[1])
    except ValueError as exc:
        raise ModelLoadError(f"{where} is declared task = {spec.task!r}: {exc}") from exc
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise ModelLoadError(f"{where} returns {type(out).__name__}"
                             f"{list(out.shape) if isinstance(out, torch.Tensor) else ''}, not [N, classes] logits"
                             " (a detector or segmenter needs task = \"detection\" or \"segmentation\")")
    return int(out.shape[1])


def dry_scalar(spec: ModelSpec, out: Any) -> torch.Tensor:
    """A scalar whose backward reaches every layer that feeds the task's answer (the layer table's dry run).

    A detector that finds nothing (random weights) has a scalar without a graph: the dry run then
    records shapes only.
    """
    if spec.task == "detection":
        dets = read_detections(spec, out, 1)
        return torch.stack([d.scores.float().sum() for d in dets]).sum()
    if spec.task == "segmentation":
        return segmentation_logits(out).float().sum()
    return out.float().sum()


def task_layers(spec: ModelSpec, layers: list[Any]) -> list[Any]:
    """Where the default CAM layer is looked for: a detector's or segmenter's backbone when it has one.

    After the backbone come heads run per FPN level or per region (their first call's shape is not
    the image's grid), so the last grid of the whole table is no good default there; the backbone's
    last grid is what the detection CAM papers use. A classifier's whole table is searched.
    """
    if spec.task in CLASSIFIERS:
        return layers
    for prefix in ("backbone.body.", "backbone.features.", "backbone."):
        inside = [li for li in layers if li.name.startswith(prefix) or li.name == prefix[:-1]]
        if any(li.grid is not None for li in inside):
            return inside
    return layers
