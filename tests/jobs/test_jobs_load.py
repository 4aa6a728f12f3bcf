"""50 concurrent submits against a bounded queue: only 202 or 503, and every accepted job finishes."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.jobs.jobkit import Stack, dream, submit, wait_done

pytestmark = pytest.mark.jobs


def test_fifty_concurrent_submits(api: httpx.Client, stack: Stack) -> None:
    def one(i: int) -> httpx.Response:
        with stack.client() as c:
            return submit(c, dream(seed=i, steps=1))

    with ThreadPoolExecutor(max_workers=25) as pool:
        answers = list(pool.map(one, range(50)))
    codes = [a.status_code for a in answers]
    assert set(codes) <= {202, 503}, codes
    accepted = [a.json()["id"] for a in answers if a.status_code == 202]
    refused = [a for a in answers if a.status_code == 503]
    assert accepted and refused  # the bound (20 queued) was hit
    assert all(a.headers.get("retry-after") and a.json()["type"].endswith("/queue-full") for a in refused)
    for job_id in accepted:
        assert wait_done(api, job_id, timeout_s=120)["status"] == "succeeded"
