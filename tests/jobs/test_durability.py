"""What survives what: a restart of ``cnnviz serve`` (durable embedded Redis), a worker killed with
-9 (supervised restart, readiness within seconds), a cancelled training (a usable partial style),
and previews (every announced one answers until a ``preview-dropped`` event says it is gone).

Real processes throughout: ``cnnviz serve`` with its embedded Redis in a temporary data directory,
or the session's API and worker (conftest). Jobs are tiny, to stay fast on 2 CPU cores.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis import Redis

from core.store.config import WORKER_LIVENESS_S
from stack.embedded import EmbeddedRedis, free_port
from stack.supervise import Supervisor
from tests.jobs.jobkit import KEY_A, Proc, Stack, dream, submit, wait_done, wait_status
from tests.jobs.test_training_jobs import TINY_STYLE, _collection, _png, _stripes

pytestmark = pytest.mark.jobs


# --- cnnviz serve, as a user runs it --------------------------------------------------------------
class Serve:
    """``cnnviz serve`` with no REDIS_URL: its own embedded Redis in ``data_dir`` and supervised workers."""

    def __init__(self, data_dir: Path, port: int) -> None:
        env = Stack("unused").env  # the test settings (keys, limits, short job heartbeats), own queue
        env.pop("REDIS_URL")
        env.pop("CNNVIZ_REDIS_URL", None)
        self.env = {**env, "CNNVIZ_DATA_DIR": str(data_dir)}
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.proc: Proc | None = None

    def start(self, *args: str) -> Serve:
        self.proc = Proc("serve", ["serve", "--host", "127.0.0.1", "--port", str(self.port), *args], self.env)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert self.proc.alive(), f"serve died:\n{self.proc.tail()}"
            try:
                if httpx.get(self.base + "/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"serve did not come up:\n{self.proc.tail()}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()  # SIGTERM: uvicorn, then the workers, then Redis (which flushes its AOF)

    def ready(self) -> httpx.Response:
        return httpx.get(self.base + "/readyz", timeout=5)

    def wait_workers(self, timeout_s: float = 90) -> dict[str, Any]:
        """Until a live worker serves every queue (the models are loaded lazily here: no full 200)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            body = self.ready().json()
            if body["checks"]["workers"] >= 1:
                return body
            time.sleep(0.2)
        raise TimeoutError(f"no workers: {body}\n{self.proc.tail() if self.proc else ''}")

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base, headers={"X-API-Key": KEY_A}, timeout=30)

    def workers(self) -> dict[int, str]:
        """The embedded workers: pid -> the queue kinds on their command line."""
        assert self.proc is not None
        out = {}
        for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
            for pid in (task / "children").read_text().split():
                try:
                    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                except OSError:
                    continue
                if b"worker" in argv:
                    out[int(pid)] = argv[argv.index(b"--queues") + 1].decode()
        return out


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    s = Serve(tmp_path / "data", free_port())
    try:
        yield s
    finally:
        s.stop()


