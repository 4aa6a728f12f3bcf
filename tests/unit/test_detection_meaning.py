"""Meaning, tested for real (issue 25): the committed synthetic-scene detector, explained on held-out scenes.

models/shapes/ holds the detector trained by cnnviz/synthetic/train_detector.py (seed 0) and eight
scenes drawn from a seed the training never used, with their true boxes. Each true box is explained
as a reference box target; the pointing game asks whether the map's maximum falls inside it, with
the paper's 15 px tolerance at 224 px scaled to these 64 px scenes (4 px; at 0 px D-RISE scores 0.88).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnviz.attribution import BoxTargets, get_method
from cnnviz.attribution.boxes import box_iou
from cnnviz.metrics import pointing_game
from cnnviz.models import load_model, specs_from_file

ROOT = Path(__file__).resolve().parents[2] / "models" / "shapes"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """A 64 px detector gains nothing from a second thread; on a contended CPU the pair waits on itself."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def shapes():
    model = load_model(specs_from_file(ROOT / "models.toml")[0])
    truth = json.loads((ROOT / "scenes" / "truth.json").read_text())
    x = torch.stack([torch.from_numpy(np.asarray(Image.open(ROOT / "scenes" / t["file"]), dtype=np.float32) / 255)
                     .permute(2, 0, 1) for t in truth])
    refs = tuple(tuple((tuple(b), model.labels.index(lab)) for b, lab in zip(t["boxes"], t["labels"], strict=True))
                 for t in truth)
    return model, x, refs


def test_the_detector_finds_the_held_out_objects(shapes):
    model, x, refs = shapes
    with torch.no_grad():
        boxes, scores, labels, _ = model.module(x)
    found = 0
    for i, image in enumerate(refs):
        keep = scores[i] >= 0.3
        for box, label in image:
            iou = box_iou(torch.tensor([box]), boxes[i][keep])[0]
            found += bool(((iou >= 0.5) & (labels[i][keep] == label)).any())
    assert found == sum(len(r) for r in refs)


TOLERANCE = 4


def _pointing(model, x, refs, method, **kw) -> float:
    res = get_method(method).attribute(model, x, BoxTargets(references=refs), **kw)
    hits = [pointing_game(res.maps[i][j], tuple(int(v) for v in box), (64, 64), tolerance=TOLERANCE)
            for i, image in enumerate(refs) for j, (box, _) in enumerate(image)]
    return sum(hits) / len(hits)


def test_drise_points_inside_the_explained_box(shapes):
    model, x, refs = shapes
    assert _pointing(model, x, refs, "drise", masks=500, cell=8, batch_size=64) >= 0.9


def test_cam_methods_point_inside_the_explained_box(shapes):
    model, x, refs = shapes
    # HiResCAM keeps where the gradient is (the 1x1 heads read one cell): it points at the box every time.
    assert _pointing(model, x, refs, "hirescam") >= 0.9
    # Grad-CAM averages the gradient over the map, so another object of the same class lights up as much:
    # measured 0.68 here (docs/detection.md), below the 0.9.
    assert _pointing(model, x, refs, "gradcam") >= 0.6
