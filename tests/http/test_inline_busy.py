"""The bound on inline computations per process: a fast 503 inline-busy past it, success within it."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import httpx
import pytest

import core.batching
from core.settings import Settings
from service.app import create_app

URL = "/v1/models/efficientnet-lite0/explain/gradcam"
PARAMS = json.dumps({"resolution": 64, "output": {"heatmap": False, "overlay": False}})


@pytest.fixture
def gate(monkeypatch):
    """Every engine call waits for ``release`` (set it to let them finish)."""
    release = threading.Event()
    real = core.batching.compute

    def held(*a, **kw):
        assert release.wait(30)
        return real(*a, **kw)

    monkeypatch.setattr(core.batching, "compute", held)
    return release


async def _post(client: httpx.AsyncClient, jpeg: bytes) -> httpx.Response:
    return await client.post(URL, files={"image": ("c.jpg", jpeg, "image/jpeg")}, data={"params": PARAMS})


def _app(catalog, **kw):
    return create_app(Settings(preload_models=False, **kw), catalog=catalog)


def test_past_the_bound_a_request_gets_503_at_once(catalog, chelsea_jpeg, gate):
    app = _app(catalog, inline_max_requests=1, inline_retry_after_s=2, batch_max_images=1)

    async def scenario():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            first = asyncio.create_task(_post(c, chelsea_jpeg))
            while app.state.batcher.admitted < 1:  # the first request holds the only place
                await asyncio.sleep(0.01)
            t0 = time.perf_counter()
            second = await _post(c, chelsea_jpeg)
            spent = time.perf_counter() - t0
            gate.set()
            return await first, second, spent

    first, second, spent = asyncio.run(scenario())
    assert first.status_code == 200, first.text
    assert second.status_code == 503
    assert second.headers["content-type"].startswith("application/problem+json")
    assert second.json()["type"].endswith("/inline-busy")
    assert second.headers["retry-after"] == "2"
    assert spent < 2.0  # no computation waited for: parsing and decoding only


def test_within_the_bound_all_succeed_and_queued_requests_batch(catalog, chelsea_jpeg, gate):
    app = _app(catalog, inline_max_requests=3, inline_slots=1, batch_wait_ms=100)

    async def scenario():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            tasks = [asyncio.create_task(_post(c, chelsea_jpeg)) for _ in range(3)]
            while app.state.batcher.admitted < 3:
                await asyncio.sleep(0.01)
            gate.set()
            return await asyncio.gather(*tasks)

    answers = asyncio.run(scenario())
    assert [a.status_code for a in answers] == [200, 200, 200]
    # gathered within the wait, or queued behind the one slot: fewer engine calls than requests
    stats = app.state.batcher.stats
    assert stats.requests == 3 and stats.largest >= 2 and stats.calls <= 2
    exps = [a.json()["images"][0]["explanations"][0] for a in answers]  # same image: the same answer
    assert len({e["target"]["index"] for e in exps}) == 1
    for e in exps[1:]:
        assert e["target"]["score"] == pytest.approx(exps[0]["target"]["score"], abs=1e-4)
        assert e["map"]["max"] == pytest.approx(exps[0]["map"]["max"], rel=1e-3, abs=1e-6)
    assert app.state.batcher.admitted == 0