def test_serve_restart_keeps_jobs_and_a_killed_worker_costs_its_job_only(serve: Serve) -> None:
    """A job accepted while no worker ran, and a collection, outlive a restart of ``cnnviz serve``
    (same data directory, same Redis URL) and the job then runs. kill -9 of an embedded worker
    mid-job queues that job again (its one retry), the supervisor starts a new worker and the next
    job runs on it. Finished jobs and their results outlive the next restart too."""
    serve.start("--workers", "0")
    log = serve.proc.tail()  # type: ignore[union-attr]
    assert "explorer: http://127.0.0.1:" in log and "/ui/" in log
    assert "attach another worker: REDIS_URL=redis://127.0.0.1:" in log and "cnnviz worker --queues short,long" in log
    redis_url = log.split("attach another worker: REDIS_URL=", 1)[1].split()[0]
    not_ready = serve.ready()
    assert not_ready.status_code == 503 and not_ready.json()["checks"]["workers"] == 0
    with serve.client() as api:
        cid = _collection(api, [_png(_stripes()), _png(_stripes()[::-1].copy())])
        r = submit(api, dream())
        assert r.status_code == 202, r.text
        queued = r.json()["id"]
    serve.stop()

    serve.start()  # one supervised worker per queue this time
    assert f"Redis: {redis_url}" in serve.proc.tail()  # type: ignore[union-attr]
    serve.wait_workers()
    with serve.client() as api:
        assert api.get(f"/v1/collections/{cid}").status_code == 200
        assert wait_done(api, queued, timeout_s=90)["status"] == "succeeded"

        r = submit(api, dream(steps=500, size=96))
        assert r.status_code == 202, r.text
        doomed = r.json()["id"]
        wait_status(api, doomed, lambda b: b["status"] == "running", timeout_s=60)
        [victim] = [pid for pid, kinds in serve.workers().items() if kinds == "long"]
        os.kill(victim, signal.SIGKILL)
        # its type allows one retry: queued again (for the restarted worker), then cancelled here
        retried = wait_status(api, doomed, lambda b: b["status"] == "queued" or b["worker"]["pid"] != victim,
                              timeout_s=30)
        assert retried["status"] in ("queued", "running"), retried
        assert retried["progress"]["message"].startswith("retry 1 of 1"), retried
        assert api.delete(f"/v1/jobs/{doomed}").status_code in (200, 202)
        assert wait_done(api, doomed, timeout_s=30)["status"] == "canceled"
        r = submit(api, dream())
        assert r.status_code == 202, r.text
        after = r.json()["id"]
        assert wait_done(api, after, timeout_s=90)["status"] == "succeeded"
    [replacement] = [pid for pid, kinds in serve.workers().items() if kinds == "long"]
    assert replacement != victim
    log = serve.proc.tail(200_000)  # type: ignore[union-attr]
    assert f"worker long-1 (pid {victim}) killed by SIGKILL" in log and "restarting worker long-1" in log
    serve.stop()

    serve.start("--workers", "0")
    with serve.client() as api:
        for job_id, status in ((queued, "succeeded"), (doomed, "canceled"), (after, "succeeded")):
            assert api.get(f"/v1/jobs/{job_id}").json()["status"] == status
        assert api.get(f"/v1/jobs/{queued}/result").content[:4] == b"\x89PNG"


# --- readiness, on the session's API and workers ---------------------------------------------------
def test_dead_worker_leaves_readiness_within_seconds(stack: Stack) -> None:
    """A worker killed with -9 is out of /readyz's count within ~10 s (its rq key's short TTL,
    refreshed every 2 s by a live worker), not the 90 s of rq's default."""
    stack.workers = [w for w in stack.workers if w.alive()]
    base = len(stack.workers)
    extra = Proc("worker", ["worker", "--queues", "short,long", "--device", "cpu", "--no-preload"], stack.env)
    stack.workers.append(extra)
    stack.wait_workers(base + 1)
    extra.kill9()
    t0 = time.monotonic()
    while httpx.get(stack.base + "/readyz", timeout=5).json()["checks"]["workers"] > base:
        assert time.monotonic() - t0 < 15, "the dead worker still counts after 15 s"
        time.sleep(0.25)
    dt = time.monotonic() - t0
    assert dt < WORKER_LIVENESS_S + 3, dt
    stack.workers.remove(extra)
    if os.environ.get("CNNVIZ_TEST_TIMINGS"):
        print(f"dead worker out of /readyz after {dt:.1f}s")  # noqa: T201


# --- cancel keeps what it made --------------------------------------------------------------------
def test_cancelled_training_is_a_usable_partial_style(api: httpx.Client) -> None:
    """A fast_style run cancelled after its first checkpoint is listed as ``status: partial`` with
    its step, applies (from the checkpoint's weights), and a resume finishes it (``ready``)."""
    cid = _collection(api, [_png(_stripes()), _png(_stripes()[::-1].copy())])
    params = {"name": "halfway", "collection": cid, **TINY_STYLE, "steps": 2000, "checkpoint_every": 2,
              "preview_every": 0, "eval_every": 1000}
    r = api.post("/v1/jobs", files=[("image", ("s.png", _png(_stripes()), "image/png"))],
                 data={"params": json.dumps({"type": "fast_style", "params": params})})
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    wait_status(api, job_id, lambda b: (b["progress"].get("checkpoint_step") or 0) >= 2, timeout_s=120)
    during = api.get("/v1/styles/halfway").json()
    assert during["status"] == "partial" and during["training_job"] == job_id
    assert api.delete(f"/v1/jobs/{job_id}").status_code in (200, 202)
    assert wait_done(api, job_id)["status"] == "canceled"

    info = api.get("/v1/styles/halfway").json()
    assert info["status"] == "partial" and info["step"] == info["checkpoint_step"] >= 2, info
    assert info["training_job"] is None and info["summary"]["config"]["network"]["width"] == 4
    assert [(s["name"], s["status"]) for s in api.get("/v1/styles").json()["items"]] == [("halfway", "partial")]
    applied = api.post("/v1/styles/halfway/apply", files=[("image", ("c.png", _png(_stripes()), "image/png"))],
                       data={"params": json.dumps({"size": 32})}, headers={"Accept": "image/png"})
    assert applied.status_code == 200 and applied.content[:4] == b"\x89PNG", applied.text

    kept = info["step"]
    r = api.post("/v1/jobs", json={"params": {"type": "fast_style",
                                              "params": {"name": "halfway", "resume": True, "steps": kept + 2}}})
    assert r.status_code == 202, r.text
    assert wait_done(api, r.json()["id"], timeout_s=120)["status"] == "succeeded"
    info = api.get("/v1/styles/halfway").json()
    assert info["status"] == "ready" and info["step"] == kept + 2
    assert api.delete("/v1/styles/halfway").status_code == 204


