"""Compute lanes: the few long-lived threads a serving process runs all its torch work on.

Why not the server's thread pool: PyTorch's CPU kernels run on OpenMP (libgomp), which keeps one
team of worker threads *per thread that starts a parallel region*, for as long as that thread
lives. libgomp counts every team's threads, and once they outnumber the cores it stops spinning
between regions and sleeps on a futex after each one (its "throttled" wait, as we read libgomp),
so every kernel of every forward pays wake-ups. What we rely on is what we measured on this
2-core machine, EfficientNet-Lite0 at 224 px, 2 torch threads: one forward takes 20-24 ms from a
single thread, 47-62 ms once a second thread has run torch with its own team (Starlette's pool
has 40 threads, each of which builds a team when it first computes). A second lane of 2 threads
slowed the first lane's lone forward from 22 to 36 ms.

So a process keeps ``lanes x threads <= cores``: ``lanes`` dedicated threads (a
:class:`~concurrent.futures.ThreadPoolExecutor` that never lets them go), each with ``threads``
torch intra-op threads, and every forward or backward of a request goes to a lane; parsing and
decoding stay in the request's thread, and so do the light tensor work of a small explanation
(preprocessing, rendering, the PNG of a 224 px answer: ``core.explaining.light_work``). That work
runs on one torch thread, which starts no team (below), beside the lane instead of queueing on it. The defaults
(:func:`lane_shape`): 4 threads per lane, where a batch-of-one CNN forward stops scaling (or
``OMP_NUM_THREADS`` if lower), and as many lanes as the cores hold (one lane of 2 threads on 2
cores, 4 lanes of 4 on 16). Concurrent requests then queue for a lane and are batched there
(core/batching.py) instead of splitting the cores between teams that slow each other down.

The main thread must not compute either: models are loaded on a lane too (``run``), since the
main thread lives as long as the process and its team would count for ever.

A torch call that slips out of the lanes still must not build a team, so once its lanes run, a
:class:`ComputeLanes` makes one intra-op thread the default of every thread started after it
(:func:`single_threaded_default`). This was found the hard way: a contiguous copy before PNG
encoding ran in the request's pool thread, its team of two joined the lane's, and every later
forward in the process took 37 ms instead of 16.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import torch

log = logging.getLogger(__name__)

T = TypeVar("T")

THREADS_PER_LANE = 4  # a batch-of-one forward of the catalog's CNNs gains little past 4 intra-op threads


def cpu_threads() -> int:
    """CPU cores this process may really use: its affinity mask, and its cgroup's CPU quota.

    A container under a CPU limit (Kubernetes ``limits.cpu``, ``docker run --cpus``) still sees
    every core of the node in its affinity mask; sized to those, the lanes' teams would be throttled
    by the quota mid-kernel and every forward would wait on them. A fractional quota rounds down (1.5
    CPUs: one thread), since a thread that outruns the quota stalls its whole team.
    """
    try:
        cores = max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        cores = max(1, os.cpu_count() or 1)
    limit = cgroup_cpu_limit()
    return min(cores, max(1, int(limit))) if limit is not None else cores


def cgroup_cpu_limit(root: str = "/sys/fs/cgroup", membership: str = "/proc/self/cgroup") -> float | None:
    """CPUs this process's cgroup may use (quota / period), the tightest along its path; None if unlimited.

    cgroup v2 keeps ``cpu.max`` ("max 100000" or "200000 100000") in each directory of the unified
    tree; v1 keeps ``cpu.cfs_quota_us`` (-1: none) and ``cpu.cfs_period_us`` under the ``cpu``
    controller. Inside a container the process's own path is usually ``/`` of its namespace.
    """
    try:
        lines = Path(membership).read_text().splitlines()
    except OSError:
        return None
    limits: list[float] = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":  # v2
            base, read = Path(root), _v2_limit
        elif "cpu" in controllers.split(","):
            base = next((Path(root) / d for d in (controllers, "cpu", "cpu,cpuacct") if (Path(root) / d).is_dir()),
                        Path(root) / "cpu")
            read = _v1_limit
        else:
            continue
        rel = Path(path.lstrip("/"))
        for ancestor in [rel, *rel.parents]:  # the cgroup itself and each parent visible to us
            got = read(base / ancestor)
            if got is not None:
                limits.append(got)
    return min(limits) if limits else None


def _v2_limit(d: Path) -> float | None:
    try:
        quota, period = (d / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError, ZeroDivisionError):
        return None


def _v1_limit(d: Path) -> float | None:
    try:
        quota = int((d / "cpu.cfs_quota_us").read_text())
        period = int((d / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 or period <= 0 else quota / period
    except (OSError, ValueError):
        return None


def _omp_threads() -> int | None:
    """``OMP_NUM_THREADS`` when the operator set it: a cap on the threads of a lane."""
    try:
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    except (KeyError, ValueError):
        return None


def lane_shape(lanes: int | None = None, threads: int | None = None, cores: int | None = None) -> tuple[int, int]:
    """(lanes, torch threads per lane): what is given, the rest chosen so lanes x threads <= cores."""
    cores = cores or cpu_threads()
    if threads is None:
        threads = max(1, cores // lanes) if lanes else min(cores, THREADS_PER_LANE, _omp_threads() or cores)
    if lanes is None:
        lanes = max(1, cores // threads)
    if lanes * threads > cores:
        log.warning("%d compute lanes x %d torch threads is more than the %d cores: OpenMP's teams will wait "
                    "on each other (every kernel slower); keep lanes x threads <= cores", lanes, threads, cores)
    return lanes, threads


class ComputeLanes:
    """``lanes`` long-lived threads for torch work, each set to ``threads`` intra-op threads.

    :meth:`run` calls a function on a lane and waits (from any thread; on a lane it calls directly,
    so nested use cannot deadlock); :meth:`arun` awaits it from the event loop.
    """

    def __init__(self, lanes: int | None = None, threads: int | None = None) -> None:
        self.lanes, self.threads = (lanes, threads) if lanes and threads else lane_shape(lanes, threads)
        self._local = threading.local()
        self._pool = ThreadPoolExecutor(self.lanes, thread_name_prefix="cnnviz-compute", initializer=self._enter)
        self._start_all()
        log.info("compute: %d lane(s) x %d torch thread(s)", self.lanes, self.threads)

    def _enter(self) -> None:
        self._local.lane = True
        torch.set_num_threads(self.threads)
        torch.get_num_threads()  # torch reads its default into a thread lazily: fix this lane's count now

    def _start_all(self) -> None:
        """Start every lane now (the pool would add them one by one under load), then lower the default."""
        torch.get_num_threads()  # the calling thread keeps the count it has
        barrier = threading.Barrier(self.lanes)
        for done in [self._pool.submit(barrier.wait, 60) for _ in range(self.lanes)]:
            done.result()
        single_threaded_default()

    @property
    def on_lane(self) -> bool:
        return getattr(self._local, "lane", False)

    def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if self.on_lane:
            return fn(*args, **kwargs)
        return self._pool.submit(fn, *args, **kwargs).result()

    async def arun(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def single_threaded_default() -> None:
    """One torch intra-op thread for every thread that has not computed yet, lanes and caller kept.

    ``torch.set_num_threads`` sets the calling thread's OpenMP count and the process default that
    each new thread takes on its first torch call; called from a throwaway thread, it changes only
    the default. A thread out of the lanes then computes alone instead of starting a team.
    """
    t = threading.Thread(target=torch.set_num_threads, args=(1,), name="cnnviz-thread-default")
    t.start()
    t.join()


_SHARED: dict[tuple[int, int], ComputeLanes] = {}
_SHARED_LOCK = threading.Lock()


def shared_lanes(lanes: int | None = None, threads: int | None = None) -> ComputeLanes:
    """The process's lanes of this shape, made once: apps built in one process (tests, several
    ASGI apps) share them instead of each adding teams that would slow every lane down."""
    shape = lane_shape(lanes, threads)
    with _SHARED_LOCK:
        if shape not in _SHARED:
            _SHARED[shape] = ComputeLanes(*shape)
        return _SHARED[shape]


DIRECT: Callable[..., Any] = lambda fn, *args, **kwargs: fn(*args, **kwargs)  # noqa: E731
"""A ``run`` that computes in the calling thread (workers, tests, the engine used as a library)."""
