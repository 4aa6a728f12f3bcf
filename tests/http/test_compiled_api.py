"""The compiled forward on the real model, through HTTP: predict and Grad-CAM answer as the eager app does.

tests/unit/test_compiled.py checks the compiled road on a tiny network; this runs it where it serves
in production, the pretrained EfficientNet-Lite0 cut at its real default layer, behind the real
routes, lanes and batcher. Only the one-image graph is compiled (about 20 s cold on 2 cores), and
every answer is compared with the session's eager app (compile off, tests/conftest.py).
"""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.model

URL = "/v1/models/efficientnet-lite0"
RAW = {"output": {"heatmap": False, "overlay": False, "raw": True}}


@pytest.fixture(scope="module")
def compiled_client(catalog):
    from fastapi.testclient import TestClient

    import core.compiled
    from core.settings import Settings
    from service.app import create_app

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(core.compiled, "BATCHES", (1,))  # one compile, not three: CI time
        app = create_app(Settings(compile_predict=True, inline_budget=400), catalog=catalog)
        with TestClient(app) as c:
            model = catalog.get(catalog.default)
            app.state.compiled.ensure(model)
            state = app.state.compiled.wait(model, timeout=600)
            assert state == "ready", app.state.compiled.state(model)
            yield c


def _files(jpeg: bytes) -> list:
    return [("image", ("chelsea.jpg", jpeg, "image/jpeg"))]


def test_the_model_says_its_forward_is_compiled(compiled_client):
    r = compiled_client.get(URL)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["compiled"] == "ready", body["compiled_reason"]
    assert "CAM family at layer act_head" in body["compiled_reason"], body["compiled_reason"]


def test_predict_runs_compiled_and_agrees_with_eager(compiled_client, client, chelsea_jpeg):
    got = compiled_client.post(URL + "/predict", files=_files(chelsea_jpeg))
    want = client.post(URL + "/predict", files=_files(chelsea_jpeg))
    assert got.status_code == want.status_code == 200, (got.text, want.text)
    g, w = got.json(), want.json()
    assert g["forward"] == "compiled" and w["forward"] == "eager"
    gp, wp = g["images"][0]["predictions"], w["images"][0]["predictions"]
    assert [p["index"] for p in gp[:3]] == [p["index"] for p in wp[:3]]
    for a, b in zip(gp[:3], wp[:3], strict=True):
        assert a["probability"] == pytest.approx(b["probability"], abs=1e-4)
        assert a["logit"] == pytest.approx(b["logit"], abs=1e-3 * max(1.0, abs(b["logit"])))


@pytest.mark.parametrize("method", ["gradcam", "layercam"])
def test_cam_maps_on_the_compiled_road_equal_the_eager_ones(compiled_client, client, chelsea_jpeg, method):
    form = {"params": json.dumps(RAW)}
    got = compiled_client.post(f"{URL}/explain/{method}", files=_files(chelsea_jpeg), data=form)
    want = client.post(f"{URL}/explain/{method}", files=_files(chelsea_jpeg), data=form)
    assert got.status_code == want.status_code == 200, (got.text, want.text)
    g, w = got.json(), want.json()
    assert g["details"]["forward"] == "compiled" and w["details"].get("forward", "eager") == "eager"
    ge, we = g["images"][0]["explanations"][0], w["images"][0]["explanations"][0]
    assert ge["target"]["index"] == we["target"]["index"]
    gm, wm = ge["map"]["values"], we["map"]["values"]
    scale = max(abs(v) for row in wm for v in row) or 1.0
    err = max(abs(a - b) for ra, rb in zip(gm, wm, strict=True) for a, b in zip(ra, rb, strict=True))
    assert err <= 1e-3 * scale, f"compiled {method} map differs from eager by {err:.3g} (scale {scale:.3g})"