# --- previews --------------------------------------------------------------------------------------
def _events(api: httpx.Client, job_id: str) -> list[tuple[str, dict[str, Any]]]:
    out, event = [], ""
    with api.stream("GET", f"/v1/jobs/{job_id}/events", timeout=60) as r:
        for line in r.iter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                out.append((event, json.loads(line.split(":", 1)[1])))
                if event == "done":
                    break
    return out


def test_every_announced_preview_answers_until_announced_dropped(api: httpx.Client) -> None:
    """70 previews: the newest 64 are kept (and listed in the status); each of the 6 older ones is
    announced dropped, and only those 404."""
    from core.store.config import JobConfig

    keep = JobConfig().max_previews
    r = submit(api, dream(steps=keep + 6, preview_every=1))
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    assert wait_done(api, job_id, timeout_s=90)["status"] == "succeeded"
    events = _events(api, job_id)
    announced = [d["name"] for e, d in events if e == "preview"]
    dropped = [d["name"] for e, d in events if e == "preview-dropped"]
    assert len(announced) == keep + 6 and dropped == announced[:6]
    kept = [a for a in announced if a not in dropped]
    assert [p["name"] for p in api.get(f"/v1/jobs/{job_id}").json()["previews"]] == kept
    for name in (dropped[-1], *kept[:2], kept[-1]):
        want = 404 if name in dropped else 200
        assert api.get(f"/v1/jobs/{job_id}/artifacts/{name}").status_code == want, name


# --- the parts, without a server -------------------------------------------------------------------
def test_embedded_redis_keeps_data_port_and_refuses_a_second_server(tmp_path: Path) -> None:
    first = EmbeddedRedis(data_dir=tmp_path).start()
    try:
        Redis.from_url(first.url).rpush("queued", "job")
        with pytest.raises(RuntimeError, match="another cnnviz serve"):
            EmbeddedRedis(data_dir=tmp_path).start()
    finally:
        first.close()
    again = EmbeddedRedis(data_dir=tmp_path).start()
    try:
        assert again.url == first.url and Redis.from_url(again.url).lrange("queued", 0, -1) == [b"job"]
        assert (tmp_path / "redis" / "appendonly.aof").is_file()
    finally:
        again.close()
    assert (tmp_path / "redis" / "appendonly.aof").is_file()  # close() keeps a durable directory


def test_supervisor_backs_off_and_gives_up_on_a_crash_loop() -> None:
    starts: list[float] = []

    def spawn(_kind: str) -> subprocess.Popen[bytes]:
        starts.append(time.monotonic())
        return subprocess.Popen([sys.executable, "-c", "import os; os.kill(os.getpid(), 9)"])

    sup = Supervisor(spawn, ["short"], base_delay_s=0.1, max_restarts=3, window_s=60, poll_s=0.02)
    sup.start()
    deadline = time.monotonic() + 20
    while not sup.slots[0].given_up and time.monotonic() < deadline:
        time.sleep(0.05)
    sup.stop()
    assert sup.slots[0].given_up and len(starts) == 4  # the first start and 3 restarts
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    assert gaps[0] >= 0.1 and gaps[1] >= 0.2 and gaps[2] >= 0.4  # exponential backoff
