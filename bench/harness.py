"""Timing helpers for side-by-side benchmarks: medians over repeats, ratios, map agreement.

This machine is noisy, so every comparison runs in one process, interleaved, and is reported as
a ratio to a peer measured in the same run; absolute times are only context.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Timing:
    name: str
    median_s: float
    runs: int


def median_time(fn: Callable[[], object], repeats: int = 5, warmup: int = 1, min_time_s: float = 0.0) -> Timing:
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < repeats or time.perf_counter() - start < min_time_s:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return Timing(getattr(fn, "__name__", "fn"), statistics.median(times), len(times))


def interleaved(fns: dict[str, Callable[[], object]], repeats: int = 5, warmup: int = 1) -> dict[str, float]:
    """Median seconds per function, running them round-robin so machine noise hits all alike."""
    return _median_times(fns, repeats, block=1, warmup=warmup, settle=False)


def in_blocks(fns: dict[str, Callable[[], object]], rounds: int = 8, block: int = 5,
              warmup: int = 3) -> dict[str, float]:
    """Median seconds per function, each timed in its own warm block; the blocks alternate.

    For peers that run in different processes (a server and this one): a call right after the
    other side's pays for the caches and idle threads that side left behind, so plain
    interleaving charges both sides for the switch. Here each block starts with an untimed call
    and the next ``block`` calls are timed; rounds alternate the functions, so drift still hits
    all alike.
    """
    return _median_times(fns, rounds, block=block, warmup=warmup, settle=True)


def _median_times(fns: dict[str, Callable[[], object]], rounds: int, *, block: int, warmup: int,
                  settle: bool) -> dict[str, float]:
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            if settle:
                fn()
            for _ in range(block):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def as_map(m: object, size: tuple[int, int]) -> torch.Tensor:
    """Any peer's map (numpy or tensor, any leading dims) as a float [H,W] tensor at ``size``."""
    t = torch.as_tensor(m).detach().float().cpu()
    while t.dim() > 2:
        t = t.sum(0) if t.shape[0] > 1 else t[0]
    if tuple(t.shape) != size:
        t = F.interpolate(t[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
    return t


def correlation(a: object, b: object, size: tuple[int, int] = (224, 224)) -> float:
    x, y = as_map(a, size).flatten(), as_map(b, size).flatten()
    x, y = x - x.mean(), y - y.mean()
    den = (x.norm() * y.norm()).item()
    return float((x @ y).item() / den) if den > 0 else float("nan")


def table(rows: list[list[str]], header: list[str]) -> str:
    """A GitHub-markdown table."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])
