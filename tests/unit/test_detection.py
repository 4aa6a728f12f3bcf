"""Box targets and D-RISE (issue 25) on a small seeded detector: the engine against plain loops."""

from __future__ import annotations

import math

import pytest
import torch
from tiny import tiny_model

from cnnviz.attribution import BoxTargets, EngineError, get_method
from cnnviz.attribution.boxes import box_iou, box_scores
from cnnviz.attribution.perturbation import rise_masks
from cnnviz.metrics import energy_in_box
from cnnviz.models import ModelSpec, load_model
from cnnviz.models.tasks import read_detections
from cnnviz.synthetic.scenes import LABELS

SIZE = 32
OUTPUTS = (("boxes", "0"), ("class_scores", "3"), ("labels", "2"), ("scores", "1"))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny inputs gain nothing from a second thread, and on a contended CPU an OpenMP team of two
    waits on itself: a 32 px forward took 0.9 s on 2 threads and 0.05 s on one here."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def detector():
    torch.manual_seed(0)
    spec = ModelSpec(name="shapes", arch="factory:cnnviz.synthetic.detector:build", weights="", task="detection",
                     input_size=SIZE, labels=LABELS, num_classes=len(LABELS), mean=(0, 0, 0), std=(1, 1, 1),
                     outputs=OUTPUTS, kwargs=(("max_detections", 6), ("width", 4)))
    return load_model(spec)


def _plain_similarity(det, ref) -> float:
    """D-RISE's similarity of one forward's detections to one reference, one pair at a time."""
    best = 0.0
    for k in range(len(det.boxes)):
        a, b = det.boxes[k].tolist(), ref.box
        iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - iw * ih
        iou = iw * ih / union if union > 0 else 0.0
        u, v = det.class_scores[k].tolist(), ref.vector
        cos = sum(p * q for p, q in zip(u, v, strict=True)) / (math.sqrt(sum(p * p for p in u)) *
                                                              math.sqrt(sum(q * q for q in v)))
        best = max(best, iou * cos)  # this detector has class vectors and no objectness
    return best


def test_drise_sweep_equals_one_mask_at_a_time(detector):
    x = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    params = {"masks": 6, "cell": 4, "p": 0.5, "seed": 3, "batch_size": 3}
    res = get_method("drise").attribute(detector, x, BoxTargets(top_k=3), **params)
    refs = res.extras["box_targets"].resolved[0]
    assert len(refs) == 3 and len(res.maps[0]) == 3
    # The same masks, drawn in the same chunks, then each applied and scored alone.
    gen = torch.Generator().manual_seed(3)
    masks = torch.cat([rise_masks(3, 4, 0.5, SIZE, SIZE, gen, x.device, x.dtype) for _ in range(2)])
    sims = torch.zeros(6, 3)
    for i, m in enumerate(masks):
        with torch.no_grad():
            (det,) = read_detections(detector.spec, detector.module(x * m), 1)
        for t, ref in enumerate(refs):
            sims[i, t] = _plain_similarity(det, ref)
    for t in range(3):  # each mask weighted by its similarity less the mean similarity
        want = sum((sims[i, t] - sims[:, t].mean()) * masks[i] for i in range(6)) / 6
        torch.testing.assert_close(res.maps[0][t], want, rtol=1e-4, atol=1e-6)


def test_match_score_is_the_sum_of_matching_detections(detector):
    x = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = detector.module(x)
    dets = read_detections(detector.spec, out, 2)
    # a reference on each image's best box, and one box no detection overlaps
    refs = ((((*dets[0].boxes[0].tolist(),), int(dets[0].labels[0])), ((0.0, 0.0, 1.0, 1.0), 1)),)
    from cnnviz.attribution.boxes import resolve_boxes

    targets = resolve_boxes(detector, x, BoxTargets(references=refs, iou_threshold=0.3))
    got = box_scores(detector, out, 2, targets, "match")  # [2 rows, 2 images x 2 refs]
    assert got.shape == (2, 4)
    for row in range(2):
        for col, ref in enumerate(r for image in targets.resolved for r in image):
            want = sum(float(dets[row].scores[k]) for k in range(len(dets[row].boxes))
                       if int(dets[row].labels[k]) == ref.label
                       and float(box_iou(dets[row].boxes[k:k + 1], torch.tensor([ref.box]))) >= 0.3)
            assert float(got[row, col]) == pytest.approx(want, abs=1e-6)
    assert float(got[0, 0]) >= float(dets[0].scores[0]) - 1e-6  # the box matches itself


