"""A segmenter over HTTP: predict's label map and class areas, region targets, and the 422s of region targets.

The segmenter is the one the repository trains on its synthetic scenes (models/shapes), explaining a
committed held-out scene stretched to an odd size, so every answer's "original size" is not the network's.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import encode
from PIL import Image

from cnnviz.localization.polygons import polygon_mask

SCENES = Path(__file__).resolve().parents[2] / "models" / "shapes"
W, H = 96, 80  # the held-out scene resized: original pixels differ from the network's 64 x 64


@pytest.fixture(scope="module")
def client():
    from fastapi.testclient import TestClient

    from core.settings import Settings
    from service.app import create_app

    app = create_app(Settings(models_file=str(SCENES / "models.toml"), default_model="shapes-segmenter",
                              preload_models=False, redis_url=None, api_keys=[]))
    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="module")
def scene() -> bytes:
    img = Image.open(SCENES / "segmenter-scenes" / "scene-0.png").convert("RGB").resize((W, H), Image.BILINEAR)
    return encode(np.asarray(img), "PNG")


def post(client, path, image, params=None):
    data = {"params": json.dumps(params)} if params is not None else None
    return client.post(path, files=[("image", ("scene.png", image, "application/octet-stream"))], data=data)


def problem(r, status, slug):
    assert r.status_code == status, r.text
    body = r.json()
    assert body["type"].endswith("/" + slug), body
    return body


def _png(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))))


def test_predict_answers_the_label_map_at_the_original_size_with_each_class_area(client, scene):
    r = post(client, "/v1/models/shapes-segmenter/predict", scene, {"masks": True})
    assert r.status_code == 200, r.text
    seg = r.json()["images"][0]["segmentation"]
    labels = _png(seg["label_map_png"])
    assert labels.shape == (H, W)
    counts = np.bincount(labels.flatten(), minlength=4)
    assert {c["index"]: c["pixels"] for c in seg["classes"]} == {i: int(n) for i, n in enumerate(counts) if n}
    assert sum(c["pixels"] for c in seg["classes"]) == W * H
    assert abs(sum(c["fraction"] for c in seg["classes"]) - 1) < 1e-6
    assert len(seg["classes"]) >= 2  # the background and at least one shape
    for m in seg["masks"]:
        assert np.array_equal(_png(m["mask_png"]) > 0, labels == m["index"])


def test_region_target_of_the_predicted_mask_answers_region_outline_and_pointing(client, scene):
    r = post(client, "/v1/models/shapes-segmenter/explain/gradcam", scene,
             {"region": {"top_k": 2}, "faithfulness": {}, "output": {"format": "png"}})
    assert r.status_code == 200, r.text
    body = r.json()
    labels = _png(post(client, "/v1/models/shapes-segmenter/predict", scene).json()["images"][0]["segmentation"]
                  ["label_map_png"])
    exps = body["images"][0]["explanations"]
    assert [e["target"]["kind"] for e in exps] == ["region"] * len(exps) and exps
    for e in exps:
        t, reg = e["target"], e["region"]
        assert t["label"] in ("circle", "square", "triangle") and t["probability"] is None
        assert reg["source"] == "predicted" and reg["area"] == int((labels == t["index"]).sum())
        assert reg["predicted_fraction"] == 1.0
        assert 0 <= e["faithfulness"]["energy_in_region"] <= 1 and e["faithfulness"]["deletion_auc"] is None
        assert _png(e["overlay_png"]).shape[:2] == (H, W)


def test_box_and_polygon_regions_cover_exactly_their_pixels(client, scene):
    poly = [[10, 8], [70, 12], [50, 60]]
    for region, mask in (({"target": 1, "box": [5, 10, 60, 50]}, polygon_mask([(5, 10), (60, 10), (60, 50), (5, 50)],
                                                                               H, W)),
                         ({"target": 2, "polygon": poly}, polygon_mask([tuple(p) for p in poly], H, W))):
        r = post(client, "/v1/models/shapes-segmenter/explain/saliency", scene,
                 {"region": region, "output": {"overlay": False, "heatmap": False}})
        assert r.status_code == 200, r.text
        e = r.json()["images"][0]["explanations"][0]
        assert e["region"]["area"] == int(mask.sum()) and e["target"]["index"] == region["target"]
        assert e["region"]["source"] == ("box" if "box" in region else "polygon")


@pytest.mark.parametrize(("model", "method", "params", "status", "slug", "says"), [
    ("shapes-segmenter", "gradcam", {"target": 1}, 422, "task-mismatch", "segmenter"),
    ("shapes-segmenter", "gradcam", {"region": {"target": 9}}, 422, "unknown-class", "0..3"),
    ("shapes-segmenter", "gradcam", {"region": {"target": 1, "polygon": [[1, 1], [5, 5], [9, 9]]}}, 422,
     "empty-region", "no pixel"),
    ("shapes-segmenter", "gradcam", {"region": {"target": 1, "polygon": [[1, 1], [500, 5], [9, 30]]}}, 422,
     "region-out-of-bounds", "x 0..96"),
    ("shapes-segmenter", "gradcam", {"region": {"target": 1, "box": [0, 0, 97, 10]}}, 422, "region-out-of-bounds",
     "y 0..80"),
    ("shapes-segmenter", "scorecam", {"region": {"target": 1}}, 422, "task-unsupported", "segmentation"),
    ("shapes-segmenter", "gradcam", {"region": {"target": 1, "box": [0, 0, 5, 5], "polygon": [[0, 0], [1, 0],
                                                                                            [1, 1]]}},
     422, "invalid-parameters", "not both"),
])
def test_bad_region_requests_are_422_naming_task_and_bounds(client, scene, model, method, params, status, slug, says):
    body = problem(post(client, f"/v1/models/{model}/explain/{method}", scene, params), status, slug)
    assert says in json.dumps(body)


def test_a_class_predicted_nowhere_has_no_mask_to_explain(client):
    scene1 = (SCENES / "segmenter-scenes" / "scene-1.png").read_bytes()  # circles and squares, no triangle
    seg = post(client, "/v1/models/shapes-segmenter/predict", scene1).json()["images"][0]["segmentation"]
    assert 3 not in {c["index"] for c in seg["classes"]}
    body = problem(post(client, "/v1/models/shapes-segmenter/explain/gradcam", scene1,
                        {"region": {"target": 3}}), 422, "empty-region")
    assert "predicted nowhere" in body["detail"] and "[0, 1, 2]" in body["detail"]
