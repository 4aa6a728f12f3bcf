"""Layer sweeps of the CAM family on the real Lite0: one request, every layer's map equal to its lone one."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import torch
from conftest import encode, to_tensor
from PIL import Image

from cnnviz.attribution import ClassTargets, get_method
from cnnviz.models.blocks import main_blocks
from core.explaining import estimate_cost
from core.schemas.explain import MAX_SWEEP_LAYERS, params_model

pytestmark = pytest.mark.model

URL = "/v1/models/efficientnet-lite0"


def post(client, path, images, params=None, headers=None):
    files = [("image", (f"i{i}.png", data, "application/octet-stream")) for i, data in enumerate(images)]
    data = {"params": json.dumps(params)} if params is not None else None
    return client.post(path, files=files, data=data, headers=headers or {})


@pytest.fixture(scope="module")
def small_cat(chelsea) -> bytes:
    """Chelsea at 64x43: the sweep's pictures stay tiny, the maps real."""
    return encode(np.asarray(Image.fromarray(chelsea).resize((64, 43))), "PNG")


def test_blocks_of_lite0_are_its_stages(lite0):
    """The rule reads Lite0's stages off the layer table: the stem, the last block of each stage, the head."""
    blocks = main_blocks(lite0)
    assert blocks == ["act_stem", "_blocks.0", "_blocks.2", "_blocks.4", "_blocks.7", "_blocks.10", "_blocks.14",
                      "_blocks.15", "act_head"]
    shapes = [lite0.layer(n).output_shape for n in blocks]
    assert all(a != b for a, b in zip(shapes, shapes[1:], strict=False))  # each one a change of shape
    assert blocks[-1] == lite0.default_layer


@pytest.mark.parametrize("method, size", [("gradcam", 64), ("gradcampp", 64), ("eigencam", 32)])
def test_each_layer_equals_its_lone_request(lite0, chelsea, method, size):
    """One forward and one backward per target give every layer the map its lone request gives."""
    m = get_method(method)
    x = lite0.preprocessing.batch([to_tensor(chelsea), to_tensor(chelsea[::-1].copy())], size, device=lite0.device)
    layers = main_blocks(lite0)
    res = m.attribute(lite0, x, ClassTargets(top_k=2), layers=layers)
    assert list(res.sweep) == layers and res.layer == layers[-1]
    for name, maps in res.sweep.items():
        lone = m.attribute(lite0, x, ClassTargets(top_k=2), layer=name)
        assert lone.targets == res.targets
        for i in range(2):
            for t in range(2):
                assert maps[i][t].shape == lone.maps[i][t].shape
                torch.testing.assert_close(maps[i][t], lone.maps[i][t], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(res.maps[0][0], res.sweep[layers[-1]][0][0])


def test_score_cam_sweeps_each_layer_exactly(lite0, chelsea):
    """Score-CAM scores each layer's own masked inputs: the same maps as one request per layer."""
    m = get_method("scorecam")
    x = lite0.preprocessing.batch([to_tensor(chelsea)], 32, device=lite0.device)
    layers = ["act_stem", "_blocks.0"]
    res = m.attribute(lite0, x, ClassTargets(top_k=1), layers=layers, batch_size=64)
    assert "scored on their own" in res.extras["sweep"]
    for name in layers:
        lone = m.attribute(lite0, x, ClassTargets(top_k=1), layer=name, batch_size=64)
        torch.testing.assert_close(res.sweep[name][0][0], lone.maps[0][0], rtol=1e-4, atol=1e-6)


def test_sweep_cost_is_counted(lite0):
    """The budget sees a sweep: more than the default layer alone, far less than a request per layer for
    a gradient CAM; Score-CAM's own sweeps add up per layer."""
    layers = main_blocks(lite0)
    p_one = params_model("gradcam").model_validate({})
    p_all = params_model("gradcam").model_validate({"layers": "blocks"})
    one, sweep = estimate_cost(lite0, "gradcam", p_one, 1), estimate_cost(lite0, "gradcam", p_all, 1)
    assert one < sweep < len(layers) * one
    s_one = estimate_cost(lite0, "scorecam", params_model("scorecam").model_validate({"layer": "_blocks.0"}), 1)
    s_two = estimate_cost(lite0, "scorecam", params_model("scorecam").model_validate(
        {"layers": ["_blocks.0", "act_stem"]}), 1)
    assert s_two > s_one + 30  # act_stem's 32 masked inputs on top of _blocks.0's 16


def test_sweep_answer_over_http(client, small_cat):
    r = post(client, f"{URL}/explain/gradcam", [small_cat],
             {"layers": ["_blocks.4", "act_head"], "resolution": 64, "output": {"figure": True, "format": "png"}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["layers"] == ["_blocks.4", "act_head"] and body["layer"] == "act_head"
    exp = body["images"][0]["explanations"][0]
    assert [e["layer"] for e in exp["layers"]] == ["_blocks.4", "act_head"]
    assert [tuple(e["shape"]) for e in exp["layers"]] == [(8, 8), (2, 2)]  # 64 px input: /8 and /32
    assert exp["map"] == exp["layers"][1]["map"]
    assert body["details"]["sweep"] == "2 layers: one forward pass and one backward pass per target for every layer"
    fig = Image.open(io.BytesIO(base64.b64decode(exp["figure_png"])))
    assert fig.width >= 2 * 64  # one row of two captioned 64 px tiles under a title


def test_sweep_png_is_one_captioned_row(client, small_cat):
    r = post(client, f"{URL}/explain/gradcam", [small_cat], {"layers": "blocks", "resolution": 64},
             headers={"accept": "image/png"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.headers["x-cnnviz-layer"].split(",")[0] == "act_stem"
    assert len(r.headers["x-cnnviz-layer"].split(",")) == 9
    img = Image.open(io.BytesIO(r.content))
    assert img.width > 5 * img.height


def _problem(r, status, slug):
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["type"].endswith("/" + slug), body
    return body


def test_unknown_layer_in_the_list_names_the_closest(client, small_cat):
    body = _problem(post(client, f"{URL}/explain/gradcam", [small_cat], {"layers": ["act_stem", "_blocks.44"]}),
                    422, "unknown-layer")
    assert "_blocks.4" in body["choices"] and "_blocks.44" in body["title"]


@pytest.mark.parametrize("params", [
    {"layers": []},
    {"layers": [f"_blocks.{i}" for i in range(MAX_SWEEP_LAYERS + 1)]},
    {"layers": "stages"},
    {"layers": ["act_head"], "layer": "act_head"},
    {"layers": [""]},
])
def test_bad_layer_lists_are_422(client, small_cat, params):
    _problem(post(client, f"{URL}/explain/gradcam", [small_cat], params), 422, "invalid-parameters")


def test_methods_outside_the_cam_family_refuse_layers(client, small_cat):
    _problem(post(client, f"{URL}/explain/saliency", [small_cat], {"layers": ["act_head"]}), 422, "invalid-parameters")
