"""A detector's boxes for the predict route and for box targets: one forward, read per image, in original pixels.

The network sees each image stretched to its square input (a detection model never center-crops:
cnnviz/models/specs.py refuses it), so a box maps back to the original image by the two stretch
factors alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from cnnviz.models import LoadedModel
from cnnviz.models.tasks import Detections, read_detections
from core.schemas.models import Detection

DEFAULT_TOP_K = 100


def detect(model: LoadedModel, x: torch.Tensor) -> list[Detections]:
    """The detections of a normalized batch ``x`` (boxes in network-input pixels), best first per image."""
    with torch.inference_mode():
        dets = read_detections(model.spec, model.module(x), x.shape[0])
    return [d.keep(d.scores.float().argsort(descending=True)) for d in dets]


def scale_boxes(boxes: torch.Tensor, input_hw: tuple[int, int], orig_hw: tuple[int, int]) -> torch.Tensor:
    """Boxes ``[K,4]`` from network-input pixels to the original image's (``*_hw`` are (height, width))."""
    sy, sx = orig_hw[0] / input_hw[0], orig_hw[1] / input_hw[1]
    return boxes.float() * torch.tensor([sx, sy, sx, sy], device=boxes.device)


def answer_detections(model: LoadedModel, det: Detections, input_hw: tuple[int, int], orig_hw: tuple[int, int],
                      score_threshold: float = 0.0, top_k: int | None = None) -> list[Detection]:
    """One image's detections as the answer lists them, at most ``top_k`` scoring at least ``score_threshold``.

    ``index`` is the rank in the detector's output (best first), the number a box target names,
    whether or not the threshold hides the boxes before it.
    """
    boxes = scale_boxes(det.boxes.detach(), input_hw, orig_hw).cpu()
    out = []
    for i in range(len(det)):
        score = float(det.scores[i])
        if score < score_threshold:
            continue
        c = int(det.labels[i])
        out.append(Detection(index=i, box=tuple(round(float(v), 2) for v in boxes[i]),  # type: ignore[arg-type]
                             label=model.labels[c] if 0 <= c < len(model.labels) else str(c), class_index=c,
                             score=score))
        if len(out) == (top_k or DEFAULT_TOP_K):
            break
    return out


def predict_detections(model: LoadedModel, images: Sequence[torch.Tensor], size: int, resize: str | None,
                       score_threshold: float, top_k: int | None) -> tuple[list[list[Detection]], list[str]]:
    """Each image's boxes (original pixels) and the warnings of the answer (an image with no box)."""
    x = model.preprocessing.batch(images, size, resize, model.device)  # type: ignore[arg-type]
    dets = detect(model, x)
    answers, warnings = [], []
    for i, (img, det) in enumerate(zip(images, dets, strict=True)):
        found = answer_detections(model, det, (size, size), tuple(img.shape[-2:]), score_threshold, top_k)
        if not found:
            warnings.append(f"image {i}: the detector found no box" + (f" scoring at least {score_threshold}"
                                                                       if score_threshold > 0 and len(det) else ""))
        answers.append(found)
    return answers, warnings
