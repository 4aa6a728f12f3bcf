"""Redis restarted mid-run (the embedded, append-only one, in a temporary data directory): no
accepted job is lost. Jobs queued before the restart run after it, a job that was running is
finished or retried, and jobs submitted after it run too.

This test owns its Redis and runs its own API and worker against it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from stack.embedded import EmbeddedRedis
from tests.jobs.jobkit import Stack, dream, submit, wait_done

pytestmark = pytest.mark.jobs


def test_redis_restart_mid_run_loses_no_accepted_job(tmp_path: Path) -> None:
    server = EmbeddedRedis(data_dir=tmp_path).start()
    stack = Stack(server.url).start(workers=1)
    try:
        stack.wait_workers(1)
        accepted: list[str] = []
        with stack.client() as c:
            for i in range(12):
                r = submit(c, dream(steps=3, seed=i))
                assert r.status_code == 202, r.text
                accepted.append(r.json()["id"])
            deadline = time.monotonic() + 60
            while c.get(f"/v1/jobs/{accepted[1]}").json()["status"] != "succeeded":
                assert time.monotonic() < deadline, "no job ran"
                time.sleep(0.1)
            t0 = time.monotonic()
            server.stop()  # SIGTERM: Redis writes its append-only file and exits
            server.start()
            down = time.monotonic() - t0
            deadline = time.monotonic() + 30
            while (r := submit(c, dream(steps=3, seed=99))).status_code == 503:
                assert time.monotonic() < deadline, r.text
                time.sleep(0.3)
            assert r.status_code == 202, r.text
            accepted.append(r.json()["id"])
            for i in range(4):
                r = submit(c, dream(steps=3, seed=100 + i))
                assert r.status_code == 202, r.text
                accepted.append(r.json()["id"])
            states = {job_id: wait_done(c, job_id, timeout_s=90)["status"] for job_id in accepted}
        assert set(states.values()) == {"succeeded"}, states
        if os.environ.get("CNNVIZ_TEST_TIMINGS"):
            print(f"Redis restart: down {down:.1f}s; {len(accepted)} accepted jobs, all succeeded")  # noqa: T201
    except BaseException:
        print(stack.logs())  # noqa: T201 - shown by pytest only on failure
        raise
    finally:
        stack.stop()
        server.close()
