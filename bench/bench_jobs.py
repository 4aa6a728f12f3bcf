"""Job-system latency: enqueue-to-start with an idle worker, and status polls under 20 pollers.

Runs the real system on this machine (an embedded Redis, the API under uvicorn, one
``cnnviz worker``) unless ``--url`` points at a running API, and prints p50/p99 in ms.

    .venv/bin/python bench/bench_jobs.py [--jobs 30] [--pollers 20] [--polls 50] [--url http://host:8000]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import httpx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

ROWS: list[list[str]] = []

log = logging.getLogger("bench_jobs")
TINY = {"type": "deepdream", "params": {"octaves": 1, "steps": 1, "size": 32, "jitter": 0, "preview_every": 0}}


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def report(name: str, ms: list[float]) -> None:
    ROWS.append([name, str(len(ms)), f"{pct(ms, 0.5):.1f} ms", f"{pct(ms, 0.99):.1f} ms"])
    sys.stdout.write(f"{name:<34} n={len(ms):<5} p50={pct(ms, 0.5):8.2f} ms  p99={pct(ms, 0.99):8.2f} ms  "
                     f"mean={statistics.fmean(ms):8.2f} ms\n")


def _ts(s: str) -> float:
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def enqueue_to_start(client: httpx.Client, n: int) -> list[float]:
    """Server-side created_at -> started_at for jobs submitted one at a time to an idle worker."""
    out = []
    for _ in range(n):
        time.sleep(0.3)  # let the worker finish its post-job bookkeeping: measure a truly idle worker
        job_id = client.post("/v1/jobs", json={"params": TINY}).json()["id"]
        body = client.get(f"/v1/jobs/{job_id}", params={"wait": 30}).json()
        if body["status"] == "succeeded":
            out.append((_ts(body["started_at"]) - _ts(body["created_at"])) * 1000)
    return out


def poll_latency(base: str, headers: dict[str, str], job_id: str, pollers: int, polls: int,
                 interval_s: float = 0.0) -> list[float]:
    """Each poller polls ``polls`` times; with ``interval_s`` it waits that long between polls
    (with a random phase), as a client honouring ``Retry-After`` would. With 0 the pollers run
    closed-loop, which on 2 cores measures CPU saturation (queueing), not the latency of a poll."""
    import random

    def one(i: int) -> list[float]:
        times = []
        rng = random.Random(i)
        with httpx.Client(base_url=base, headers=headers, timeout=30) as c:
            if interval_s:
                time.sleep(rng.uniform(0, interval_s))
            for _ in range(polls):
                t0 = time.perf_counter()
                c.get(f"/v1/jobs/{job_id}").raise_for_status()
                times.append((time.perf_counter() - t0) * 1000)
                if interval_s:
                    time.sleep(interval_s)
        return times

    with ThreadPoolExecutor(pollers) as pool:
        return [t for ts in pool.map(one, range(pollers)) for t in ts]


def _wait_ready(base: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(base + "/readyz", timeout=2).json()["checks"].get("workers", 0) >= 1:
                return
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        time.sleep(0.3)
    raise TimeoutError("the API or its worker did not come up")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--url", default=None)
    ap.add_argument("--api-key", default=None)
    ap.add_argument("--jobs", type=int, default=30)
    ap.add_argument("--pollers", type=int, default=20)
    ap.add_argument("--polls", type=int, default=50)
    ap.add_argument("--interval", type=float, default=0.25, help="seconds between one poller's polls")
    ap.add_argument("--quick", action="store_true", help="fewer jobs and polls: checks the script, not the figures")
    ap.add_argument("--readme", action="store_true", help="rewrite the jobs block of docs/benchmarks.md")
    args = ap.parse_args()
    if args.quick:
        args.jobs, args.polls = 10, 15
    logging.basicConfig(level=logging.INFO)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    procs: list[subprocess.Popen[bytes]] = []
    redis = None
    base = args.url
    try:
        if base is None:
            from stack.embedded import EmbeddedRedis, free_port

            redis = EmbeddedRedis().start()
            port = free_port()
            tag = uuid.uuid4().hex[:8]
            env = {**os.environ, "REDIS_URL": redis.url, "CNNVIZ_PRELOAD_MODELS": "false",
                   "CNNVIZ_QUEUE": f"bench-{tag}", "CNNVIZ_KEY_PREFIX": f"bench-{tag}", "CNNVIZ_LOG_LEVEL": "WARNING"}
            cli = [sys.executable, "-m", "stack.cli"]
            procs.append(subprocess.Popen([*cli, "serve", "--port", str(port)], env=env))
            procs.append(subprocess.Popen([*cli, "worker"], env=env))
            base = f"http://127.0.0.1:{port}"
        _wait_ready(base)
        headers = {"X-API-Key": args.api_key} if args.api_key else {}
        with httpx.Client(base_url=base, headers=headers, timeout=60) as client:
            enqueue_to_start(client, 2)  # warm-up
            report("enqueue -> start (idle worker)", enqueue_to_start(client, args.jobs))
            job_id = client.post("/v1/jobs", json={"params": TINY}).json()["id"]
            client.get(f"/v1/jobs/{job_id}", params={"wait": 30})
            report(f"status poll ({args.pollers} pollers, every {args.interval:g} s)",
                   poll_latency(base, headers, job_id, args.pollers, args.polls, args.interval))
            report(f"status poll ({args.pollers} pollers, closed loop)",
                   poll_latency(base, headers, job_id, args.pollers, args.polls))
        memory = ""
        if procs:
            from bench.bench_speed import rss_mb

            memory = (f"; resident memory after the run: API {rss_mb(procs[0].pid):.0f} MB, "
                      f"worker {rss_mb(procs[1].pid):.0f} MB (models loaded on first use)")
        from bench.harness import table
        from bench.readme import write_block

        text = (f"embedded Redis, the API under uvicorn, one worker, {os.cpu_count()} CPUs; "
                f"`python bench/bench_jobs.py{' --quick' if args.quick else ''}`{memory}\n\n"
                + table(ROWS, ["measure", "samples", "p50", "p99"]))
        sys.stdout.write(text + "\n")
        if args.readme:
            write_block("jobs", text)
    finally:
        for p in procs:
            p.terminate()
            p.wait(15)
        if redis is not None:
            redis.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
