"""Batching across requests over real HTTP: throughput and p50/p99 at 1, 4 and 8 concurrent clients.

Three API processes under uvicorn on 127.0.0.1 (no Redis): ``on``, batching with the defaults
(``batch_max_images`` 4, ``batch_wait_ms`` 5, compute lanes of core/lanes.py: one lane of 2 torch
threads on 2 cores); ``off``, the same without batching (``batch_max_images`` 1); ``unbounded``,
the service before batching and lanes (no batching, 64 lanes, torch threads = cores each). Each
client is a thread with its own keep-alive connection posting a 224 px JPEG of ``chelsea`` to
Grad-CAM with ``Accept: image/png`` in a loop. Rounds interleave the servers and the client counts,
so a noisy neighbour hits them alike.

    .venv/bin/python bench/bench_batching.py [--seconds 8] [--rounds 2] [--readme]
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.readme import write_block  # noqa: E402

URL = "/v1/models/efficientnet-lite0/explain/gradcam"
log = logging.getLogger("bench")


def _jpeg() -> bytes:
    import skimage.data
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(skimage.data.chelsea()).resize((224, 224), Image.BILINEAR).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(port: int, env: dict[str, str]) -> subprocess.Popen:
    full = {**os.environ, "CNNVIZ_REDIS_URL": "", "REDIS_URL": "", **env}
    full.pop("CNNVIZ_REDIS_URL")
    full.pop("REDIS_URL")
    code = ("import uvicorn; from service.app import create_app; "
            f"uvicorn.run(create_app(), host='127.0.0.1', port={port}, log_level='warning')")
    return subprocess.Popen([sys.executable, "-c", code], env=full)


def _wait_up(base: str, jpeg: bytes, timeout: float = 1800) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        try:
            if httpx.get(base + "/healthz", timeout=2).status_code == 200:
                model_url = base + URL.rsplit("/explain", 1)[0]
                # The first request loads the model (when not preloaded) and starts its compile in the
                # background (core/compiled.py); measure once it is ready. A request that runs while the
                # compile thread traces the model with torch.fx can fail (fx patches nn.Module.__call__
                # process-wide): such answers are retried here, never counted.
                with httpx.Client(base_url=base, timeout=60) as c:
                    while time.time() - t0 < timeout:
                        try:
                            _one(c, jpeg)
                        except RuntimeError as exc:
                            log.warning("%s: a warm-up request failed while the model compiled: %s", base, exc)
                        if httpx.get(model_url, timeout=5).json().get("compiled") != "compiling":
                            break
                        time.sleep(1)
                    else:
                        raise RuntimeError(f"{base}: the compile did not finish within {timeout:.0f} s")
                    for _ in range(5):  # warm: first-call allocations, lazy imports
                        _one(c, jpeg)
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{base} did not come up")


def serve_modes(modes: dict[str, dict[str, str]], jpeg: bytes, servers: list[subprocess.Popen]) -> dict[str, str]:
    """One API process per mode (its extra environment), warmed; appended to ``servers`` as they start."""
    bases = {}
    for name, env in modes.items():
        port = _port()
        servers.append(_serve(port, env))
        bases[name] = f"http://127.0.0.1:{port}"
    for base in bases.values():
        _wait_up(base, jpeg)
    return bases


def _one(client: httpx.Client, jpeg: bytes) -> float:
    t = time.perf_counter()
    r = client.post(URL, files={"image": ("chelsea.jpg", jpeg, "image/jpeg")}, headers={"Accept": "image/png"})
    if r.status_code != 200:
        raise RuntimeError(f"{r.status_code}: {r.text[:200]}")
    return time.perf_counter() - t


def _load(base: str, jpeg: bytes, clients: int, seconds: float) -> tuple[int, list[float], float]:
    lat: list[list[float]] = [[] for _ in range(clients)]
    stop = time.perf_counter() + seconds

    def loop(i: int) -> None:
        with httpx.Client(base_url=base, timeout=60) as c:
            while time.perf_counter() < stop:
                lat[i].append(_one(c, jpeg))

    t0 = time.perf_counter()
    threads = [threading.Thread(target=loop, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    flat = [x for row in lat for x in row]
    return len(flat), flat, wall


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=8.0, help="per client count, server and round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--clients", default="1,4,8")
    ap.add_argument("--modes", default="on,off,unbounded", help="of on, off, unbounded, on-1-slot, fixed-lanes")
    ap.add_argument("--readme", action="store_true", help="rewrite the batching block of docs/benchmarks.md")
    args = ap.parse_args()
    counts = [int(c) for c in args.clients.split(",")]
    jpeg = _jpeg()
    # "unbounded" is the service before batching: every request computes at once, each with every core's threads
    modes = {"on": {}, "off": {"CNNVIZ_BATCH_MAX_IMAGES": "1"},
             "unbounded": {"CNNVIZ_BATCH_MAX_IMAGES": "1", "CNNVIZ_INLINE_SLOTS": "64",
                           "CNNVIZ_TORCH_THREADS": str(os.cpu_count() or 1)},
             "on-1-slot": {"CNNVIZ_INLINE_SLOTS": "1"},
             # the lanes before elastic lanes (core/lanes.py): one lane as wide as the cores, always
             "fixed-lanes": {"CNNVIZ_ELASTIC_LANES": "false"}}
    modes = {m: modes[m] for m in args.modes.split(",")}
    servers: list[subprocess.Popen] = []
    try:
        bases = serve_modes(modes, jpeg, servers)
        acc: dict[tuple[str, int], list] = {(m, c): [0, [], 0.0] for m in modes for c in counts}
        for _ in range(args.rounds):
            for c in counts:
                for m in modes:
                    n, lat, wall = _load(bases[m], jpeg, c, args.seconds)
                    a = acc[(m, c)]
                    a[0] += n
                    a[1] += lat
                    a[2] += wall
        import torch

        out = [f"torch {torch.__version__}, {os.cpu_count()} CPUs, EfficientNet-Lite0 Grad-CAM, 224 px JPEG "
               f"chelsea, Accept: image/png, {args.rounds} x {args.seconds:.0f} s per cell, interleaved", "",
               "| clients | mode | requests | req/s | p50 ms | p99 ms |", "|---|---|---|---|---|---|"]
        for c in counts:
            for m in modes:
                n, lat, wall = acc[(m, c)]
                out.append(f"| {c} | {m} | {n} | {n / wall:.1f} | {1000 * statistics.median(lat):.0f} | "
                           f"{1000 * _pct(lat, 0.99):.0f} |")
        rate = {k: v[0] / v[2] for k, v in acc.items()}
        metrics = httpx.get(bases["on"] + "/metrics", timeout=10).text
        got = {ln.split()[0]: float(ln.split()[1]) for ln in metrics.splitlines()
               if ln.startswith("cnnviz_inline_batch_requests_")}
        calls = got.get("cnnviz_inline_batch_requests_count", 0.0)
        if calls:
            out += ["", f"batching on: {got['cnnviz_inline_batch_requests_sum'] / calls:.2f} requests per engine call "
                        f"on average over {calls:.0f} calls (warm-up included)"]
        from bench.bench_speed import rss_mb

        out += ["", "resident memory of each API process after its runs: " + ", ".join(
            f"{m} {rss_mb(s.pid):.0f} MB" for m, s in zip(modes, servers, strict=True))]
        out.append("")
        for c in counts[1:]:
            out.append(f"{c} clients vs 1 (each mode's own): " + ", ".join(
                f"{m} {rate[(m, c)] / rate[(m, counts[0])]:.2f}x" for m in modes))
        sys.stdout.write("\n".join(out) + "\n")
        if args.readme:
            write_block("batching", "\n".join(out))
    finally:
        for s in servers:
            s.terminate()
        for s in servers:
            s.wait(10)


if __name__ == "__main__":
    main()
