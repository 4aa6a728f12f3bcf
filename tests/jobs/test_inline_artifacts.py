"""``output.inline: false``: an inline answer's pictures stored in Redis and linked, with the ownership
and expiry of job artifacts; and the explain route's hand-off to a job, which checks a request once.
The app runs in-process against a real Redis; no worker is needed."""

from __future__ import annotations

import json
import time
import uuid

import pytest
from redis import Redis

pytestmark = [pytest.mark.jobs, pytest.mark.model]

KEY_A, KEY_B = "inline-key-a", "inline-key-b"


@pytest.fixture(scope="module")
def inline_client(redis_url, catalog):
    from fastapi.testclient import TestClient

    from core.settings import Settings
    from service.app import create_app

    prefix = f"cnnviz-test-inline-{uuid.uuid4().hex[:8]}"
    mp = pytest.MonkeyPatch()
    mp.setenv("CNNVIZ_KEY_PREFIX", prefix)
    app = create_app(Settings(redis_url=redis_url, api_keys=[KEY_A, KEY_B], inline_budget=400,
                              artifact_ttl_s=120, result_ttl_s=120, preload_models=False), catalog=catalog)
    mp.undo()
    with TestClient(app) as c:
        yield c, prefix
    r = Redis.from_url(redis_url)
    keys = list(r.scan_iter(f"{prefix}:*", count=1000))
    if keys:
        r.delete(*keys)


def test_links_instead_of_base64(inline_client, cat_png):
    client, prefix = inline_client
    params = {"top_k": 2, "output": {"inline": False, "figure": True}}
    r = client.post("/v1/models/efficientnet-lite0/explain/gradcam", headers={"X-API-Key": KEY_A},
                    files={"image": ("c.png", cat_png, "image/png")}, data={"params": json.dumps(params)})
    assert r.status_code == 200, r.text
    exps = r.json()["images"][0]["explanations"]
    assert len(exps) == 2
    for e in exps:
        assert e["overlay_png"] is None and e["heatmap_png"] is None and e["figure_png"] is None
        assert e["media_type"] == "image/jpeg"
        for field in ("overlay_url", "heatmap_url", "figure_url"):
            got = client.get(e[field], headers={"X-API-Key": KEY_A})
            assert got.status_code == 200 and got.headers["content-type"] == "image/jpeg"
            assert got.content[:3] == b"\xff\xd8\xff"
    # Another caller's key: not found, exactly as for someone else's job.
    other = client.get(exps[0]["overlay_url"], headers={"X-API-Key": KEY_B})
    assert other.status_code == 404
    # Expired blob, record still there: 410 like a job artifact.
    answer_id = exps[0]["overlay_url"].split("/")[3]
    r_ = Redis.from_url(client.app.state.settings.redis_url)
    r_.pexpire(f"{prefix}:art:{answer_id}:overlay-0-0.jpg", 1)
    time.sleep(0.05)
    gone = client.get(exps[0]["overlay_url"], headers={"X-API-Key": KEY_A})
    assert gone.status_code == 410 and gone.json()["type"].endswith("/artifact-expired")
    # Not listed among the caller's jobs: nobody submitted it.
    listed = client.get("/v1/jobs", headers={"X-API-Key": KEY_A}).json()
    assert answer_id not in json.dumps(listed)


def test_hand_off_checks_and_prices_once(inline_client, cat_png, monkeypatch):
    """``Prefer: respond-async``: the request is validated and priced once, then queued as it was sent."""
    from cnnviz.attribution import METHODS
    from core.schemas.explain import params_model

    client, _prefix = inline_client
    calls = {"validate": 0, "price": 0}
    model_cls, method = params_model("gradcam"), METHODS["gradcam"]
    validate, price = model_cls.model_validate, method.estimate_cost

    def counted_validate(*args, **kwargs):
        calls["validate"] += 1
        return validate(*args, **kwargs)

    def counted_price(*args, **kwargs):
        calls["price"] += 1
        return price(*args, **kwargs)

    # At the source, so every path that validates or prices this request is counted.
    monkeypatch.setattr(model_cls, "model_validate", counted_validate)
    monkeypatch.setattr(method, "estimate_cost", counted_price)
    params = {"top_k": 2, "output": {"figure": True}}
    r = client.post("/v1/models/efficientnet-lite0/explain/gradcam",
                    headers={"X-API-Key": KEY_A, "Prefer": "respond-async"},
                    files={"image": ("c.png", cat_png, "image/png")}, data={"params": json.dumps(params)})
    assert r.status_code == 202, r.text
    assert calls == {"validate": 1, "price": 1}
    job = client.get(r.headers["Location"], headers={"X-API-Key": KEY_A}).json()
    assert job["type"] == "explain" and job["status"] == "queued"
    rec = client.app.state.jobs.store.get(job["id"])
    assert rec["spec"]["params"] == {"method": "gradcam", "explain": params}
    # Bad parameters are refused before anything is queued, as inline.
    r = client.post("/v1/models/efficientnet-lite0/explain/gradcam",
                    headers={"X-API-Key": KEY_A, "Prefer": "respond-async"},
                    files={"image": ("c.png", cat_png, "image/png")}, data={"params": json.dumps({"top_k": 0})})
    assert r.status_code == 422 and r.json()["type"].endswith("/invalid-parameters")
