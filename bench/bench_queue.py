"""Queue throughput: tiny jobs per second with 1 and with 2 workers on one Redis.

Runs the real system on this machine for each worker count (an embedded Redis, the API under
uvicorn, N ``cnnviz worker`` processes serving both queues), warms every worker up (its model
loaded), submits ``--jobs`` tiny DeepDream jobs (1 step, 32 px) from 8 threads and waits for them.
Prints jobs/s two ways: server-side (jobs / (last ended_at - first started_at)) and wall-clock
(first submit to last finished, submission included).

    .venv/bin/python -m bench.bench_queue [--jobs 100] [--workers 1,2]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import httpx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a script or with -m

TINY = {"type": "deepdream", "params": {"octaves": 1, "steps": 1, "size": 32, "jitter": 0, "preview_every": 0}}
TERMINAL = ("succeeded", "failed", "canceled")


def _ts(s: str) -> float:
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def _wait(pred: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if pred():  # type: ignore[operator]
                return
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        time.sleep(0.3)
    raise TimeoutError(what)


def _run_all(client: httpx.Client, n: int) -> tuple[list[dict[str, object]], float]:
    t0 = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(lambda _i: client.post("/v1/jobs", json={"params": TINY}).json()["id"], range(n)))
    pending, done = set(ids), {}
    while pending:
        for rec in client.get("/v1/jobs", params={"limit": 500}).json()["jobs"]:
            if rec["id"] in pending and rec["status"] in TERMINAL:
                pending.discard(rec["id"])
                done[rec["id"]] = rec
        time.sleep(0.2)
    return list(done.values()), time.monotonic() - t0


def measure(workers: int, jobs: int) -> tuple[float, float, int]:
    from stack.embedded import EmbeddedRedis, free_port

    redis = EmbeddedRedis().start()
    port = free_port()
    tag = uuid.uuid4().hex[:8]
    env = {**os.environ, "REDIS_URL": redis.url, "CNNVIZ_PRELOAD_MODELS": "false", "OMP_NUM_THREADS": "1",
           "CNNVIZ_QUEUE": f"bench-{tag}", "CNNVIZ_KEY_PREFIX": f"bench-{tag}", "CNNVIZ_LOG_LEVEL": "WARNING",
           "CNNVIZ_MAX_QUEUED_JOBS": "10000", "CNNVIZ_MAX_JOBS_PER_KEY": "10000"}
    env.pop("CNNVIZ_API_KEYS", None)
    cli = [sys.executable, "-m", "stack.cli"]
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    procs = [subprocess.Popen([*cli, "serve", "--port", str(port)], env=env, **quiet)]
    procs += [subprocess.Popen([*cli, "worker", "--queues", "short,long", "--device", "cpu"], env=env, **quiet)
              for _ in range(workers)]
    base = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: httpx.get(base + "/readyz", timeout=2).json()["checks"]["workers"] >= workers, 180,
              "workers did not come up")
        with httpx.Client(base_url=base, timeout=60) as client:
            _run_all(client, 4 * workers)  # warm-up: every worker has loaded its model
            recs, wall = _run_all(client, jobs)
        ok = [r for r in recs if r["status"] == "succeeded"]
        span = max(_ts(r["ended_at"]) for r in ok) - min(_ts(r["started_at"]) for r in ok)  # type: ignore[arg-type]
        return len(ok) / span, len(ok) / wall, len(recs) - len(ok)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(15)
        redis.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--jobs", type=int, default=100)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--quick", action="store_true", help="30 jobs: checks the script, not the figures")
    ap.add_argument("--readme", action="store_true", help="rewrite the queue block of docs/deployment.md")
    args = ap.parse_args()
    if args.quick:
        args.jobs = 30
    rows = []
    for n in (int(x) for x in args.workers.split(",")):
        server, wall, bad = measure(n, args.jobs)
        sys.stdout.write(f"workers={n}  jobs={args.jobs}  {server:6.1f} jobs/s (server: first start -> last end)  "
                         f"{wall:6.1f} jobs/s (wall, submission included)  not succeeded={bad}\n")
        sys.stdout.flush()
        rows.append([str(n), f"{server:.1f} jobs/s", f"{wall:.1f} jobs/s", str(bad)])
    if args.readme:
        from bench.harness import table
        from bench.readme import write_block

        write_block("queue", f"{os.cpu_count()} CPUs, {args.jobs} jobs per row; "
                             f"`python -m bench.bench_queue{' --quick' if args.quick else ''}`\n\n"
                    + table(rows, ["workers", "server side (first start to last end)",
                                   "wall (submission included)", "not succeeded"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
