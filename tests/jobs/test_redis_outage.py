"""Redis stopped: job submits answer 503 while inline routes keep working; all recovers on restart.

This test owns its Redis (a private redis-server on its own port) so stopping it never touches
the session's, and it runs its own API and worker against it.
"""

from __future__ import annotations

import time

import pytest

from stack.embedded import EmbeddedRedis
from tests.jobs.jobkit import Stack, dream, submit, wait_done

pytestmark = pytest.mark.jobs


def test_redis_down_then_back(cat_png: bytes) -> None:
    server = EmbeddedRedis().start()
    stack = Stack(server.url).start(workers=1)
    try:
        stack.wait_workers(1)
        with stack.client() as c:
            files = {"image": ("c.png", cat_png, "image/png")}
            assert c.post("/v1/models/efficientnet-lite0/predict", files=files).status_code == 200
            assert wait_done(c, submit(c, dream()).json()["id"])["status"] == "succeeded"

            server.stop()
            r = submit(c, dream())
            assert r.status_code == 503 and r.headers["retry-after"]
            assert r.json()["type"].endswith("/jobs-unavailable")
            assert c.post("/v1/models/efficientnet-lite0/predict", files=files).status_code == 200
            ready = c.get("/readyz").json()
            assert ready["checks"]["redis"] is False

            server.start()
            deadline = time.monotonic() + 30
            while (r := submit(c, dream())).status_code == 503 and time.monotonic() < deadline:
                time.sleep(0.5)
            assert r.status_code == 202, r.text
            assert wait_done(c, r.json()["id"], timeout_s=60)["status"] == "succeeded"
            stack.wait_workers(1, timeout_s=30)
    except BaseException:
        print(stack.logs())  # noqa: T201 - shown by pytest only on failure
        raise
    finally:
        stack.stop()
        server.close()
