"""A detector over HTTP (issue 25): predict's boxes, box targets on the explain route, and the 422s that name them."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[2] / "models" / "shapes"
URL = "/v1/models/shapes"


@pytest.fixture(scope="module")
def client():
    from fastapi.testclient import TestClient

    from core.settings import Settings
    from service.app import create_app

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # a 64 px detector: one thread; two wait on each other on a contended CPU
    app = create_app(Settings(models_file=str(ROOT / "models.toml"), default_model="shapes", preload_models=False,
                              redis_url=None, api_keys=[], torch_threads=1, inline_slots=1))
    with TestClient(app) as c:
        yield c
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def scene() -> bytes:
    """Held-out scene 0, upscaled to 128 x 96 so that original pixels differ from the network's 64."""
    buf = io.BytesIO()
    Image.open(ROOT / "scenes" / "scene-0.png").resize((128, 96), Image.NEAREST).save(buf, "PNG")
    return buf.getvalue()


def post(client, path, image, params=None, headers=None):
    data = {"params": json.dumps(params)} if params is not None else None
    return client.post(path, files=[("image", ("s.png", image, "image/png"))], data=data, headers=headers or {})


def problem(r, status, slug):
    assert r.status_code == status, r.text
    body = r.json()
    assert body["type"].endswith("/" + slug), body
    return body


def test_model_detail_says_the_task_and_the_methods(client):
    d = client.get(URL).json()
    assert d["task"] == "detection" and d["default_layer"] == "neck"
    assert {"drise", "gradcam", "eigencam", "saliency", "occlusion"} <= set(d["methods"])
    assert "rise" not in d["methods"] and "scorecam" not in d["methods"]


def test_predict_answers_boxes_in_original_pixels(client, scene):
    truth = json.loads((ROOT / "scenes" / "truth.json").read_text())[0]
    r = post(client, f"{URL}/predict", scene, {"score_threshold": 0.3})
    assert r.status_code == 200, r.text
    body = r.json()
    dets = body["images"][0]["detections"]
    assert body["task"] == "detection" and not body["warnings"]
    assert sorted(d["label"] for d in dets) == sorted(truth["labels"])
    for box, label in zip(truth["boxes"], truth["labels"], strict=True):
        want = [box[0] * 2, box[1] * 1.5, box[2] * 2, box[3] * 1.5]  # 64 -> 128 wide, 64 -> 96 high
        same = [d for d in dets if d["label"] == label]
        best = min(same, key=lambda d, want=want: sum(abs(a - b) for a, b in zip(d["box"], want, strict=True)))
        assert all(abs(a - b) <= 6 for a, b in zip(best["box"], want, strict=True)), (best, want)
    assert [d["index"] for d in dets] == sorted(d["index"] for d in dets)


def test_a_detector_that_finds_nothing_answers_200_with_a_warning(client):
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (128, 128, 128)).save(buf, "PNG")
    r = post(client, f"{URL}/predict", buf.getvalue(), {"score_threshold": 0.99})
    assert r.status_code == 200, r.text
    assert r.json()["images"][0]["detections"] == [] and "no box" in r.json()["warnings"][0]


def test_explain_a_box_answers_its_box_label_and_overlay(client, scene):
    pred = post(client, f"{URL}/predict", scene, {"score_threshold": 0.3}).json()["images"][0]["detections"]
    r = post(client, f"{URL}/explain/drise", scene, {"masks": 40, "cell": 8, "box": {"index": [1]},
                                                       "faithfulness": {"steps": 4}})
    assert r.status_code == 200, r.text
    e = r.json()["images"][0]["explanations"][0]
    t = e["target"]
    assert t["kind"] == "box" and t["detection"] == 1 and t["label"] == pred[1]["label"]
    assert t["box"] == pytest.approx(pred[1]["box"], abs=0.05) and t["score"] == pytest.approx(pred[1]["score"])
    assert e["overlay_png"] and e["map"]["shape"] == [64, 64]
    f = e["faithfulness"]
    assert f["pointing_hit"] is not None and 0 <= f["energy_in_box"] <= 1 and len(f["deletion_curve"]) == 5
    # the unperturbed image is the box's own detection: similarity 1 at the start of deletion
    assert f["deletion_curve"][0] == pytest.approx(1.0, abs=1e-4)


def test_top_k_boxes_and_a_reference_box(client, scene):
    r = post(client, f"{URL}/explain/gradcam", scene, {"box": {"top_k": 3}})
    assert r.status_code == 200, r.text
    assert [e["target"]["detection"] for e in r.json()["images"][0]["explanations"]] == [0, 1, 2]
    ref = {"box": [40, 6, 92, 40], "label": "square"}
    r = post(client, f"{URL}/explain/eigencam", scene, {"box": {"reference": [ref]}})
    assert r.status_code == 200, r.text
    t = r.json()["images"][0]["explanations"][0]["target"]
    assert t["box"] == pytest.approx([40, 6, 92, 40]) and t["detection"] is None and t["label"] == "square"
    png = post(client, f"{URL}/explain/gradcam", scene, {"box": {"top_k": 2}}, headers={"accept": "image/png"})
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"


def test_bad_box_targets_are_422s_that_name_the_problem(client, scene):
    body = problem(post(client, f"{URL}/explain/gradcam", scene, {"box": {"index": [40]}}), 422, "box-out-of-range")
    assert "16 detections" in body["detail"]
    problem(post(client, f"{URL}/explain/gradcam", scene, {"box": {"reference": [{"box": [5, 5, 5, 9], "label": 1}]}}),
            422, "invalid-parameters")
    body = problem(post(client, f"{URL}/explain/gradcam", scene, {"box": {"reference": [{"box": [1, 1, 9, 9],
                                                                                         "label": "hexagon"}]}}),
                   422, "unknown-class")
    assert "circle" in body["choices"]
    problem(post(client, f"{URL}/explain/rise", scene, {"masks": 4}), 422, "task-unsupported")
    problem(post(client, f"{URL}/explain/gradcam", scene, {"target": 1}), 422, "task-mismatch")
    body = problem(post(client, "/v1/models/efficientnet-lite0/explain/gradcam", scene, {"box": {"top_k": 1}}),
                   422, "task-mismatch")
    assert "classification" in body["detail"]
