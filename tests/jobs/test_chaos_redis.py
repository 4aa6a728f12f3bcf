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


def test_job_taken_off_the_queue_by_a_worker_that_died_runs_again(redis_url: str) -> None:
    """A worker pops a job id and stops before it starts the job (kill -9, or Redis going away
    between the two, as in the restart above): the record says queued and no list holds it. The
    API's reaper pushes it again after the orphan grace (2 s here), and it runs once."""
    from redis import Redis

    from core.store.job_records import JobStore

    stack = Stack(redis_url).start(workers=0)
    r = Redis.from_url(redis_url)
    try:
        with stack.client() as c:
            orphan, kept = (submit(c, dream(seed=i)).json()["id"] for i in range(2))
            lists = [f"rq:queue:{stack.queue}-{kind}" for kind in ("short", "long")]
            popped = [key for key in lists if r.lrem(key, 1, orphan)]  # what a worker's pop does
            assert popped, "the job was on no rq list"
            time.sleep(2 * 2 + 2.5)  # the grace, seen on two reaps (every 2 s)
            assert orphan.encode() in r.lrange(popped[0], 0, -1), "the orphan was not pushed again"
            stack.start_worker()
            states = {job_id: wait_done(c, job_id, timeout_s=60) for job_id in (orphan, kept)}
        assert {s["status"] for s in states.values()} == {"succeeded"}, states
        store = JobStore(r, stack.prefix)
        assert [store.get(j)["attempts"] for j in (orphan, kept)] == [1, 1]  # type: ignore[index]
        assert all(r.lpos(key, orphan) is None for key in lists)  # pushed once, taken once
    except BaseException:
        print(stack.logs())  # noqa: T201 - shown by pytest only on failure
        raise
    finally:
        stack.stop()
        stack.cleanup_redis()
