"""The precision option over HTTP: accepted choices, what ran in the answer, refusals as 422 problems."""

from __future__ import annotations

import json

import pytest

from cnnviz.precision import offered

pytestmark = pytest.mark.model

URL = "/v1/models/efficientnet-lite0"
CHEAP = {"output": {"heatmap": False, "overlay": False}}


def post(client, method, jpeg, params, headers=None):
    return client.post(f"{URL}/explain/{method}", files=[("image", ("a.jpg", jpeg, "image/jpeg"))],
                       data={"params": json.dumps({**CHEAP, **params})}, headers=headers or {})


def problem(r, slug):
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["type"].endswith("/" + slug), body
    return body


def test_a_bad_precision_is_a_422_naming_the_field(client, chelsea_jpeg):
    body = problem(post(client, "gradcam", chelsea_jpeg, {"precision": "int8"}), "invalid-parameters")
    assert body["errors"][0]["loc"][-1] == "precision"


def test_answers_say_which_precision_ran(client, chelsea_jpeg):
    r = post(client, "gradcam", chelsea_jpeg, {})
    assert r.status_code == 200, r.text
    assert r.json()["precision"] == "fp32"
    if "bf16" not in offered("cpu"):
        problem(post(client, "gradcam", chelsea_jpeg, {"precision": "bf16"}), "precision-unsupported")
        return
    r = post(client, "gradcam", chelsea_jpeg, {"precision": "bf16"})
    assert r.status_code == 200, r.text
    assert r.json()["precision"] == "bf16" and not r.json()["warnings"]
    r = post(client, "saliency", chelsea_jpeg, {"precision": "bf16"})  # the method declines it
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["precision"] == "fp32" and any("ran in fp32, not bf16" in w for w in body["warnings"])
    r = post(client, "gradcam", chelsea_jpeg, {"precision": "bf16"}, headers={"accept": "image/png"})
    assert r.status_code == 200 and r.headers["x-cnnviz-precision"] == "bf16"


@pytest.mark.skipif("fp16" in offered("cpu"), reason="this CPU has native fp16 kernels")
def test_a_precision_the_device_does_not_offer_is_a_422_with_the_choices(client, chelsea_jpeg):
    body = problem(post(client, "gradcam", chelsea_jpeg, {"precision": "fp16"}), "precision-unsupported")
    assert body["choices"] == list(offered("cpu")) and body["device"] == "cpu"


def test_the_openapi_lists_the_choices(app):
    schemas = app.openapi()["components"]["schemas"]
    for name in ("ExplainParams", "GradientParams", "OcclusionParams"):
        prop = schemas[name]["properties"]["precision"]
        assert prop["enum"] == ["fp32", "bf16", "fp16"] and prop["default"] == "fp32"
    assert schemas["ExplainResponse"]["properties"]["precision"]["enum"] == ["fp32", "bf16", "fp16"]


def test_the_methods_list_says_which_precisions_run_reduced(client):
    """``GET /v1/methods``: fp32 for every method; the device's reduced precisions only where the
    method's forwards really run reduced at its defaults (docs/precision.md: input gradients, guided
    backprop and IG decline)."""
    methods = {m["name"]: m for m in client.get("/v1/methods").json()["methods"] if m["kind"] == "explain"}
    reduced = [p for p in offered("cpu") if p != "fp32"]
    assert all(m["precisions"][0] == "fp32" for m in methods.values())
    assert methods["gradcam"]["precisions"] == ["fp32", *reduced]
    assert methods["saliency"]["precisions"] == ["fp32"]
    assert methods["integrated_gradients"]["precisions"] == ["fp32"]
    assert methods["guided_backprop"]["precisions"] == ["fp32"]  # docs/precision.md: its maps disagree
    assert methods["deconvnet"]["precisions"] == ["fp32", *reduced]  # its backward ignores the forward's masks
