"""The evaluate job end to end (real Redis, real rq worker), its 422s before queueing, and ``sanity: true``."""

from __future__ import annotations

import base64
import io
import json

import httpx
import numpy as np
import pytest
import skimage.data
from PIL import Image

from tests.jobs.jobkit import wait_done, wait_status

pytestmark = pytest.mark.jobs

MODEL = "efficientnet-lite0"
CLASSES = {"cat": "tabby", "cup": 968, "rocket": "missile"}


def _png(arr: np.ndarray, size: tuple[int, int] = (64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).resize(size).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def photos() -> list[bytes]:
    return [_png(skimage.data.chelsea()), _png(skimage.data.coffee()), _png(skimage.data.rocket(), (48, 64))]


def _collection(api: httpx.Client, photos: list[bytes], **params: object) -> httpx.Response:
    files = [("image", (f"p{i}.png", b, "image/png")) for i, b in enumerate(photos)]
    return api.post("/v1/collections", files=files, data={"params": json.dumps(params)})


def _evaluate(api: httpx.Client, **params: object) -> httpx.Response:
    return api.post("/v1/jobs", json={"params": {"type": "evaluate", "params": params}})


def test_evaluate_job_reports_every_metric(api: httpx.Client, photos: list[bytes]) -> None:
    boxes = [[[14, 4, 50, 44]], [], [[16, 2, 34, 60], [0, 0, 4, 4]]]
    r = _collection(api, photos, labels=["cat", "cup", "rocket"], boxes=boxes)
    assert r.status_code == 201, r.text
    assert r.json()["boxes"] == boxes
    cid = r.json()["id"]
    r = _evaluate(api, collection=cid, classes=CLASSES, size=64, steps=4,
                  stages=["_fc", "_conv_head", "_blocks.15"],
                  methods=[{"method": "gradcam"}, {"method": "saliency", "name": "grad"}])
    assert r.status_code == 202, r.text
    done = wait_done(api, r.json()["id"], timeout_s=240)
    assert done["status"] == "succeeded", done
    res = api.get(f"/v1/jobs/{done['id']}/artifacts/result.json").json()
    assert [m["name"] for m in res["methods"]] == ["gradcam", "grad"]
    assert [im["class"] for im in res["images"]] == [281, 968, 657]
    assert res["stages"]["cascading"] == ["_fc", "_conv_head", "_blocks.15"]
    assert res["stages"]["independent"] == ["_fc", "_conv_head", "_blocks.15"]
    for m in res["methods"]:
        s = m["summary"]
        aucs = [im["deletion_auc"] for im in m["images"]]
        assert s["deletion_auc"]["mean"] == pytest.approx(sum(aucs) / 3, abs=1e-4)
        assert s["deletion_auc"]["low"] <= s["deletion_auc"]["mean"] <= s["deletion_auc"]["high"]
        assert s["pointing"]["n"] == 2 and s["energy"]["n"] == 2  # only the images with boxes
        assert "pointing" not in m["images"][1]
        assert len(s["cascading"]["spearman_abs"]) == 3 and len(m["images"][0]["independent"]["ssim"]) == 3
        # The top stage alone is the first column of both tests.
        assert m["images"][0]["cascading"]["spearman"][0] == m["images"][0]["independent"]["spearman"][0]
        assert isinstance(m["flagged"], bool) and m["seconds_per_image"] > 0
        assert len(m["mean_curves"]["deletion"]) == 5 == len(res["fractions"])
    assert res["random"]["summary"]["insertion_auc"]["n"] == 3 and res["centre"]["summary"]["pointing"]["n"] == 2
    for name in ("grid.png", "curves.png"):
        png = api.get(f"/v1/jobs/{done['id']}/artifacts/{name}")
        assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_reports_progress_and_stops_on_cancel(api: httpx.Client, photos: list[bytes]) -> None:
    cid = _collection(api, photos * 4, labels=["cat", "cup", "rocket"] * 4).json()["id"]
    r = _evaluate(api, collection=cid, classes=CLASSES, size=128, steps=32,
                  methods=[{"method": "smoothgrad"}, {"method": "guided_backprop"}])
    assert r.status_code == 202, r.text
    jid = r.json()["id"]
    wait_status(api, jid, lambda b: b["status"] == "running" and (b.get("progress") or {}).get("step", 0) > 0,
                timeout_s=60)
    assert api.delete(f"/v1/jobs/{jid}").status_code in (200, 202, 204)
    done = wait_done(api, jid, timeout_s=30)
    assert done["status"] in ("canceled", "cancelled"), done


def test_bad_evaluations_are_422_before_queueing(api: httpx.Client, photos: list[bytes]) -> None:
    cid = _collection(api, photos, labels=["cat", "cup", "rocket"]).json()["id"]
    unlabelled = _collection(api, photos[:2]).json()["id"]
    cases = [
        ({"methods": [{"method": "gradcan"}]}, "unknown-method"),
        ({"methods": [{"method": "gradcam", "params": {"window": 3}}]}, "invalid-parameters"),
        ({"methods": [{"method": "occlusion", "params": {"window": 0}}]}, "invalid-parameters"),
        ({"methods": [{"method": "gradcam", "params": {"target": 3}}]}, "not-in-evaluate"),
        ({"methods": [{"method": "gradcam"}], "classes": {"cat": "tabby"}}, "unknown-class"),
        ({"methods": [{"method": "gradcam"}], "stages": ["_fcc"]}, "unknown-stage"),
        ({"methods": [{"method": "gradcam"}, {"method": "gradcam"}]}, "duplicate-method"),
    ]
    for body, slug in cases:
        r = _evaluate(api, collection=cid, **{"classes": CLASSES, **body})
        assert r.status_code == 422, (body, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")
        assert r.json()["type"].endswith(slug), (body, r.json())
    r = _evaluate(api, collection=cid, classes=CLASSES, methods=[{"method": "gradcan"}])
    assert "gradcam" in r.json()["choices"]
    r = _evaluate(api, collection=cid, methods=[{"method": "gradcam"}], classes={"cat": "tabby", "cup": "cup"})
    assert r.json()["labels"] == ["rocket"]
    r = _evaluate(api, collection=unlabelled, methods=[{"method": "gradcam"}])
    assert r.status_code == 422 and r.json()["type"].endswith("missing-labels")
    # Boxes are checked against each image when the collection is uploaded.
    r = _collection(api, photos, labels=["cat", "cup", "rocket"], boxes=[[[0, 0, 65, 10]], [], []])
    assert r.status_code == 422 and r.json()["type"].endswith("box-outside-image"), r.text
    assert r.json()["boxes"][0]["index"] == 0 and r.json()["boxes"][0]["filename"] == "p0.png"
    r = _collection(api, photos, labels=["cat", "cup", "rocket"], boxes=[[]])
    assert r.status_code == 422 and r.json()["type"].endswith("bad-boxes")
    r = _collection(api, photos, boxes=[[[5, 5, 5, 9]], [], []])
    assert r.status_code == 422


def test_sanity_on_one_explain_request(api: httpx.Client, photos: list[bytes]) -> None:
    img = [("image", ("cat.png", photos[0], "image/png"))]
    for method in ("saliency", "gradcam"):
        r = api.post(f"/v1/models/{MODEL}/explain/{method}", files=img,
                     data={"params": json.dumps({"sanity": True, "resolution": 64, "output": {"overlay": False}})})
        assert r.status_code == 200, r.text
        s = r.json()["images"][0]["explanations"][0]["sanity"]
        assert s["stage"] == "_fc" and -1 <= s["spearman_abs"] <= 1 and -1 <= s["ssim"] <= 1
        assert s["similar"] == (s["spearman_abs"] >= 0.5)
        assert Image.open(io.BytesIO(base64.b64decode(s["heatmap_png"]))).size == (64, 48)
    r = api.post(f"/v1/models/{MODEL}/explain/saliency", files=img,
                 data={"params": json.dumps({"sanity": True, "unit": {"layer": "_conv_head", "channel": 3}})})
    assert r.status_code == 422 and r.json()["type"].endswith("sanity-needs-classes")
