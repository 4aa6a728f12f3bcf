"""Job API end to end: submit -> progress -> result, cancel, model reuse, auth, idempotency, expiry."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from redis import Redis

from tests.jobs.jobkit import KEY_B, Stack, dream, submit, wait_done, wait_status

pytestmark = pytest.mark.jobs


def _sse(client: httpx.Client, job_id: str, headers: dict[str, str] | None = None) -> list[tuple[str, str, dict]]:
    events, eid, name = [], "", ""
    with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers, timeout=60) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("id: "):
                eid = line[4:]
            elif line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                events.append((eid, name, json.loads(line[6:])))
                if name == "done":
                    break
    return events


def test_submit_progress_previews_result(api: httpx.Client) -> None:
    r = submit(api, dream(octaves=2, steps=40, size=64, preview_every=10))
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    assert r.headers["location"] == f"/v1/jobs/{job_id}"
    assert int(r.headers["retry-after"]) >= 1
    assert r.json()["status"] == "queued"
    events = _sse(api, job_id)
    kinds = [e[1] for e in events]
    assert kinds[0] == "status" and kinds[-1] == "done" and "preview" in kinds
    steps = [e[2]["step"] for e in events if e[1] == "progress"]
    assert len(steps) >= 2 and steps == sorted(steps) and steps[-1] == 80
    assert events[-1][2]["status"] == "succeeded"
    # Resuming after an event id replays only what came after it.
    mid = events[len(events) // 2][0]
    assert [e[0] for e in _sse(api, job_id, {"Last-Event-ID": mid})] == [e[0] for e in events[len(events) // 2 + 1:]]
    body = api.get(f"/v1/jobs/{job_id}").json()
    assert body["status"] == "succeeded" and body["progress"]["fraction"] == 1.0
    assert body["previews"] and body["links"]["result"] == f"/v1/jobs/{job_id}/result"
    res = api.get(f"/v1/jobs/{job_id}/result")
    assert res.status_code == 200 and res.headers["content-type"] == "image/png"
    assert res.content[:8] == b"\x89PNG\r\n\x1a\n"
    prev = api.get(body["previews"][-1]["href"])
    assert prev.status_code == 200 and prev.headers["content-type"] == "image/png"
    meta = api.get(f"/v1/jobs/{job_id}/artifacts/result.json").json()
    assert meta["width"] == 64 and len(meta["objective"]) == 80


def test_dream_on_uploaded_image_and_model_reuse(api: httpx.Client, cat_png: bytes) -> None:
    first = wait_done(api, submit(api, dream(steps=2, size=48), image=cat_png).json()["id"])
    second = wait_done(api, submit(api, dream(steps=1)).json()["id"])
    assert first["status"] == second["status"] == "succeeded"
    res = api.get(f"/v1/jobs/{first['id']}/artifacts/result.json").json()
    assert (res["width"], res["height"]) == (48, 36)  # aspect ratio of the 64x48 upload
    # Same worker process, and the model was loaded once (at start-up), not per job.
    assert first["worker"]["pid"] == second["worker"]["pid"]
    assert first["worker"]["model_loads"] == second["worker"]["model_loads"] == 1


def test_cancel_running_and_queued(api: httpx.Client) -> None:
    long = dream(octaves=4, steps=500, size=128, preview_every=5)
    running = submit(api, long).json()["id"]
    queued = submit(api, dream()).json()["id"]
    wait_status(api, running, lambda b: b["status"] == "running" and b["progress"]["step"] > 5)
    q = api.get(f"/v1/jobs/{queued}").json()
    assert q["status"] == "queued" and q["queue_position"] == 0
    r = api.delete(f"/v1/jobs/{queued}")
    assert r.status_code == 200 and r.json()["status"] == "canceled"
    t0 = time.monotonic()
    r = api.delete(f"/v1/jobs/{running}")
    assert r.status_code == 202 and r.json()["cancel_requested"] is True
    body = wait_status(api, running, lambda b: b["status"] != "running", timeout_s=10)
    assert body["status"] == "canceled" and time.monotonic() - t0 < 5
    assert body["artifacts"] == [] and body["previews"] == []
    assert api.get(f"/v1/jobs/{running}/artifacts/preview-00005.png").status_code in (404, 410)
    assert api.get(f"/v1/jobs/{running}/result").status_code == 409


def test_worker_killed_mid_job_is_requeued_and_a_fresh_worker_goes_on(api: httpx.Client, stack: Stack) -> None:
    job_id = submit(api, dream(octaves=4, steps=500, size=128)).json()["id"]
    body = wait_status(api, job_id, lambda b: b["status"] == "running" and b["progress"]["step"] > 0)
    victim = next(w for w in stack.workers if w.pid == body["worker"]["pid"])
    victim.kill9()
    body = wait_status(api, job_id, lambda b: b["status"] != "running", timeout_s=15)
    # A deepdream may be retried once: queued again (no worker is left to run it), then cancelled.
    assert body["status"] == "queued" and body["progress"]["message"].startswith("retry 1 of 1"), body
    assert api.delete(f"/v1/jobs/{job_id}").json()["status"] == "canceled"
    fresh = stack.start_worker()
    nxt = wait_done(api, submit(api, dream()).json()["id"], timeout_s=90)
    assert nxt["status"] == "succeeded" and nxt["worker"]["pid"] == fresh.pid


def test_api_keys_and_ownership(api: httpx.Client, stack: Stack) -> None:
    job_id = submit(api, dream()).json()["id"]
    with stack.client(None) as anon, stack.client("wrong") as wrong, stack.client(KEY_B) as other:
        for c in (anon, wrong):
            for path in ("/v1/jobs", f"/v1/jobs/{job_id}", "/v1/models"):
                r = c.get(path)
                assert r.status_code == 401, path
                assert r.headers["content-type"] == "application/problem+json"
        assert anon.get("/healthz").status_code == 200
        assert other.get(f"/v1/jobs/{job_id}").status_code == 404
        assert other.delete(f"/v1/jobs/{job_id}").status_code == 404
        assert other.get(f"/v1/jobs/{job_id}/result").status_code == 404
        assert job_id not in [j["id"] for j in other.get("/v1/jobs").json()["jobs"]]
    assert job_id in [j["id"] for j in api.get("/v1/jobs").json()["jobs"]]
    wait_done(api, job_id)
    r = Redis.from_url(stack.redis_url)
    owner = r.hget(f"{stack.prefix}:job:{job_id}", "owner").decode()
    assert "test-key" not in owner and len(owner) >= 32  # a hash, never the key


def test_idempotency_key(api: httpx.Client) -> None:
    h = {"Idempotency-Key": "abc-123"}
    a = submit(api, dream(seed=7), headers=h)
    b = submit(api, dream(seed=7), headers=h)
    assert a.status_code == b.status_code == 202 and a.json()["id"] == b.json()["id"]
    c = submit(api, dream(seed=8), headers=h)
    assert c.status_code == 422 and c.json()["type"].endswith("/idempotency-key-reused")
    assert submit(api, dream(seed=7), headers={"Idempotency-Key": "other"}).json()["id"] != a.json()["id"]
    wait_done(api, a.json()["id"])


def test_validation_and_cost_caps(api: httpx.Client) -> None:
    assert submit(api, dream(octaves=9)).status_code == 422
    assert submit(api, {"type": "nope", "params": {}}).status_code == 422
    assert submit(api, dream(bogus=1)).status_code == 422
    r = submit(api, dream(layer="no.such.layer"))
    assert r.status_code == 422 and r.json()["type"].endswith("/unknown-layer")
    r = submit(api, dream(octaves=8, steps=500, size=1024))
    assert r.status_code == 422 and r.json()["limit_name"] == "max_job_cost"
    assert api.get("/v1/jobs/0123456789abcdef").status_code == 404


def test_expired_results(api: httpx.Client, stack: Stack) -> None:
    job_id = wait_done(api, submit(api, dream()).json()["id"])["id"]
    r = Redis.from_url(stack.redis_url)
    for key in r.scan_iter(f"{stack.prefix}:art:{job_id}:*"):
        r.pexpire(key, 1)
    time.sleep(0.05)
    res = api.get(f"/v1/jobs/{job_id}/result")
    assert res.status_code == 410 and res.json()["type"].endswith("/artifact-expired")
    r.pexpire(f"{stack.prefix}:job:{job_id}", 1)
    time.sleep(0.05)
    assert api.get(f"/v1/jobs/{job_id}").status_code == 404
    assert api.get(f"/v1/jobs/{job_id}/result").status_code == 404


def test_explain_hand_off(api: httpx.Client, cat_png: bytes) -> None:
    r = api.post("/v1/models/efficientnet-lite0/explain/gradcam", headers={"Prefer": "respond-async"},
                 files={"image": ("c.png", cat_png, "image/png")}, data={"params": json.dumps({"top_k": 1})})
    assert r.status_code == 202, r.text
    body = wait_done(api, r.json()["id"])
    assert body["status"] == "succeeded" and body["type"] == "explain"
    res = api.get(f"/v1/jobs/{body['id']}/result").json()
    assert res["method"] == "gradcam" and res["images"][0]["width"] == 64
    ov = api.get(f"/v1/jobs/{body['id']}/artifacts/overlay-0-0.png")
    assert ov.status_code == 200 and ov.content[:4] == b"\x89PNG"
    # The same method submitted directly as a job.
    r = api.post("/v1/jobs", files={"image": ("c.png", cat_png, "image/png")},
                 data={"params": json.dumps({"type": "explain", "params": {"method": "gradcam"}})})
    assert r.status_code == 202 and wait_done(api, r.json()["id"])["status"] == "succeeded"


def test_running_explain_job_reports_progress_and_cancels(api: httpx.Client, cat_png: bytes) -> None:
    # RISE with many masks is a long sweep of forward passes: progress rises, DELETE stops it mid-sweep.
    params = {"type": "explain", "params": {"method": "rise", "explain": {"masks": 8000, "resolution": 64}}}
    job = api.post("/v1/jobs", files={"image": ("c.png", cat_png, "image/png")},
                   data={"params": json.dumps(params)}).json()["id"]
    body = wait_status(api, job, lambda b: b["status"] == "running" and b["progress"]["step"] > 8)
    first = body["progress"]["step"]
    assert body["progress"]["total"] >= 0.9 * 8000 * (64 / 224) ** 2  # forwards at the model input size
    body = wait_status(api, job, lambda b: b["progress"]["step"] > first)
    t0 = time.monotonic()
    assert api.delete(f"/v1/jobs/{job}").status_code == 202
    body = wait_status(api, job, lambda b: b["status"] != "running", timeout_s=10)
    assert body["status"] == "canceled" and time.monotonic() - t0 < 5
