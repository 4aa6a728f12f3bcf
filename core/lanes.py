"""Compute lanes: the few long-lived threads a serving process runs all its torch work on.

Why not the server's thread pool: PyTorch's CPU kernels run on OpenMP (libgomp), which keeps one
team of worker threads *per thread that starts a parallel region*, for as long as that thread
lives. libgomp counts every team's threads, and once they outnumber the cores it stops spinning
between regions and sleeps on a futex after each one (its "throttled" wait, as we read libgomp),
so every kernel of every forward pays wake-ups. What we rely on is what we measured on a 2-core
machine, EfficientNet-Lite0 at 224 px, 2 torch threads: a forward from a single thread took about
half as long as the same forward once a second thread had run torch with its own team
(Starlette's pool has 40 threads, each of which builds a team when it first computes), and a
second lane of 2 threads slowed the first lane's lone forward too. (Speed figures live in
docs/benchmarks.md, written by bench/; none is quoted in code.)

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

Where one lane holds every core (2 to 4 cores), the lanes are elastic by default
(:class:`ElasticExecutor`): a lone call runs on the wide lane, and calls that arrive while another
computes run on one-thread lanes, one per core, which neither split kernels nor wait at barriers for
a team member the request threads have preempted. Both kinds never compute at once.

The main thread must not compute either: models are loaded on a lane too (``run``), since the
main thread lives as long as the process and its team would count for ever.

A torch call that slips out of the lanes still must not build a team, so once its lanes run, a
:class:`ComputeLanes` makes one intra-op thread the default of every thread started after it
(:func:`single_threaded_default`). This was found the hard way: a contiguous copy before PNG
encoding ran in the request's pool thread, its team of two joined the lane's, and every later
forward in the process took more than twice as long.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass
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


class ElasticExecutor(Executor):
    """One wide lane of ``width`` torch threads and ``width`` narrow lanes of one, never busy together.

    Why: one lane as wide as the cores gives a lone request its shortest latency, but under load its
    team is preempted mid-kernel by the request threads' light work and waits for the missing member
    at every barrier. Lanes of one thread split no kernel and wait for nobody, so under load the
    cores do more requests per second. Measured on 2 cores, Lite0 Grad-CAM over HTTP, both compiled:
    two lanes of one thread served 8 clients faster than the wide lane alone, but a lone client
    slower. This executor takes both (bench/bench_batching.py: modes ``on`` and ``fixed-lanes``).

    The rule is decided when a call is submitted: a call that finds every lane idle and nothing queued
    is lone and runs wide; any other call runs narrow. A wide call waits until no narrow call runs, and
    a narrow one until the wide call is done, so ``width`` cores are never asked for more than ``width``
    threads. Only the wide lane starts an OpenMP team, so libgomp never counts more threads than cores.
    """

    def __init__(self, width: int, enter: Callable[[int], None]) -> None:
        self.width = width
        self._enter = enter
        self._cond = threading.Condition()
        self._queue: collections.deque[_Call] = collections.deque()
        self._wide_busy = False
        self._narrow_busy = 0
        self._shutdown = False
        self._threads = [threading.Thread(target=self._loop, args=(True,), name="cnnviz-compute-wide",
                                          daemon=True)]
        self._threads += [threading.Thread(target=self._loop, args=(False,), name=f"cnnviz-compute-narrow_{i}",
                                           daemon=True) for i in range(width)]
        self._entered = threading.Barrier(len(self._threads) + 1)
        for t in self._threads:
            t.start()
        self._entered.wait(60)  # every lane has set its width (and so the process default) before we go on

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        future: Future[T] = Future()
        with self._cond:
            if self._shutdown:
                raise RuntimeError("cannot schedule new calls after shutdown")
            lone = not self._queue and not self._wide_busy and self._narrow_busy == 0
            self._queue.append(_Call(future, fn, args, kwargs, wide=lone))
            self._cond.notify_all()
        return future

    def _take(self, wide: bool) -> _Call | None:
        """The next call for a lane of this kind, under the lock; None if it must wait."""
        if not self._queue or self._wide_busy:
            return None
        head = self._queue[0]
        if head.wide != wide or (wide and self._narrow_busy):
            return None
        self._queue.popleft()
        if wide:
            self._wide_busy = True
        else:
            self._narrow_busy += 1
        return head

    def _loop(self, wide: bool) -> None:
        self._enter(self.width if wide else 1)
        self._entered.wait(60)
        while True:
            with self._cond:
                while (call := self._take(wide)) is None:
                    if self._shutdown:
                        return
                    self._cond.wait()
            try:
                if call.future.set_running_or_notify_cancel():
                    try:
                        call.future.set_result(call.fn(*call.args, **call.kwargs))
                    except BaseException as exc:  # noqa: BLE001 - handed to the caller
                        call.future.set_exception(exc)
            finally:
                with self._cond:
                    if wide:
                        self._wide_busy = False
                    else:
                        self._narrow_busy -= 1
                    self._cond.notify_all()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._cond:
            self._shutdown = True
            if cancel_futures:
                while self._queue:
                    self._queue.popleft().future.cancel()
            self._cond.notify_all()
        if wait:
            for t in self._threads:
                t.join()


@dataclass
class _Call:
    future: Future[Any]
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    wide: bool


def elastic_applies(lanes: int, threads: int) -> bool:
    """Whether a lane shape can be elastic: one lane holding several threads (every core, on 2-4 cores)."""
    return lanes == 1 and threads > 1


class ComputeLanes:
    """``lanes`` long-lived threads for torch work, each set to ``threads`` intra-op threads; or, with
    ``elastic``, one lane of ``threads`` for a lone call and ``threads`` lanes of one under load
    (:class:`ElasticExecutor`, the default where one lane holds every core).

    :meth:`run` calls a function on a lane and waits (from any thread; on a lane it calls directly,
    so nested use cannot deadlock); :meth:`arun` awaits it from the event loop.
    """

    def __init__(self, lanes: int | None = None, threads: int | None = None, elastic: bool = False) -> None:
        self.lanes, self.threads = (lanes, threads) if lanes and threads else lane_shape(lanes, threads)
        self.elastic = elastic and elastic_applies(self.lanes, self.threads)
        self._local = threading.local()
        self._pool: Executor
        if self.elastic:
            self._pool = ElasticExecutor(self.threads, self._enter)
            self.lanes = self.threads  # engine calls at once: the narrow lanes
        else:
            self._pool = ThreadPoolExecutor(self.lanes, thread_name_prefix="cnnviz-compute",
                                            initializer=self._enter, initargs=(self.threads,))
        self._start_all()
        log.info("compute: %s", self.describe())

    @property
    def widths(self) -> tuple[int, ...]:
        """The torch thread counts lanes compute at, the widest first (what core/compiled.py compiles for)."""
        return (self.threads, 1) if self.elastic else (self.threads,)

    def describe(self) -> str:
        if self.elastic:
            return f"elastic: 1 lane x {self.threads} torch threads alone, {self.threads} lanes x 1 under load"
        return f"{self.lanes} lane(s) x {self.threads} torch thread(s)"

    def _enter(self, width: int) -> None:
        self._local.lane = True
        torch.set_num_threads(width)
        torch.get_num_threads()  # torch reads its default into a thread lazily: fix this lane's count now

    def _start_all(self) -> None:
        """Start every lane now (the pool would add them one by one under load), then lower the default."""
        torch.get_num_threads()  # the calling thread keeps the count it has
        if not self.elastic:  # the elastic lanes have all started in their constructor
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


_SHARED: dict[tuple[int, int, bool], ComputeLanes] = {}
_SHARED_LOCK = threading.Lock()


def shared_lanes(lanes: int | None = None, threads: int | None = None, elastic: bool = False) -> ComputeLanes:
    """The process's lanes of this shape, made once: apps built in one process (tests, several
    ASGI apps) share them instead of each adding teams that would slow every lane down. ``elastic``
    applies where the shape is one lane of several threads (:class:`ElasticExecutor`)."""
    n, t = lane_shape(lanes, threads)
    shape = (n, t, elastic and elastic_applies(n, t))
    with _SHARED_LOCK:
        if shape not in _SHARED:
            _SHARED[shape] = ComputeLanes(*shape)
        return _SHARED[shape]


DIRECT: Callable[..., Any] = lambda fn, *args, **kwargs: fn(*args, **kwargs)  # noqa: E731
"""A ``run`` that computes in the calling thread (workers, tests, the engine used as a library)."""
