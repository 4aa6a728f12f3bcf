"""The API says on start-up what a durable Redis kept from earlier runs (jobs, collections, trained
networks), counted as the listings show them: written here by the stores themselves, under a
prefix of this test's own."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator

import pytest
import torch
from fastapi.testclient import TestClient
from redis import Redis
from safetensors.torch import save as safetensors_bytes

from core.store.census import count_stored
from core.store.collections import CollectionStore
from core.store.job_records import SUCCEEDED, JobStore
from core.store.trained import TrainedStore

pytestmark = pytest.mark.jobs


@pytest.fixture
def prefix(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A key prefix of this test's own (the app reads it from the environment); its keys deleted after."""
    p = f"cnnviz-census-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("CNNVIZ_KEY_PREFIX", p)
    yield p
    r = Redis.from_url(redis_url)
    keys = list(r.scan_iter(match=f"{p}:*"))
    if keys:
        r.delete(*keys)
    r.close()


def _job(job_id: str, owner: str) -> dict:
    return {"id": job_id, "type": "deepdream", "model": "efficientnet-lite0", "owner": owner, "queue": "long",
            "status": SUCCEEDED, "created_at": time.time()}


def test_start_up_logs_what_was_restored(redis_url: str, prefix: str, catalog,
                                         caplog: pytest.LogCaptureFixture) -> None:
    from core.settings import Settings
    from service.app import create_app

    r = Redis.from_url(redis_url)
    jobs = JobStore(r, prefix)
    jobs.create(_job(uuid.uuid4().hex, "owner-a"), [b"input"], 600)
    jobs.create(_job(uuid.uuid4().hex, "owner-b"), [], 600)
    gone = uuid.uuid4().hex  # listed, but its record expired: not restored
    jobs.create(_job(gone, "owner-a"), [], 600)
    r.delete(jobs.job_key(gone))
    # an inline answer's pictures are kept under a job record too, but it is no job anyone listed
    jobs.put_answer_artifacts(uuid.uuid4().hex, "owner-a", "explain", "efficientnet-lite0",
                              [("overlay-0-0.png", b"png", "image/png")], 600, 600)
    CollectionStore(r, prefix).create("owner-a", [b"one", b"two"], ["x", "y"], 600)
    trained = TrainedStore(r, prefix)
    trained.save("style", "owner-a", "mosaic", b"weights", model="efficientnet-lite0", job="j1", summary={})
    trained.claim("style", "owner-a", "mosaic", "j2", 600)  # a run retraining it: still one network
    # only a checkpoint (a cancelled run): listed as partial, so restored as well
    trained.put_checkpoint("embedder", "owner-b", "faces", safetensors_bytes({"w": torch.zeros(1)}), step=3,
                           params={}, model="efficientnet-lite0", job="j3", ttl_s=600)
    assert count_stored(r, prefix).__dict__ == {"jobs": 2, "collections": 1, "trained": 2}
    r.close()

    caplog.set_level(logging.INFO, logger="core.store.census")
    app = create_app(Settings(redis_url=redis_url, preload_models=False), catalog=catalog)
    with TestClient(app):
        deadline = time.monotonic() + 20
        while not [m for m in caplog.messages if m.startswith("restored from Redis")]:
            assert time.monotonic() < deadline, caplog.text
            time.sleep(0.05)
    [line] = [m for m in caplog.messages if m.startswith("restored from Redis")]
    assert line == f"restored from Redis (key prefix '{prefix}'): 2 job(s), 1 collection(s), 2 trained network(s)"
    assert [rec.levelno for rec in caplog.records if rec.message == line] == [logging.INFO]
