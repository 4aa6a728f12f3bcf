"""The serving protocols keep the native limits: authentication, the pixel budget, the image count, the
inline budget, the body's own bounds; each refusal in the protocol's ``{"error": ...}`` shape (issue 28)."""

from __future__ import annotations

import base64
import json
import struct

import numpy as np
import pytest
from conftest import encode

KEY = "proto-key"
MODEL = "efficientnet-lite0"


@pytest.fixture(scope="module")
def client(catalog):
    from fastapi.testclient import TestClient

    from core.settings import Settings
    from service.app import create_app

    # 2 x 64x48 images fit the pixel budget, 3 do not; Grad-CAM at 224 px (1.5 passes) is over the inline budget.
    app = create_app(Settings(api_keys=[KEY], max_request_pixels=2 * 64 * 48, inline_budget=1.2, redis_url=None,
                              preload_models=False, compile_predict=False, max_images=4), catalog=catalog)
    with TestClient(app, headers={"X-API-Key": KEY}) as c:
        yield c


@pytest.fixture(scope="module")
def png(chelsea) -> bytes:
    from PIL import Image

    return encode(np.asarray(Image.fromarray(chelsea).resize((64, 48))), "PNG")


def v1(client, png, n, verb="predict", params=None, headers=None):
    return client.post(f"/v1/models/{MODEL}:{verb}", headers=headers, json={
        "instances": [{"b64": base64.b64encode(png).decode()}] * n, "parameters": params or {"resolution": 64}})


def v2(client, png, n, params=None, headers=None):
    return client.post(f"/v2/models/{MODEL}/infer", headers=headers, json={"inputs": [{
        "name": "image", "datatype": "BYTES", "shape": [n], "data": [base64.b64encode(png).decode()] * n}],
        "parameters": params or {"resolution": 64}})


def error(r, status: int, slug: str) -> str:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json" and set(r.json()) == {"error"}, r.text
    assert f"[{slug}]" in r.json()["error"], r.json()
    return r.json()["error"]


def test_auth_on_every_protocol_route_but_health(client, png) -> None:
    bad = {"X-API-Key": "wrong"}
    error(v1(client, png, 1, headers=bad), 401, "unauthorized")
    error(v1(client, png, 1, "explain", {"method": "gradcam"}, headers=bad), 401, "unauthorized")
    error(v2(client, png, 1, headers=bad), 401, "unauthorized")
    for path in ("/v2", f"/v2/models/{MODEL}", f"/v2/models/{MODEL}/ready"):
        error(client.get(path, headers=bad), 401, "unauthorized")
    assert client.get("/v2/health/live", headers=bad).json() == {"live": True}  # probes carry no key
    assert client.get("/v2/health/ready", headers=bad).status_code in (200, 503)


def test_pixel_budget_and_image_count(client, png) -> None:
    assert v1(client, png, 2).status_code == 200 and v2(client, png, 2).status_code == 200
    assert "budget is 6144 pixels" in error(v1(client, png, 3), 413, "request-too-many-pixels")
    error(v2(client, png, 3), 413, "request-too-many-pixels")
    error(v1(client, png, 5), 413, "too-many-images")
    px = {"name": "input", "datatype": "FP32", "shape": [3, 3, 48, 64], "data": [0.5] * (3 * 3 * 48 * 64)}
    error(client.post(f"/v2/models/{MODEL}/infer", json={"inputs": [px]}), 413, "request-too-many-pixels")
    px = {"name": "input", "datatype": "FP32", "shape": [1, 3, 8, 8], "data": [2.0] * 192}
    error(client.post(f"/v2/models/{MODEL}/infer", json={"inputs": [px]}), 422, "invalid-tensor")


def test_inline_budget(client, png) -> None:
    # Without a job system the V1 explain over the budget is refused as natively; V2 has no async form.
    assert "budget 1" in error(v1(client, png, 1, "explain", {"method": "gradcam"}), 422, "over-inline-budget")
    error(v2(client, png, 1, {"method": "gradcam"}), 422, "over-inline-budget")
    error(v1(client, png, 1, "predict", {"explain": {"method": "gradcam"}}), 422, "over-inline-budget")
    assert v2(client, png, 1, {"method": "gradcam", "resolution": 64}).status_code == 200


def test_bad_bodies(client, png) -> None:
    error(client.post(f"/v1/models/{MODEL}:predict", json={"images": []}), 422, "invalid-instances")
    error(client.post(f"/v1/models/{MODEL}:predict", json={"instances": [{"url": "x"}]}), 422, "invalid-instance")
    error(client.post(f"/v1/models/{MODEL}:predict", content=b"{", headers={"content-type": "application/json"}),
          422, "invalid-json")
    error(client.post("/v1/models/nope:predict", json={"instances": []}), 404, "unknown-model")
    error(v2(client, png, 1, {"method": "saliency", "resolution": 64, "layer": "nope"}), 422, "unknown-layer")
    error(v2(client, png, 1, {"resolution": 64, "tpo_k": 3}), 422, "invalid-parameters")
    error(client.post(f"/v2/models/{MODEL}/infer", json={"inputs": [{"name": "image", "datatype": "BYTES",
                                                                     "shape": [2], "data": ["a"]}]}),
          422, "invalid-tensor")
    # The binary extension: a header length past the body, an element running past its data.
    head = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                                   "parameters": {"binary_data_size": 8}}]}).encode()
    body = head + struct.pack("<I", 100) + b"abcd"
    r = client.post(f"/v2/models/{MODEL}/infer", content=body,
                    headers={"Inference-Header-Content-Length": str(len(head))})
    error(r, 400, "invalid-tensor")
    r = client.post(f"/v2/models/{MODEL}/infer", content=body, headers={"Inference-Header-Content-Length": "9999"})
    error(r, 400, "invalid-infer-request")
    r = client.post(f"/v2/models/{MODEL}/infer", json={"inputs": [{"name": "image", "datatype": "BYTES",
                    "shape": [1], "data": [base64.b64encode(png).decode()]}], "outputs": [{"name": "heatmap"}]})
    assert "probabilities" in error(r, 422, "unknown-output")
