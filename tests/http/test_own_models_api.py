"""Your own model over HTTP (issue 17): one app whose models file declares a model of each source."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from conftest import encode
from own_models_kit import LABELS3, TAGS4, build_zoo

pytest.importorskip("timm")

# name: (Grad-CAM status and problem slug, gradient method status and slug)
SOURCES = {
    "tv": (200, 200),  # torchvision, labels file
    "vit": (200, 200),  # timm, token grid
    "mine": (200, 200),  # factory, sigmoid head
    "ts": ((422, "layer-unusable"), 200),  # TorchScript: backward works, layers are not observable
    "ts_nograd": ((422, "gradients-unavailable"), (422, "gradients-unavailable")),
    "exp": (200, 200),  # torch.export: the module tree is kept
    "exp_frozen": ((422, "gradients-unavailable"), (422, "gradients-unavailable")),  # gradients = false
}


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    from fastapi.testclient import TestClient

    from core.settings import Settings
    from service.app import create_app

    toml = build_zoo(tmp_path_factory.mktemp("zoo"))
    app = create_app(Settings(models_file=str(toml), default_model="tv", preload_models=False, redis_url=None,
                              api_keys=[]))
    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="module")
def image() -> bytes:
    rng = np.random.default_rng(0)
    return encode((rng.random((40, 48, 3)) * 255).astype(np.uint8), "PNG")


def post(client, path, image, params=None):
    data = {"params": json.dumps(params)} if params is not None else None
    return client.post(path, files=[("image", ("i.png", image, "application/octet-stream"))], data=data)


def check(r, expected):
    status, slug = (expected, None) if isinstance(expected, int) else expected
    assert r.status_code == status, r.text
    if slug:
        assert r.json()["type"].endswith("/" + slug), r.json()
    return r.json()


@pytest.mark.parametrize("name", list(SOURCES))
def test_each_source_answers(client, image, name):
    cam_expect, grad_expect = SOURCES[name]
    detail = client.get(f"/v1/models/{name}").json()
    pred = check(post(client, f"/v1/models/{name}/predict", image, {"top_k": 2}), 200)
    labels = [p["label"] for p in pred["images"][0]["predictions"]]
    assert len(labels) == 2 and set(labels) <= set(detail["labels"])
    cam = check(post(client, f"/v1/models/{name}/explain/gradcam", image, {"output": {"overlay": False}}), cam_expect)
    if cam_expect == 200:
        assert cam["layer"] == detail["default_layer"]
    check(post(client, f"/v1/models/{name}/explain/saliency", image, {"output": {"overlay": False}}), grad_expect)
    occ = check(post(client, f"/v1/models/{name}/explain/occlusion", image,
                     {"window": 16, "stride": 16, "output": {"overlay": False}}), 200)
    assert occ["images"][0]["explanations"][0]["map"]["shape"] == [detail["input_size"]] * 2
    assert ("gradcam" in detail["methods"]) == (cam_expect == 200)
    assert ("saliency" in detail["methods"]) == (grad_expect == 200)
    assert "occlusion" in detail["methods"] and "rise" in detail["methods"]


def test_labels_and_fine_tuned_head(client, image):
    detail = client.get("/v1/models/tv").json()
    assert detail["labels"] == list(LABELS3) and detail["num_labels"] == 3 and detail["default_layer"] == "layer4"
    pred = check(post(client, "/v1/models/tv/predict", image, {"top_k": 5}), 200)["images"][0]["predictions"]
    assert sorted(p["label"] for p in pred) == sorted(LABELS3)
    assert sum(p["probability"] for p in pred) == pytest.approx(1.0, abs=1e-5)
    exp = check(post(client, "/v1/models/tv/explain/gradcam", image, {"target": 2}), 200)
    assert exp["images"][0]["explanations"][0]["target"]["label"] == "bird"


def test_sigmoid_head_over_http(client, image):
    detail = client.get("/v1/models/mine").json()
    assert detail["head"] == "sigmoid" and detail["labels"] == list(TAGS4)
    pred = check(post(client, "/v1/models/mine/predict", image, {"top_k": 4}), 200)["images"][0]["predictions"]
    for p in pred:
        assert p["probability"] == pytest.approx(1 / (1 + math.exp(-p["logit"])), rel=1e-5)
    exp = check(post(client, "/v1/models/mine/explain/gradcam", image, {"top_k": 4}), 200)
    for e in exp["images"][0]["explanations"]:
        t = e["target"]
        assert t["probability"] == pytest.approx(1 / (1 + math.exp(-t["score"])), rel=1e-5)


def test_layer_table_and_unusable_layer(client, image):
    detail = client.get("/v1/models/vit").json()
    layers = {li["name"]: li for li in detail["layers"]}
    assert layers["blocks.1"]["grid"] == "tokens" and "cam" in layers["blocks.1"]["usable_by"]
    assert layers["head"]["grid"] is None and "cam" not in layers["head"]["usable_by"]
    assert "attention_rollout" in detail["methods"]
    r = post(client, "/v1/models/vit/explain/gradcam", image, {"layer": "blocks.0.attn.q_norm"})
    assert r.status_code == 422 and r.json()["type"].endswith("/layer-unusable")
    roll = check(post(client, "/v1/models/vit/explain/attention_rollout", image, {"discard_ratio": 0.5}), 200)
    assert roll["images"][0]["explanations"][0]["map"]["shape"] == [4, 4]
    r = post(client, "/v1/models/tv/explain/attention_rollout", image)
    assert r.status_code == 422 and r.json()["type"].endswith("/attention-unavailable")
    frozen = client.get("/v1/models/exp_frozen").json()
    assert frozen["gradients"] is False and {"scorecam", "eigencam"} <= set(frozen["methods"])
    ts = client.get("/v1/models/ts").json()
    assert ts["default_layer"] is None and all(li["usable_by"] == [] for li in ts["layers"])
    eig = check(post(client, "/v1/models/exp_frozen/explain/eigencam", image), 200)
    assert eig["images"][0]["explanations"][0]["map"]["shape"] == [8, 8]
