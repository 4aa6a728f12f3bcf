"""Model tasks (issue 25): the models file's ``task``, and detectors and segmenters loading like classifiers."""

from __future__ import annotations

import textwrap

import pytest
import torch
from torch import nn

from cnnviz.attribution.fast.folded import folded_module
from cnnviz.models import ModelLoadError, ModelSpec, load_model, specs_from_file
from cnnviz.models.tasks import read_detections, segmentation_logits
from cnnviz.synthetic import SHAPES, scene_batch

LABELS = ["__background__", "circle", "square", "triangle"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny inputs gain nothing from a second thread, and on a contended CPU an OpenMP team of two
    waits on itself: a 32 px forward took 0.9 s on 2 threads and 0.05 s on one here."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _toml(tmp_path, body: str):
    p = tmp_path / "models.toml"
    p.write_text(textwrap.dedent(body))
    return p


def test_task_defaults_and_multilabel_is_the_sigmoid_head(tmp_path):
    p = _toml(tmp_path, """
        [models.a]
        arch = "resnet18"
        weights = "a.pth"
        [models.b]
        arch = "resnet18"
        weights = "b.pth"
        head = "sigmoid"
        [models.c]
        arch = "resnet18"
        weights = "c.pth"
        task = "multilabel"
        [models.d]
        arch = "fasterrcnn_resnet50_fpn"
        weights = "d.pth"
        task = "detection"
    """)
    a, b, c, d = specs_from_file(p)
    assert (a.task, a.head) == ("classification", "softmax")
    assert (b.task, b.head) == ("multilabel", "sigmoid")
    assert (c.task, c.head) == ("multilabel", "sigmoid")
    assert d.task == "detection" and d.mean == (0, 0, 0) and d.std == (1, 1, 1)  # torchvision normalizes inside


@pytest.mark.parametrize("body, words", [
    ('task = "keypoints"', "task must be one of"),
    ('task = "detection"\nhead = "sigmoid"', "multilabel classifier"),
    ('outputs = { boxes = "0", labels = "1", scores = "2" }', "maps a detector's output"),
    ('task = "detection"\noutputs = { boxes = "0", scores = "2" }', "missing ['labels']"),
    ('task = "detection"\noutputs = { boxes = "0", labels = "1", scores = "2", masks = "3" }', "unknown ['masks']"),
    ('task = "segmentation"\nresize = "center-crop"', "stretching"),
])
def test_bad_task_entries_are_named(tmp_path, body, words):
    p = _toml(tmp_path, f'[models.m]\narch = "resnet18"\nweights = "m.pth"\n{body}\n')
    with pytest.raises(ModelLoadError, match="model 'm'") as err:
        specs_from_file(p)
    assert words in str(err.value)


def _saved(tmp_path, arch: str, **kw) -> str:
    from torchvision.models import get_model

    torch.manual_seed(0)
    net = get_model(arch, weights=None, weights_backbone=None, num_classes=len(LABELS), **kw)
    path = tmp_path / f"{arch}.pth"
    torch.save(net.state_dict(), path)
    return str(path)


@pytest.mark.parametrize("arch, task, kwargs, backbone", [
    ("fasterrcnn_mobilenet_v3_large_320_fpn", "detection", {"min_size": 64, "max_size": 64}, "backbone.body."),
    ("lraspp_mobilenet_v3_large", "segmentation", {}, "backbone."),
])
def test_torchvision_detector_and_segmenter_load_from_a_local_file(tmp_path, arch, task, kwargs, backbone):
    weights = _saved(tmp_path, arch, **kwargs)
    kw = "\n".join(f"{k} = {v}" for k, v in kwargs.items())
    p = _toml(tmp_path, f"""
        [models.m]
        task = "{task}"
        arch = "{arch}"
        weights = "{weights}"
        input_size = 64
        labels = {LABELS!r}
        [models.m.kwargs]
    """ + kw + "\n")
    model = load_model(specs_from_file(p)[0])
    assert model.task == task and not model.classifier and model.labels == tuple(LABELS)
    assert model.default_layer is not None and model.default_layer.startswith(backbone)
    assert model.gradients
    assert folded_module(model) is model.module  # the classification fast paths leave it alone
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        out = model.module(model.preprocessing.normalize(x))
    if task == "detection":
        dets = read_detections(model.spec, out, 2)
        assert len(dets) == 2 and all(d.boxes.shape[-1] == 4 for d in dets)
    else:
        assert segmentation_logits(out).shape == (2, len(LABELS), 64, 64)


class _TupleDetector(nn.Module):
    """A YOLO-style user detector: fixed K boxes per image as batched tensors in a tuple."""

    def __init__(self, classes: int = 3, k: int = 5) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, 2, 1), nn.ReLU())
        self.head = nn.Conv2d(8, classes + 4, 1)
        self.k = k

    def forward(self, x):
        f = self.head(self.backbone(x))  # [N, C+4, h, w]
        n, c4, h, w = f.shape
        cls = f[:, 4:].flatten(2).sigmoid()  # [N, C, hw]
        best, label = cls.max(1)
        score, idx = best.topk(self.k, 1)
        xy = torch.stack([idx % w, idx // w], -1).float() * (x.shape[-1] / w)
        size = f[:, :2].flatten(2).gather(2, idx[:, None].expand(n, 2, self.k)).transpose(1, 2).abs() * 8 + 4
        boxes = torch.cat([xy - size / 2, xy + size / 2], -1)
        return boxes, score, label.gather(1, idx), cls.gather(2, idx[:, None].expand(n, cls.shape[1], self.k))


def test_a_factory_detector_maps_its_output(tmp_path, monkeypatch):
    import sys
    import types

    mod = types.ModuleType("cnnviz_test_detectors")
    mod.build = lambda: _TupleDetector()  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "cnnviz_test_detectors", mod)
    spec = ModelSpec(name="yolo", arch="factory:cnnviz_test_detectors:build", weights="", task="detection",
                     input_size=32, labels=tuple(SHAPES), num_classes=3, mean=(0, 0, 0), std=(1, 1, 1),
                     outputs=(("boxes", "0"), ("labels", "2"), ("scores", "1")))
    model = load_model(spec)
    assert model.default_layer == "backbone"
    with torch.no_grad():
        out = model.module(torch.rand(3, 3, 32, 32))
    dets = read_detections(model.spec, out, 3)
    assert [len(d) for d in dets] == [5, 5, 5]
    assert torch.equal(dets[1].boxes, out[0][1]) and torch.equal(dets[2].labels, out[2][2])
    # unmapped, the tuple is no detections: the error says how to map it
    with pytest.raises(ModelLoadError, match="outputs ="):
        load_model(ModelSpec(name="raw", arch="factory:cnnviz_test_detectors:build", weights="", task="detection",
                             input_size=32, labels=tuple(SHAPES), num_classes=3))


def test_a_detector_declared_as_a_classifier_says_so(tmp_path):
    weights = _saved(tmp_path, "lraspp_mobilenet_v3_large")
    spec = ModelSpec(name="seg", arch="lraspp_mobilenet_v3_large", weights=weights, input_size=32,
                     num_classes=len(LABELS), declared=frozenset({"num_classes"}))
    with pytest.raises(ModelLoadError, match='task = "detection" or "segmentation"'):
        load_model(spec)


def test_scenes_are_seeded_and_their_truth_matches_the_pixels():
    a, b = scene_batch(3, 4, 64), scene_batch(3, 2, 64)
    assert all(torch.equal(x.image, y.image) for x, y in zip(a, b, strict=False))
    for s in a:
        assert 2 <= len(s.labels) <= 4 and s.image.shape == (3, 64, 64)
        for box, label in zip(s.boxes.long().tolist(), s.labels.tolist(), strict=True):
            x0, y0, x1, y1 = box
            inside = s.mask[y0:y1, x0:x1] == label  # the box is tight: the shape touches its four sides
            assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
