"""The serving protocols against the live app, spoken by their own clients (issue 28).

KServe V1 (``:predict``, ``:explain``) with kserve's ``InferenceRESTClient``; the Open Inference
Protocol (V2) with kserve's V2 client and with ``tritonclient.http``, whose default is the binary
tensor extension both ways. The defining property: each protocol's answer is the native route's
answer for the same image and parameters. Images are 64x48 and maps taken at 64 px, so every
explanation here is under the stack's inline budget except the one that checks the 202.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.jobs.jobkit import KEY_A, Stack

kserve = pytest.importorskip("kserve")
httpclient = pytest.importorskip("tritonclient.http")
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

pytestmark = pytest.mark.jobs
MODEL = "efficientnet-lite0"
KEYED = {"X-API-Key": KEY_A}


def run(coro):
    return asyncio.run(coro)


def native_predict(api: httpx.Client, png: bytes, params: dict) -> dict:
    r = api.post(f"/v1/models/{MODEL}/predict", files=[("image", ("c.png", png))], data={"params": json.dumps(params)})
    assert r.status_code == 200, r.text
    return r.json()


def native_explain(api: httpx.Client, png: bytes, method: str, params: dict) -> dict:
    r = api.post(f"/v1/models/{MODEL}/explain/{method}", files=[("image", ("c.png", png))],
                 data={"params": json.dumps({**params, "output": {"raw": True, "heatmap": False, "overlay": False}})})
    assert r.status_code == 200, r.text
    return r.json()


def test_kserve_v1_predict_and_explain_equal_native(api: httpx.Client, stack: Stack, cat_png: bytes) -> None:
    b64 = base64.b64encode(cat_png).decode()
    params = {"top_k": 3, "resolution": 64}

    async def go() -> tuple[dict, dict, bool]:
        async with InferenceRESTClient(RESTConfig(protocol="v1", timeout=60)) as c:
            pred = await c.infer(stack.base, {"instances": [{"b64": b64}, b64], "parameters": params}, MODEL,
                                 headers=KEYED)
            exp = await c.explain(stack.base, MODEL, {"instances": [{"b64": b64}], "parameters": {
                "method": "gradcam", "top_k": 2, "resolution": 64, "output": {"raw": True, "heatmap": False,
                                                                              "overlay": False}}}, headers=KEYED)
            ready = await c.is_model_ready(stack.base, MODEL, headers=KEYED)
            return pred, exp, ready

    pred, exp, ready = run(go())
    assert ready is True
    want = native_predict(api, cat_png, params)["images"][0]["predictions"]
    assert len(pred["predictions"]) == 2
    for inst in pred["predictions"]:
        assert [p["index"] for p in inst["predictions"]] == [p["index"] for p in want]
        np.testing.assert_allclose([p["probability"] for p in inst["predictions"]],
                                   [p["probability"] for p in want], rtol=1e-5)
    want_exp = native_explain(api, cat_png, "gradcam", {"top_k": 2, "resolution": 64})["images"][0]["explanations"]
    got_exp = exp["explanations"][0]["explanations"]
    assert exp["method"] == "gradcam" and [e["target"]["index"] for e in got_exp] == [e["target"]["index"]
                                                                                    for e in want_exp]
    for g, w in zip(got_exp, want_exp, strict=True):
        np.testing.assert_allclose(g["map"]["values"], w["map"]["values"], rtol=1e-4, atol=1e-5)


def test_kserve_v1_over_inline_budget_is_the_explain_job(api: httpx.Client, stack: Stack, cat_png: bytes) -> None:
    # Grad-CAM at 224 px costs 1.5 forward passes, over the stack's inline budget: the native 202 with the job.
    r = httpx.post(f"{stack.base}/v1/models/{MODEL}:explain", headers=KEYED, timeout=30, json={
        "instances": [{"b64": base64.b64encode(cat_png).decode()}], "parameters": {"method": "gradcam"}})
    assert r.status_code == 202, r.text
    assert r.headers["location"] == f"/v1/jobs/{r.json()['id']}"
    assert api.get(r.headers["location"]).json()["type"] == "explain"


def test_kserve_v1_errors_in_its_shape(stack: Stack, cat_png: bytes) -> None:
    body = {"instances": [{"b64": base64.b64encode(cat_png).decode()}], "parameters": {"method": "gradcam"}}

    async def status(headers: dict, data: dict, model: str = MODEL) -> tuple[int, str]:
        async with InferenceRESTClient(RESTConfig(protocol="v1", timeout=30)) as c:
            with pytest.raises(httpx.HTTPStatusError) as err:
                await c.explain(stack.base, model, data, headers=headers)
        return err.value.response.status_code, err.value.response.json()["error"]

    assert run(status({}, body))[0] == 401  # no key: the same authentication as the native routes
    code, msg = run(status(KEYED, {**body, "parameters": {"method": "gradcan"}}))
    assert code == 404 and "unknown-method" in msg and "gradcam" in msg  # the closest names, as natively
    code, msg = run(status(KEYED, {"instances": [{"b64": "not an image"}]}))
    assert code == 400 and "invalid-image" in msg


def _bytes_input(png: bytes) -> InferInput:
    inp = InferInput("image", [1], "BYTES")
    inp.set_data_from_numpy(np.array([png], dtype=np.object_), binary_data=True)
    return inp


def test_v2_with_kserve_client(api: httpx.Client, stack: Stack, cat_png: bytes) -> None:
    async def go():
        async with InferenceRESTClient(RESTConfig(protocol="v2", timeout=60)) as c:
            res = await c.infer(stack.base, InferRequest(MODEL, [_bytes_input(cat_png)], parameters={
                "top_k": 3, "resolution": 64}), MODEL, headers=KEYED)
            flags = (await c.is_server_live(stack.base), await c.is_server_ready(stack.base),
                     await c.is_model_ready(stack.base, MODEL, headers=KEYED))
            return res, flags

    res, flags = run(go())
    assert flags == (True, True, True)
    out = {o.name: o.as_numpy() for o in res.outputs}
    want = native_predict(api, cat_png, {"top_k": 3, "resolution": 64})["images"][0]["predictions"]
    assert out["classes"].tolist() == [[p["index"] for p in want]]
    np.testing.assert_allclose(out["probabilities"][0], [p["probability"] for p in want], rtol=1e-5)
    assert [v.decode() if isinstance(v, bytes) else v for v in out["labels"][0]] == [p["label"] for p in want]


def test_v2_with_tritonclient_binary(api: httpx.Client, stack: Stack, cat_png: bytes) -> None:
    url = stack.base.removeprefix("http://")
    c = httpclient.InferenceServerClient(url, network_timeout=60, connection_timeout=60)
    try:
        assert c.is_server_live() and c.is_model_ready(MODEL, headers=KEYED)
        meta = c.get_model_metadata(MODEL, headers=KEYED)
        assert {i["datatype"] for i in meta["inputs"]} == {"BYTES", "FP32"}
        inp = httpclient.InferInput("image", [1], "BYTES")
        inp.set_data_from_numpy(np.array([cat_png], dtype=np.object_))  # binary_data=True: the extension
        res = c.infer(MODEL, [inp], headers=KEYED, parameters={
            "method": "gradcam", "top_k": 2, "resolution": 64, "overlay": True})
        maps = res.as_numpy("maps")
        want = native_explain(api, cat_png, "gradcam", {"top_k": 2, "resolution": 64})["images"][0]["explanations"]
        assert maps.dtype == np.float32 and maps.shape == (1, 2, *want[0]["map"]["shape"])
        for t, w in enumerate(want):
            np.testing.assert_allclose(maps[0, t], w["map"]["values"], rtol=1e-4, atol=1e-5)
        assert res.as_numpy("classes").tolist() == [[w["target"]["index"] for w in want]]
        overlay = Image.open(io.BytesIO(res.as_numpy("overlay")[0, 0]))
        assert overlay.format == "PNG" and overlay.size == (64, 48)

        # FP32 pixels in the model's layout [N,3,H,W] in [0,1]: the prediction of those exact pixels.
        pixels = (np.asarray(Image.open(io.BytesIO(cat_png)).convert("RGB"), np.float32) / 255).transpose(2, 0, 1)
        px = httpclient.InferInput("input", [1, 3, 48, 64], "FP32")
        px.set_data_from_numpy(pixels[None].copy())
        out = httpclient.InferRequestedOutput("probabilities")  # binary by default
        res = c.infer(MODEL, [px], outputs=[out, httpclient.InferRequestedOutput("classes", binary_data=False)],
                      headers=KEYED, parameters={"top_k": 3, "resolution": 64})
        want_p = native_predict(api, cat_png, {"top_k": 3, "resolution": 64})["images"][0]["predictions"]
        assert res.as_numpy("classes").tolist() == [[p["index"] for p in want_p]]
        np.testing.assert_allclose(res.as_numpy("probabilities")[0], [p["probability"] for p in want_p], rtol=1e-5)

        # Errors: the protocol's shape, the native statuses and limits.
        with pytest.raises(InferenceServerException) as err:
            c.infer(MODEL, [inp])  # no key
        assert err.value.status() == "401"
        with pytest.raises(InferenceServerException) as err:
            c.infer(MODEL, [inp], headers=KEYED, parameters={"method": "gradcam"})  # 224 px: over the budget
        assert err.value.status() == "422" and "over-inline-budget" in err.value.message()
        with pytest.raises(InferenceServerException) as err:
            c.infer(MODEL, [inp], headers=KEYED, parameters={"method": "gradcam", "resolution": 64, "top_k": 99})
        assert err.value.status() == "422" and "top_k" in err.value.message()
    finally:
        c.close()
