"""`cnnviz serve` as a user starts it: time to ready, and the resident memory of the API and each worker.

Each run starts a fresh ``python -m stack.cli serve --ephemeral`` (the API, an embedded Redis and a
supervised worker per queue, every setting at its default: the Lite models preloaded, compiled
forwards, elastic lanes) and reads:

- *ready*: seconds from the start until ``/readyz`` answers ``"ready": true``;
- *compiled*: seconds until ``GET /v1/models/efficientnet-lite0`` says ``compiled: ready`` (the
  background compile of the default model's forwards);
- the resident set (VmRSS) of the API process and of each worker process, once the compile is
  done and after 20 Grad-CAM answers (what a serving API holds), and the API's peak (VmHWM).

Variants (``--variants``): ``default``; ``compile-off`` (``CNNVIZ_COMPILE_PREDICT=false``: what the
compiled graphs cost in memory); ``fixed-lanes`` (``CNNVIZ_ELASTIC_LANES=false``: one lane, half the
compiled graphs); ``lazy`` (``CNNVIZ_PRELOAD_MODELS=false``: models load on first use). The runs
interleave the variants.

    .venv/bin/python bench/bench_memory.py [--runs 3] [--variants default,compile-off] [--quick] [--readme]

``--readme`` rewrites the ``memory`` block of docs/benchmarks.md and the ``readiness`` block of README.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_speed import chelsea_jpeg  # noqa: E402
from bench.harness import table  # noqa: E402
from bench.readme import write_block  # noqa: E402
from bench.stats import spread  # noqa: E402

log = logging.getLogger("bench")

VARIANTS = {"default": {}, "compile-off": {"CNNVIZ_COMPILE_PREDICT": "false"},
            "fixed-lanes": {"CNNVIZ_ELASTIC_LANES": "false"}, "lazy": {"CNNVIZ_PRELOAD_MODELS": "false"}}


def _status_kb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return float(line.split()[1])
    return float("nan")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _workers(api_pid: int) -> list[int]:
    """The worker processes serve supervises (its children running ``stack.cli ... worker``)."""
    import psutil

    out = []
    for child in psutil.Process(api_pid).children(recursive=True):
        try:
            if "worker" in child.cmdline():
                out.append(child.pid)
        except psutil.Error:
            continue
    return out


def one_run(env_extra: dict[str, str], timeout: float) -> dict[str, float]:
    port = _port()
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "CNNVIZ_REDIS_URL")}
    env.update({"CNNVIZ_LOG_LEVEL": "WARNING", **env_extra})
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "stack.cli", "serve", "--port", str(port), "--ephemeral"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    out: dict[str, float] = {}
    try:
        while "ready_s" not in out:
            if time.monotonic() - t0 > timeout or proc.poll() is not None:
                raise RuntimeError("cnnviz serve did not become ready")
            try:
                if httpx.get(base + "/readyz", timeout=2).json().get("ready"):
                    out["ready_s"] = time.monotonic() - t0
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.2)
        jpeg = chelsea_jpeg()
        files = [("image", ("chelsea.jpg", jpeg, "image/jpeg"))]
        with httpx.Client(base_url=base, timeout=120) as c:
            c.post("/v1/models/efficientnet-lite0/predict", files=files).raise_for_status()  # starts a lazy compile
            while c.get("/v1/models/efficientnet-lite0").json().get("compiled") == "compiling":
                if time.monotonic() - t0 > timeout:
                    raise RuntimeError("the compile did not finish")
                time.sleep(0.5)
            out["compiled_s"] = time.monotonic() - t0
            out["api_idle_mb"] = _status_kb(proc.pid, "VmRSS") / 1024
            for _ in range(20):
                c.post("/v1/models/efficientnet-lite0/explain/gradcam", files=files,
                       headers={"Accept": "image/png"}).raise_for_status()
        out["api_mb"] = _status_kb(proc.pid, "VmRSS") / 1024
        out["api_peak_mb"] = _status_kb(proc.pid, "VmHWM") / 1024
        workers = _workers(proc.pid)
        for i, pid in enumerate(sorted(workers)):
            out[f"worker{i}_mb"] = _status_kb(pid, "VmRSS") / 1024
        out["workers"] = float(len(workers))
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    return out


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--variants", default="default,compile-off,fixed-lanes")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--quick", action="store_true", help="one run per variant: checks the script, not the figures")
    ap.add_argument("--readme", action="store_true", help="rewrite the memory and readiness blocks")
    args = ap.parse_args()
    if args.quick:
        args.runs = 1
    names = args.variants.split(",")
    runs: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    t_start = time.time()
    for i in range(args.runs):
        for name in names:
            res = one_run(VARIANTS[name], args.timeout)
            log.info("run %d %s: %s", i + 1, name, {k: round(v, 1) for k, v in res.items()})
            runs[name].append(res)

    def cell(name: str, key: str, unit: str) -> str:
        vals = [r[key] for r in runs[name] if key in r]
        return spread(vals, unit) if vals else ""

    rows = []
    for name in names:
        n_workers = int(max(r.get("workers", 0) for r in runs[name]))
        workers = ", ".join(cell(name, f"worker{i}_mb", "MB") for i in range(n_workers))
        rows.append([name, cell(name, "ready_s", "s"), cell(name, "compiled_s", "s"), cell(name, "api_idle_mb", "MB"),
                     cell(name, "api_mb", "MB"), cell(name, "api_peak_mb", "MB"), workers])
    head = (f"`python bench/bench_memory.py{' --quick' if args.quick else ''}`: `cnnviz serve --ephemeral`, "
            f"{os.cpu_count()} CPUs, median (min-max) of {args.runs} fresh starts per variant, interleaved "
            f"({(time.time() - t_start) / 60:.0f} min). Resident memory (VmRSS) of the API process once the "
            "default model's compile is done (idle) and after 20 Grad-CAM answers; peak is VmHWM; "
            "one worker per queue.")
    text = head + "\n\n" + table(rows, ["variant", "ready after", "compiled after", "API idle", "API serving",
                                       "API peak", "workers (each)"])
    sys.stdout.write(text + "\n")
    if args.readme:
        write_block("memory", text)
        d = runs.get("default") or next(iter(runs.values()))
        ready = spread([r["ready_s"] for r in d], "s")
        mem = spread([r["api_mb"] for r in d], "MB")
        write_block("readiness", f"Measured by `bench/bench_memory.py{' --quick' if args.quick else ''}` on "
                                 f"{os.cpu_count()} CPUs: ready after {ready}, the API then resident at {mem} "
                                 "while serving (the `memory` table of docs/benchmarks.md has the rest).")


if __name__ == "__main__":
    main()
