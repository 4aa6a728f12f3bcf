"""Issue 12 against the real stack (uvicorn API, Redis, an rq worker): hostile params on jobs and
collections are 422 problems, concurrent submits with one Idempotency-Key make one job, and
long-polls leave /healthz fast."""

from __future__ import annotations

import base64
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.jobs.jobkit import Stack, dream, submit

pytestmark = pytest.mark.jobs

DEEP = "[" * 10_000 + "]" * 10_000


def _problem(r: httpx.Response, slug: str) -> dict:
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["type"].endswith("/" + slug), body
    return body


def _json(api: httpx.Client, path: str, text: str) -> httpx.Response:
    return api.post(path, content=text.encode(), headers={"content-type": "application/json"})


@pytest.mark.parametrize("text", [DEEP, "9" * 5000], ids=["deep", "digits"])
def test_deep_or_huge_params_on_jobs_and_collections_are_422(api: httpx.Client, cat_png: bytes, text: str) -> None:
    for path in ("/v1/jobs", "/v1/collections"):
        _problem(_json(api, path, '{"params": {"type": "deepdream", "params": {"seed": ' + text + "}}}"),
                 "invalid-json")
        r = api.post(path, files=[("image", ("a.png", cat_png, "image/png"))] * 2,
                     data={"params": '{"type": "deepdream", "labels": ' + text + "}"})
        _problem(r, "invalid-params-json")


@pytest.mark.parametrize("job,field", [
    ('{"type": "class_viz", "params": {"target": 1, "steps": 3, "size": 64, "scale": [1e999, 1e999]}}', "scale"),
    ('{"type": "class_viz", "params": {"target": 1, "scale": [2.0, 1.0]}}', "scale"),
    ('{"type": "class_viz", "params": {"lr": NaN}}', "lr"),
    ('{"type": "deepdream", "params": {"step_size": Infinity}}', "step_size"),
    ('{"type": "texture", "params": {"weights": [NaN]}}', "weights"),
    ('{"type": "style", "params": {"style_layer_weights": [1e999]}}', "style_layer_weights"),
    ('{"type": "fast_style", "params": {"name": "n", "collection": "ab", "crop_scale": [0.9, 0.2]}}', "crop_scale"),
])
def test_non_finite_or_unordered_job_params_are_422_naming_the_field(api: httpx.Client, cat_png: bytes, job: str,
                                                                     field: str) -> None:
    body = _problem(_json(api, "/v1/jobs", '{"params": ' + job + "}"), "invalid-parameters")
    assert any(field in e["loc"] for e in body["errors"]), body["errors"]
    image = '{"images": ["' + base64.b64encode(cat_png).decode() + '"], "params": ' + job + "}"
    body = _problem(_json(api, "/v1/jobs", image), "invalid-parameters")
    assert any(field in e["loc"] for e in body["errors"]), body["errors"]


def test_concurrent_submits_with_one_idempotency_key_make_one_job(stack: Stack, api: httpx.Client) -> None:
    n, made = 10, []
    for trial in range(5):
        key = f"race-{uuid.uuid4().hex}"
        barrier = threading.Barrier(n)
        clients = [stack.client() for _ in range(n)]

        def go(c: httpx.Client, trial: int = trial, key: str = key, barrier: threading.Barrier = barrier):
            barrier.wait()
            return submit(c, dream(seed=1000 + trial), headers={"Idempotency-Key": key})

        try:
            with ThreadPoolExecutor(n) as pool:
                answers = list(pool.map(go, clients))
        finally:
            for c in clients:
                c.close()
        assert all(r.status_code == 202 for r in answers), [r.text for r in answers if r.status_code != 202]
        ids = {r.json()["id"] for r in answers}
        assert len(ids) == 1, f"trial {trial}: {len(ids)} jobs for one key"
        assert sum(r.headers.get("Idempotent-Replayed") == "true" for r in answers) == n - 1
        made += ids
    for job_id in made:
        api.delete(f"/v1/jobs/{job_id}")


def test_long_polls_leave_healthz_fast(stack: Stack, api: httpx.Client) -> None:
    # Long enough to outlast every 5 s long-poll on a fast, idle machine too (cancelled at the end).
    long = submit(api, {"type": "deepdream", "params": {"octaves": 8, "steps": 500, "size": 64, "jitter": 2,
                                                         "preview_every": 0}})
    assert long.status_code == 202, long.text
    job_id = long.json()["id"]
    n = 45
    clients = [stack.client() for _ in range(n)]

    def poll(c: httpx.Client) -> tuple[int, float]:
        t0 = time.monotonic()
        r = c.get(f"/v1/jobs/{job_id}", params={"wait": 5})
        return r.status_code, time.monotonic() - t0

    try:
        with ThreadPoolExecutor(n) as pool:
            polls = [pool.submit(poll, c) for c in clients]
            time.sleep(1.5)  # every long-poll is in flight
            health = []
            for _ in range(3):
                t0 = time.monotonic()
                assert api.get("/healthz").status_code == 200
                health.append(time.monotonic() - t0)
            t0 = time.monotonic()
            assert api.get(f"/v1/jobs/{job_id}").status_code == 200  # a plain poll is not queued behind them
            plain = time.monotonic() - t0
            results = [f.result() for f in polls]
    finally:
        for c in clients:
            c.close()
        api.delete(f"/v1/jobs/{job_id}")
    assert all(code == 200 for code, _ in results)
    assert sum(took >= 4.5 for _, took in results) >= n - 2, "the long-polls did not wait"
    assert max(health) < 0.2, f"/healthz took {[round(h * 1000) for h in health]} ms under {n} long-polls"
    assert plain < 1.0, f"a plain GET took {plain * 1000:.0f} ms under {n} long-polls"


def test_idempotency_claims_take_over_expired_jobs_and_time_out_on_stuck_ones(redis_url: str,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The claim protocol on its own: an expired job's key is taken over; a claim never written up
    answers 409 ``idempotency-key-in-use`` after the wait, never a second job."""
    from core.errors import Conflict, Invalid
    from core.settings import Settings
    from core.store.config import JobConfig
    from service import idempotency
    from service.job_client import JobClient

    client = JobClient(Settings(redis_url=redis_url), JobConfig(prefix=f"cnnviz-test-{uuid.uuid4().hex[:8]}"))
    r, store, key = client.redis, client.store, f"{client.config.prefix}:idem:test"
    try:
        r.set(key, "gonejob:d1", ex=60)  # a finished job whose record expired
        assert idempotency.claim(r, store, key, "new:d1:pending", "d1") is None
        assert r.get(key) == b"new:d1:pending" and 0 < r.ttl(key) <= idempotency.PENDING_TTL_S
        with pytest.raises(Invalid):
            idempotency.claim(r, store, key, "other:d2:pending", "d2")  # same key, another body
        monkeypatch.setattr(idempotency, "WAIT_S", 0.3)
        t0 = time.monotonic()
        with pytest.raises(Conflict) as info:
            idempotency.claim(r, store, key, "third:d1:pending", "d1")  # "new" never wrote its record
        assert info.value.slug == "idempotency-key-in-use" and time.monotonic() - t0 < 2
        idempotency.release(r, key, "third:d1:pending")  # not ours: kept
        assert r.get(key) == b"new:d1:pending"
        idempotency.release(r, key, "new:d1:pending")
        assert r.get(key) is None
    finally:
        r.delete(key)
        client.close()
