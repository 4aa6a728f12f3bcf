"""Region targets of a segmenter (Seg-Grad-CAM): the score, the maps and the geometry, each against a plain loop."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from tiny import wrap

from cnnviz.attribution import RegionTargets, get_method
from cnnviz.errors import EngineError
from cnnviz.localization.polygons import box_polygon, mask_outline, polygon_mask
from cnnviz.metrics import energy_in_mask, mask_pointing_game
from cnnviz.render.regions import draw_region, label_map_png
from cnnviz.synthetic.segmenter import SceneSegmenter
from core.segmenting import label_map

SIZE = 24


def _segmenter(seed: int = 0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = SceneSegmenter(num_classes=4, width=4)
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
        net.classifier.bias.data = torch.tensor([0.0, 0.1, -0.1, 0.05])
    model = wrap(net, name="seg", size=SIZE, num_classes=4, default_layer="backbone.stage2")
    model.spec = dataclasses.replace(model.spec, task="segmentation")
    return model


def _images(n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def _box(n: int = 1) -> torch.Tensor:
    r = torch.zeros(n, SIZE, SIZE, dtype=torch.bool)
    r[:, 4:13, 6:17] = True
    return r


def test_region_score_is_the_class_logit_summed_over_the_region() -> None:
    model, x = _segmenter(), _images()
    with torch.no_grad():
        out = model.module(x)
    res = get_method("saliency").attribute(model, x, RegionTargets(indices=((1, 3),), regions=_box()))
    for i in range(2):
        for t, c in enumerate((1, 3)):
            want = sum(float(out[i, c, y, xx]) for y in range(4, 13) for xx in range(6, 17))
            assert abs(res.scores[i][t] - want) < 1e-3 * max(1.0, abs(want))
            assert res.probabilities[i][t] is None  # a sum over pixels has no probability
    pred = get_method("saliency").attribute(model, x, RegionTargets(top_k=1))
    labels = out.argmax(1)
    for i in range(2):
        c = pred.targets[i][0]
        want = sum(float(out[i, c, y, xx]) for y in range(SIZE) for xx in range(SIZE) if int(labels[i, y, xx]) == c)
        assert abs(pred.scores[i][0] - want) < 1e-3 * max(1.0, abs(want))


def test_top_k_ranks_classes_by_predicted_area_from_one_forward() -> None:
    model, x = _segmenter(), _images()
    calls = []
    handle = model.module.register_forward_hook(lambda *_: calls.append(1))
    try:
        res = get_method("gradcam").attribute(model, x, RegionTargets(top_k=3, skip=(0,)))
    finally:
        handle.remove()
    assert len(calls) == 1
    with torch.no_grad():
        labels = model.module(x).argmax(1)
    for i in range(2):
        counts = torch.bincount(labels[i].flatten(), minlength=4).tolist()
        want = sorted((c for c in range(1, 4) if counts[c]), key=lambda c: (-counts[c], c))[:3] or [0]
        assert res.targets[i] == want


def test_gradcam_of_a_region_equals_grad_cam_of_the_summed_logit() -> None:
    model, x = _segmenter(), _images()
    res = get_method("gradcam").attribute(model, x, RegionTargets(indices=((2,),), regions=_box()),
                                          layer="backbone.stage2")
    acts = {}
    handle = model.module.backbone.stage2.register_forward_hook(lambda _m, _i, o: acts.setdefault("a", o))
    try:
        with torch.enable_grad():
            xg = x.clone().requires_grad_(True)
            out = model.module(xg)
            a = acts["a"]
            score = (out[:, 2] * _box().float()).sum()
            (g,) = torch.autograd.grad(score, a)
    finally:
        handle.remove()
    want = F.relu((g.mean((2, 3))[:, :, None, None] * a).sum(1))
    for i in range(2):
        assert torch.allclose(res.maps[i][0], want[i].detach(), atol=1e-5, rtol=1e-4)


def test_batched_region_answers_equal_lone_ones() -> None:
    model, x = _segmenter(), _images(2, seed=1)
    for method, kw in (("gradcam", {}), ("saliency", {}), ("occlusion", {"window": 12, "stride": 12})):
        both = get_method(method).attribute(model, x, RegionTargets(top_k=2), **kw)
        for i in range(2):
            alone = get_method(method).attribute(model, x[i:i + 1], RegionTargets(top_k=2), **kw)
            assert both.targets[i] == alone.targets[0]
            for a, b in zip(both.maps[i], alone.maps[0], strict=True):
                assert torch.allclose(a, b, atol=1e-5, rtol=1e-4), method


def test_occlusion_of_a_region_equals_a_plain_loop() -> None:
    model, x = _segmenter(), _images(1)
    res = get_method("occlusion").attribute(model, x, RegionTargets(indices=((1,),), regions=_box()), window=12,
                                            stride=12, fill="zero")
    region = _box()[0].float()
    with torch.no_grad():
        base = float((model.module(x)[0, 1] * region).sum())
        black = model.preprocessing.normalize(torch.zeros(1, 3, SIZE, SIZE))
        want = torch.zeros(SIZE, SIZE)
        for y0 in (0, 12):
            for x0 in (0, 12):
                occluded = x.clone()
                occluded[..., y0:y0 + 12, x0:x0 + 12] = black[..., y0:y0 + 12, x0:x0 + 12]
                want[y0:y0 + 12, x0:x0 + 12] = base - float((model.module(occluded)[0, 1] * region).sum())
    assert torch.allclose(res.maps[0][0], want, atol=1e-3)


def test_a_class_predicted_nowhere_has_no_predicted_mask_to_explain() -> None:
    model, x = _segmenter(), _images(1)
    model.module.classifier.bias.data[3] -= 1e4  # class 3 can no longer win any pixel
    with torch.no_grad():
        assert not bool((model.module(x).argmax(1) == 3).any())
    with pytest.raises(EngineError) as exc:
        get_method("gradcam").attribute(model, x, RegionTargets(indices=((3,),)))
    assert exc.value.slug == "empty-region" and "class 3 is predicted nowhere" in str(exc.value)
    boxed = get_method("gradcam").attribute(model, x, RegionTargets(indices=((3,),), regions=_box()))
    assert boxed.targets == [[3]]  # a box still explains it: its logit summed over the box


def _inside(px: float, py: float, poly: list[tuple[float, float]]) -> bool:
    """Even-odd ray casting, one point at a time (the textbook loop)."""
    inside = False
    for (x0, y0), (x1, y1) in zip(poly, poly[1:] + poly[:1], strict=True):
        if (y0 > py) != (y1 > py) and px < x0 + (py - y0) * (x1 - x0) / (y1 - y0):
            inside = not inside
    return inside


def test_polygon_mask_equals_a_point_by_point_test_and_a_box_its_slice() -> None:
    poly = [(2.0, 3.5), (17.2, 1.0), (14.0, 15.3), (8.5, 9.0), (3.0, 16.0)]
    got = polygon_mask(poly, 18, 20)
    want = torch.tensor([[_inside(x + 0.5, y + 0.5, poly) for x in range(20)] for y in range(18)])
    assert torch.equal(got, want)
    box = polygon_mask(box_polygon((3, 2, 11, 9)), 12, 14)
    ref = torch.zeros(12, 14, dtype=torch.bool)
    ref[2:9, 3:11] = True
    assert torch.equal(box, ref)


def test_label_map_equals_interpolate_then_argmax_and_survives_png() -> None:
    logits = torch.randn(5, 7, 9, generator=torch.Generator().manual_seed(3))
    want = F.interpolate(logits[None], size=(61, 45), mode="bilinear", align_corners=False)[0].argmax(0)
    assert torch.equal(label_map(logits, (61, 45), band=16), want)
    import io

    import numpy as np
    from PIL import Image

    back = np.asarray(Image.open(io.BytesIO(label_map_png(want))))
    assert np.array_equal(back, want.numpy())


def test_pointing_and_energy_inside_a_mask_equal_plain_loops() -> None:
    mask = torch.zeros(20, 30, dtype=torch.bool)
    mask[5:12, 8:20] = True
    m = torch.randn(10, 15, generator=torch.Generator().manual_seed(0))
    up = F.interpolate(m[None, None], size=(20, 30), mode="bilinear", align_corners=False)[0, 0]
    inside = sum(max(0.0, float(up[y, x])) for y in range(20) for x in range(30) if mask[y, x])
    total = sum(max(0.0, float(v)) for v in up.flatten())
    assert abs(energy_in_mask(m, mask) - inside / total) < 1e-5
    peak = torch.zeros(10, 15)
    peak[3, 5] = 1.0  # map pixel (5, 3) -> image pixel (11, 7): inside
    assert mask_pointing_game(peak, mask)
    peak = torch.zeros(10, 15)
    peak[8, 13] = 1.0  # -> (27, 17): outside, 7 px right of the mask and 5 px below
    assert not mask_pointing_game(peak, mask, tolerance=4) and mask_pointing_game(peak, mask, tolerance=8)


def test_region_outline_draws_only_the_border_band() -> None:
    img = torch.full((40, 50, 3), 100, dtype=torch.uint8)
    mask = torch.zeros(40, 50, dtype=torch.bool)
    mask[10:30, 15:40] = True
    out = draw_region(img, mask, None, width=2)
    changed = (out != img).any(-1)
    assert torch.equal(changed, mask_outline(mask, 3))  # the white band and its dark inner edge, nothing else
    assert (out[mask_outline(mask, 2)] == 255).all()
