"""The real pretrained EfficientNet-Lite0 on real photos: predictions and where the maps look."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import to_tensor

from cnnviz.attribution import ClassTargets, get_method
from cnnviz.localization import mask_to_regions, threshold_mask
from cnnviz.render import normalize_map, resize_map

pytestmark = pytest.mark.model

CAT_CLASSES = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat
# The cat's face in chelsea (451x300): eyes, nose and muzzle.
CAT_BOX = (60, 0, 400, 300)


def top1(model, arr) -> int:
    x = model.preprocessing.batch([to_tensor(arr)], device=model.device)
    with torch.no_grad():
        return int(model.module(x).argmax())


def test_chelsea_is_a_cat(lite0, chelsea):
    assert top1(lite0, chelsea) in CAT_CLASSES


def test_coffee_is_espresso_or_cup(lite0, coffee):
    assert lite0.labels[top1(lite0, coffee)] in {"espresso", "cup", "coffee mug"}


def _peak_xy(m: torch.Tensor, hw: tuple[int, int]) -> tuple[int, int]:
    up = resize_map(m, hw)
    y, x = divmod(int(up.argmax()), hw[1])
    return x, y


def _inside(xy, box) -> bool:
    return box[0] <= xy[0] < box[2] and box[1] <= xy[1] < box[3]


@pytest.fixture(scope="module")
def cat_on_canvas(chelsea):
    """The cat shrunk and pasted at a known spot of a grey canvas: a map must find *that* spot."""
    from PIL import Image

    canvas = np.full((448, 448, 3), 128, np.uint8)
    small = np.asarray(Image.fromarray(chelsea).resize((210, 140)))
    canvas[280:420, 220:430] = small
    return canvas, (220, 280, 430, 420)


@pytest.mark.parametrize("method", ["cam", "gradcam", "gradcampp", "xgradcam", "hirescam", "layercam",
                                    "eigencam", "ablationcam"])
def test_cam_family_peaks_on_the_cat(lite0, chelsea, cat_on_canvas, method):
    m = get_method(method)
    x = lite0.preprocessing.batch([to_tensor(chelsea)], device=lite0.device)
    r = m.attribute(lite0, x, ClassTargets(top_k=1))
    assert r.layer == lite0.default_layer
    assert r.targets[0][0] in CAT_CLASSES
    assert _inside(_peak_xy(r.maps[0][0], chelsea.shape[:2]), CAT_BOX)
    canvas, box = cat_on_canvas
    x = lite0.preprocessing.batch([to_tensor(canvas)], size=448, device=lite0.device)
    r = m.attribute(lite0, x, ClassTargets(top_k=1))
    assert _inside(_peak_xy(r.maps[0][0], canvas.shape[:2]), box)


def test_scorecam_peaks_on_the_cat_on_a_narrow_layer(lite0, cat_on_canvas):
    # Score-CAM costs one forward per channel: use the 320-channel block output to keep CI fast.
    canvas, box = cat_on_canvas
    x = lite0.preprocessing.batch([to_tensor(canvas)], size=256, device=lite0.device)
    r = get_method("scorecam").attribute(lite0, x, ClassTargets(top_k=1), layer="_blocks.15", batch_size=64)
    assert _inside(_peak_xy(r.maps[0][0], canvas.shape[:2]), box)


def test_gradcam_box_overlaps_the_cat(lite0, cat_on_canvas):
    canvas, box = cat_on_canvas
    x = lite0.preprocessing.batch([to_tensor(canvas)], size=448, device=lite0.device)
    r = get_method("gradcam").attribute(lite0, x, ClassTargets(top_k=1))
    m = normalize_map(resize_map(r.maps[0][0], canvas.shape[:2]), "minmax")
    regions = mask_to_regions(threshold_mask(m, "fraction", 0.5), m)
    b = regions[0].box
    inter = max(0, min(b[2], box[2]) - max(b[0], box[0])) * max(0, min(b[3], box[3]) - max(b[1], box[1]))
    union = (b[2] - b[0]) * (b[3] - b[1]) + (box[2] - box[0]) * (box[3] - box[1]) - inter
    assert inter / union > 0.3


def test_top_k_targets_share_one_forward(lite0, chelsea):
    calls = []
    h = lite0.module.register_forward_hook(lambda *a: calls.append(1))
    try:
        x = lite0.preprocessing.batch([to_tensor(chelsea)], device=lite0.device)
        r = get_method("gradcam").attribute(lite0, x, ClassTargets(top_k=3))
    finally:
        h.remove()
    assert len(calls) == 1
    assert len(r.maps[0]) == 3 and len(set(r.targets[0])) == 3
    assert r.probabilities[0] == sorted(r.probabilities[0], reverse=True)


def _smoothed_peak(m: torch.Tensor, hw: tuple[int, int], k: int = 9) -> tuple[int, int]:
    """Peak of the map after a k x k box filter: pixel-level maps are speckled, a single-pixel
    maximum says little; the smoothed peak is where the attribution mass sits."""
    s = torch.nn.functional.avg_pool2d(m[None, None], k, 1, k // 2, count_include_pad=False)[0, 0]
    return _peak_xy(s, hw)


PIXEL_METHODS = {
    "guided_backprop": {}, "input_x_gradient": {}, "guided_gradcam": {},
    "integrated_gradients": {"steps": 16, "adaptive": False}, "smoothgrad": {"samples": 8},
    "occlusion": {"window": 48, "stride": 24}, "rise": {"masks": 500, "batch_size": 16},
}


@pytest.mark.parametrize("method", sorted(PIXEL_METHODS))
def test_pixel_methods_peak_on_the_cat(lite0, chelsea, cat_on_canvas, method):
    m, params = get_method(method), PIXEL_METHODS[method]
    canvas, box = cat_on_canvas
    for img, where in ((chelsea, CAT_BOX), (canvas, box)):
        x = lite0.preprocessing.batch([to_tensor(img)], device=lite0.device)
        r = m.attribute(lite0, x, ClassTargets(top_k=1), **params)
        assert r.targets[0][0] in CAT_CLASSES
        assert _inside(_smoothed_peak(r.maps[0][0], img.shape[:2]), where), method


def test_saliency_concentrates_on_the_cat(lite0, cat_on_canvas):
    # Vanilla gradients are speckled (the reason SmoothGrad exists): check where the mass is, and
    # the pointing game with its usual 15 px tolerance.
    from cnnviz.metrics import pointing_game

    canvas, box = cat_on_canvas
    x = lite0.preprocessing.batch([to_tensor(canvas)], device=lite0.device)
    sal = get_method("saliency").attribute(lite0, x, ClassTargets(top_k=1)).maps[0][0]
    up = resize_map(sal, canvas.shape[:2])
    inside = torch.zeros_like(up, dtype=torch.bool)
    inside[box[1]:box[3], box[0]:box[2]] = True
    assert up[inside].mean() > 2 * up[~inside].mean()
    assert pointing_game(sal, box, canvas.shape[:2], tolerance=15)


def test_integrated_gradients_meets_completeness_by_default(lite0, chelsea):
    """The default (adaptive) IG sums to score(x) - score(black) within 2 %; the fixed 32-point rule did not."""
    img = torch.from_numpy(chelsea).permute(2, 0, 1).float() / 255
    x = lite0.preprocessing.normalize(lite0.preprocessing.fit(img, 224, "stretch")[None])
    ig = get_method("integrated_gradients")
    e = ig.attribute(lite0, x, ClassTargets(top_k=1), batch_size=16)
    rep = e.extras["completeness"][0][0]
    assert rep["adaptive"] and rep["relative_error"] <= 0.02 and rep["steps"] <= 120
    assert float(e.maps[0][0].sum()) == pytest.approx(rep["score_difference"], rel=0.025)
    fixed = ig.attribute(lite0, x, ClassTargets(top_k=1), steps=32, adaptive=False, batch_size=16)
    assert fixed.extras["completeness"][0][0]["relative_error"] > 0.02