@pytest.mark.parametrize("method", ["gradcam", "eigencam", "saliency", "occlusion"])
def test_box_targets_answer_on_each_family(detector, method):
    x = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(4))
    kw = {"window": 8, "stride": 8} if method == "occlusion" else {}
    res = get_method(method).attribute(detector, x, BoxTargets(indices=(0, 2)), **kw)
    assert [len(r) for r in res.maps] == [2, 2]
    boxes = res.extras["boxes"]
    assert [b["index"] for b in boxes[1]] == [0, 2]
    assert all(torch.isfinite(m).all() for row in res.maps for m in row)
    # the scores reported are the detections' own
    with torch.no_grad():
        dets = read_detections(detector.spec, detector.module(x), 2)
    top = dets[1].scores.sort(descending=True).values
    assert res.scores[1] == pytest.approx([float(top[0]), float(top[2])], abs=1e-6)


def test_gradcam_box_gradient_is_the_matching_scores_gradient(detector):
    """Grad-CAM of a box = Grad-CAM of the sum of the scores of the detections that match it."""
    x = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(5))
    res = get_method("gradcam").attribute(detector, x, BoxTargets(indices=(0,)))
    layer = res.layer
    ref = res.extras["box_targets"].resolved[0][0]
    acts = {}

    def leaf(_m, _i, o):  # the layer's output as a gradient leaf, as the CAM family takes it
        acts["a"] = o.detach().requires_grad_()
        return acts["a"]

    handle = detector.submodule(layer).register_forward_hook(leaf)
    with torch.enable_grad():
        out = detector.module(x)
    handle.remove()
    (det,) = read_detections(detector.spec, out, 1)
    match = [k for k in range(len(det.boxes)) if int(det.labels[k]) == ref.label
             and float(box_iou(det.boxes[k:k + 1].detach(), torch.tensor([ref.box]))) >= 0.5]
    score = sum(det.scores[k] for k in match)
    (g,) = torch.autograd.grad(score, acts["a"])
    want = torch.relu((g.mean(dim=(2, 3), keepdim=True) * acts["a"]).sum(1))[0].detach()
    torch.testing.assert_close(res.maps[0][0], want, rtol=1e-4, atol=1e-6)


def test_bad_box_targets_are_named(detector):
    x = torch.rand(1, 3, SIZE, SIZE)
    with pytest.raises(EngineError) as err:
        get_method("gradcam").attribute(detector, x, BoxTargets(indices=(99,)))
    assert err.value.slug == "box-out-of-range" and "6 detections" in str(err.value)
    with pytest.raises(EngineError) as err:
        get_method("gradcam").attribute(tiny_model(), torch.rand(1, 3, 32, 32), BoxTargets(top_k=1))
    assert err.value.slug == "task-unsupported" or err.value.slug == "task-mismatch"
    with pytest.raises(EngineError) as err:
        get_method("rise").attribute(detector, x, BoxTargets(top_k=1), masks=2)
    assert err.value.slug == "task-unsupported" and "detection" in str(err.value)
    with pytest.raises(EngineError) as err:
        get_method("drise").attribute(tiny_model(), torch.rand(1, 3, 32, 32), BoxTargets(top_k=1), masks=2)
    assert err.value.slug == "task-unsupported"


def test_energy_in_box_is_the_share_of_positive_mass():
    m = torch.zeros(4, 4)
    m[1, 1], m[3, 3], m[0, 3] = 3.0, 1.0, -5.0  # the negative cell counts for nothing
    # on an image of the map's own size: plain cell sums
    assert energy_in_box(m, (1, 1, 2, 2), (4, 4)) == pytest.approx(3 / 4)
    assert energy_in_box(m, (0, 0, 4, 4), (4, 4)) == pytest.approx(1.0)
    assert energy_in_box(torch.zeros(4, 4), (0, 0, 2, 2), (8, 8)) == 0.0
