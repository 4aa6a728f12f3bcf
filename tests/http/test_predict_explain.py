"""Predict with ``explain`` (issue 28): the top classes are predict's own, and each map is the one the
explain route gives for that class; only CAM-family methods are offered."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import encode

MODEL = "efficientnet-lite0"


@pytest.fixture(scope="module")
def client(catalog):
    from fastapi.testclient import TestClient

    from core.settings import Settings
    from service.app import create_app

    app = create_app(Settings(redis_url=None, api_keys=[], preload_models=False, compile_predict=False),
                     catalog=catalog)
    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="module")
def png(chelsea) -> bytes:
    from PIL import Image

    return encode(np.asarray(Image.fromarray(chelsea).resize((64, 48))), "PNG")


def post(client, path, png, params):
    r = client.post(path, files=[("image", ("c.png", png)), ("image", ("d.png", png))],
                    data={"params": json.dumps(params)})
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.parametrize("method", ["gradcam", "cam"])
def test_predictions_and_maps_equal_predict_and_explain(client, png, method) -> None:
    base = {"top_k": 3, "resolution": 64}
    alone = post(client, f"/v1/models/{MODEL}/predict", png, base)
    both = post(client, f"/v1/models/{MODEL}/predict", png, {**base, "explain": {"method": method, "overlay": True}})
    exp = post(client, f"/v1/models/{MODEL}/explain/{method}", png,
               {**base, "output": {"raw": True, "heatmap": False, "overlay": False}})
    assert both["method"] == method and both["layer"] == exp["layer"] and "maps" not in alone["images"][0]
    for a, b, e in zip(alone["images"], both["images"], exp["images"], strict=True):
        assert [p["index"] for p in b["predictions"]] == [p["index"] for p in a["predictions"]]
        np.testing.assert_allclose([p["probability"] for p in b["predictions"]],
                                   [p["probability"] for p in a["predictions"]], rtol=1e-4)
        np.testing.assert_allclose([p["logit"] for p in b["predictions"]], [p["logit"] for p in a["predictions"]],
                                   rtol=1e-4, atol=1e-4)
        assert [m["index"] for m in b["maps"]] == [p["index"] for p in b["predictions"]]
        for m, want in zip(b["maps"], e["explanations"], strict=True):
            np.testing.assert_allclose(m["map"]["values"], want["map"]["values"], rtol=1e-4, atol=1e-6)
            assert m["overlay_png"]


def test_only_cam_methods_and_bounded_top_k(client, png) -> None:
    r = client.post(f"/v1/models/{MODEL}/predict", files=[("image", ("c.png", png))],
                    data={"params": json.dumps({"explain": {"method": "saliency"}})})
    assert r.status_code == 422 and r.json()["type"].endswith("/explain-not-cam") and "gradcam" in r.json()["choices"]
    r = client.post(f"/v1/models/{MODEL}/predict", files=[("image", ("c.png", png))],
                    data={"params": json.dumps({"top_k": 11, "explain": {"method": "gradcam"}})})
    assert r.status_code == 422 and "top_k" in r.text
    r = client.post(f"/v1/models/{MODEL}/predict", files=[("image", ("c.png", png))],
                    data={"params": json.dumps({"explain": {"method": "gradcam", "options": {"nope": 1}}})})
    assert r.status_code == 422 and "nope" in r.text
