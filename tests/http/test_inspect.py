"""Inline views of model internals: first-layer filters and activation maps."""

from __future__ import annotations

import base64
import io
import json

import pytest
import torch
from conftest import to_tensor
from PIL import Image

pytestmark = pytest.mark.model
URL = "/v1/models/efficientnet-lite0/inspect"


def test_filters_grid(client, lite0):
    r = client.post(f"{URL}/filters", json={"params": {"scale": 4}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["layer"] == "_conv_stem" and body["shape"] == [32, 3, 3, 3]
    grid = Image.open(io.BytesIO(base64.b64decode(body["grid_png"])))
    # 32 tiles of 12 px in a 6x6 grid with 2 px padding.
    assert grid.size == (6 * 12 + 7 * 2, 6 * 12 + 7 * 2)
    # Each filter uses its full range: every tile has a black and a white channel value.
    arr = torch.from_numpy(__import__("numpy").asarray(grid).copy())
    tile = arr[2:14, 2:14]
    assert int(tile.min()) == 0 and int(tile.max()) == 255


def test_activations_strongest_channels(client, lite0, chelsea, chelsea_jpeg):
    r = client.post(f"{URL}/activations", files=[("image", ("c.jpg", chelsea_jpeg))],
                    data={"params": json.dumps({"layer": "_blocks.10", "top": 5, "values": True})})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["shape"] == [112, 14, 14]
    means = [c["mean"] for c in body["channels"]]
    assert means == sorted(means, reverse=True) and len(means) == 5
    # Compare with a direct forward on the same (JPEG-decoded) image.
    store = {}
    h = lite0.submodule("_blocks.10").register_forward_hook(lambda m, i, o: store.setdefault("a", o))
    try:
        img = to_tensor(__import__("numpy").asarray(Image.open(io.BytesIO(chelsea_jpeg)).convert("RGB")))
        with torch.no_grad():
            lite0.module(lite0.preprocessing.batch([img]))
    finally:
        h.remove()
    a = store["a"][0]
    top = a.flatten(1).mean(1).argsort(descending=True)[:5].tolist()
    assert [c["channel"] for c in body["channels"]] == top
    ch = body["channels"][0]
    assert torch.allclose(torch.tensor(ch["values"]), a[ch["channel"]], atol=1e-4)


def test_inspect_errors(client, chelsea_jpeg):
    r = client.post(f"{URL}/nope", json={})
    assert r.status_code == 404 and r.json()["type"].endswith("unknown-view")
    r = client.post(f"{URL}/filters", json={"params": {"layer": "act_head"}})
    assert r.status_code == 422 and "_conv_stem" in r.json()["choices"]
    r = client.post(f"{URL}/activations", json={"params": {}})
    assert r.status_code == 422 and r.json()["type"].endswith("missing-image")
    r = client.post(f"{URL}/activations", files=[("image", ("c.jpg", chelsea_jpeg))],
                    data={"params": json.dumps({"channels": [5000], "layer": "_blocks.10"})})
    assert r.status_code == 422 and r.json()["type"].endswith("unknown-channel")


def _files(*images: bytes) -> list:
    return [("image", (f"i{i}.jpg", b)) for i, b in enumerate(images)]


def test_embed_and_verify(client, chelsea, coffee):
    from conftest import encode

    cat, flipped, cup = encode(chelsea), encode(chelsea[:, ::-1].copy()), encode(coffee)
    r = client.post(f"{URL}/embed", files=_files(cat, cup), data={"params": json.dumps({"layer": "_blocks.15"})})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["layer"] == "_blocks.15" and body["dim"] == 320 and len(body["embeddings"]) == 2
    assert abs(sum(v * v for v in body["embeddings"][0]) - 1) < 1e-4  # L2-normalized
    same = client.post(f"{URL}/verify", files=_files(cat, flipped)).json()
    other = client.post(f"{URL}/verify", files=_files(cat, cup)).json()
    assert same["distance"] < other["distance"]
    assert same["same"] and not other["same"]
    r = client.post(f"{URL}/verify", files=_files(cat))
    assert r.status_code == 422 and r.json()["type"].endswith("missing-image")
    r = client.post(f"{URL}/verify", files=_files(cat, cat, cat))
    assert r.status_code == 413 and r.json()["type"].endswith("too-many-images")
    r = client.post(f"{URL}/embed", files=_files(cat), data={"params": json.dumps({"layer": "nope"})})
    assert r.status_code == 422 and r.json()["type"].endswith("unknown-layer")


def test_invariance_curves(client, chelsea_jpeg):
    params = {"shifts": [0, 16], "scales": [1.0, 0.6], "rotations": [0, 90], "resolution": 96}
    r = client.post(f"{URL}/invariance", files=_files(chelsea_jpeg), data={"params": json.dumps(params)})
    assert r.status_code == 200, r.text
    curves = r.json()["curves"]
    assert curves["rotation"]["distance"][0] == 0 and curves["rotation"]["distance"][1] > 0
    assert Image.open(io.BytesIO(base64.b64decode(r.json()["plot_png"]))).size[0] > 100
    r = client.post(f"{URL}/invariance", files=_files(chelsea_jpeg), data={"params": json.dumps({"scales": [50]})})
    assert r.status_code == 422
