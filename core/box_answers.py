"""What an explanation of a detector's box answers besides its map: the box, its label, its faithfulness.

The engine resolves box targets against one forward (``Explanation.extras["boxes"]``, network-input
pixels); here each becomes the answer's :class:`TargetInfo` in the original image's pixels, the
caption drawn on its overlay, and its faithfulness numbers: the pointing game and the
energy-based pointing game inside the box, and deletion / insertion of the box's D-RISE
similarity (the black-box score of cnnviz/attribution/boxes.py) as pixels go or come back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch

from cnnviz.attribution import BoxTargets
from cnnviz.attribution.boxes import box_scores
from cnnviz.metrics import deletion_insertion, energy_in_box, pointing_game
from cnnviz.models import LoadedModel
from core.schemas.explain import ExplainParams, Faithfulness, TargetInfo


def box_info(model: LoadedModel, described: dict[str, Any], input_hw: tuple[int, int],
             orig_hw: tuple[int, int]) -> TargetInfo:
    """The answer's target for one resolved box (its box scaled from network-input to original pixels)."""
    sy, sx = orig_hw[0] / input_hw[0], orig_hw[1] / input_hw[1]
    x0, y0, x1, y1 = described["box"]
    c = int(described["label"])
    return TargetInfo(kind="box", index=c, label=model.labels[c] if 0 <= c < len(model.labels) else str(c),
                      score=float(described["score"]), detection=described["index"],
                      box=(round(x0 * sx, 2), round(y0 * sy, 2), round(x1 * sx, 2), round(y1 * sy, 2)))


def box_label(info: TargetInfo) -> tuple[tuple[float, float, float, float], str]:
    """The box and the caption drawn on the overlay: ``#rank label score``."""
    assert info.box is not None
    rank = f"#{info.detection} " if info.detection is not None else ""
    return info.box, f"{rank}{info.label} {info.score:.2f}"


def _pixel_box(box: tuple[float, float, float, float]) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = box
    return int(x0), int(y0), max(int(x0) + 1, round(x1)), max(int(y0) + 1, round(y1))


def similarity_score(model: LoadedModel, targets: BoxTargets, image: int,
                     t: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """Deletion/insertion score of one box: the D-RISE similarity of a batch's detections to it."""
    assert targets.resolved is not None
    one = replace(targets, resolved=(targets.resolved[image][t:t + 1],))
    prep = model.preprocessing

    def score_fn(batch: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            out = model.module(prep.normalize(batch))
            return box_scores(model, out, batch.shape[0], one, "similarity")[:, 0]

    return score_fn


def box_faithfulness(model: LoadedModel, x_pix: torch.Tensor, raw: torch.Tensor, targets: BoxTargets, image: int,
                     t: int, info: TargetInfo, params: ExplainParams, orig_hw: tuple[int, int]) -> Faithfulness:
    """Pointing game (with the request's tolerance) and energy inside the explained box (or the request's
    own ``faithfulness.box``), and deletion / insertion of the box's similarity."""
    fp = params.faithfulness
    assert fp is not None and info.box is not None
    box = fp.box if fp.box is not None else _pixel_box(info.box)
    out = Faithfulness(pointing_hit=bool(pointing_game(raw, box, orig_hw, tolerance=fp.tolerance)),
                       energy_in_box=energy_in_box(raw, box, orig_hw))
    if fp.deletion_insertion:
        res = deletion_insertion(similarity_score(model, targets, image, t), x_pix, raw.to(x_pix.device),
                                 steps=fp.steps)
        out.deletion_auc, out.insertion_auc = res.deletion_auc, res.insertion_auc
        out.deletion_curve, out.insertion_curve = res.deletion_curve, res.insertion_curve
    return out
