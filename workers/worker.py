"""The worker process: rq's :class:`SimpleWorker` (jobs run in this process, no fork per job), so
models loaded once stay loaded for every later job.

A fork per job (rq's default Worker) would load the model again in every child, or share a
CUDA context across fork, which CUDA forbids. The price of running in-process is that a job
that crashes the interpreter takes the worker with it; the API then reports the job
"abandoned" when its heartbeat expires, and the supervisor (compose, systemd, ``cnnviz serve``)
starts a new worker.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time

import redis
import torch
from redis import Redis
from rq import Queue, SimpleWorker, worker_registration
from rq.exceptions import StopRequested
from rq.job import Job
from rq.serializers import JSONSerializer

from core.lanes import cpu_threads
from core.settings import get_settings
from core.store.config import QUEUES, WORKER_BEAT_S, WORKER_LIVENESS_S
from workers.runtime import get_model

log = logging.getLogger(__name__)

SERIALIZER = JSONSerializer  # as the API enqueues: jobs carry ids and small JSON, never pickles

WORKER_TTL_S = 30  # rq's idle poll (dequeue timeout = this - 15 s); liveness is WORKER_LIVENESS_S
_stop = [False]


class _LivenessBeat(threading.Thread):
    """Refreshes the worker's rq key every WORKER_BEAT_S, during jobs too (SimpleWorker sends no
    heartbeat while a job runs); dies with the process, so a dead worker's key expires quickly."""

    def __init__(self, worker: CnnvizWorker) -> None:
        super().__init__(name="worker-liveness", daemon=True)
        self.worker = worker
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.wait(WORKER_BEAT_S):
            try:
                self.worker.heartbeat(WORKER_LIVENESS_S)
            except Exception:  # noqa: BLE001 - a Redis blip: the next beat retries
                log.debug("worker liveness beat failed", exc_info=True)


class CnnvizWorker(SimpleWorker):
    """SimpleWorker that stays visible only while alive (a short-TTL key, refreshed from a thread),
    re-registers after a Redis restart and frees memory between jobs."""

    max_connection_wait_time = 5.0  # reconnect quickly after a Redis restart
    _beat: _LivenessBeat | None = None

    def register_birth(self) -> None:
        super().register_birth()
        self.connection.expire(self.key, WORKER_LIVENESS_S)
        self._beat = _LivenessBeat(self)
        self._beat.start()

    def register_death(self) -> None:
        if self._beat is not None:  # first, so the beat cannot register this worker again
            self._beat.stop_event.set()
            self._beat.join(WORKER_BEAT_S + 5)
            self._beat = None
        super().register_death()

    def heartbeat(self, timeout: int | None = None, pipeline: redis.client.Pipeline | None = None) -> None:
        # rq asks for its key to live worker_ttl + 60 s, or a job's whole timeout while it runs; the
        # liveness beat keeps it alive instead, so a dead worker is gone within WORKER_LIVENESS_S.
        super().heartbeat(min(timeout or WORKER_LIVENESS_S, WORKER_LIVENESS_S), pipeline)
        if pipeline is None:
            # A restarted Redis (no persistence) forgot this worker; register again so /readyz sees it.
            try:
                if not self.connection.sismember(worker_registration.REDIS_WORKER_KEYS, self.key):
                    worker_registration.register(self)
            except redis.exceptions.RedisError:
                pass

    jobs_run = 0

    def request_stop(self, signum: int, frame: object) -> None:
        _stop[0] = True  # remembered across rq worker instances: a SIGTERM ends the process, not one loop
        super().request_stop(signum, frame)

    def execute_job(self, job: Job, queue: Queue) -> None:
        self.jobs_run += 1
        try:
            super().execute_job(job, queue)
        finally:
            try:
                if torch.cuda.is_available():
                    # GPU memory held by cyclic garbage is scarce: collect fully, then return the cache.
                    gc.collect()
                    torch.cuda.empty_cache()
                else:
                    # A full collection of this process's large heap costs ~130 ms per job on the CPU;
                    # the young generations hold what a job leaves behind.
                    gc.collect(1)
            except Exception:  # noqa: BLE001 - cleanup is best effort
                pass


def _wait_for_redis(conn: Redis, stop: list[bool]) -> None:
    delay = 0.5
    while not stop[0]:
        try:
            conn.ping()
            return
        except redis.exceptions.RedisError:
            log.warning("Redis unreachable; retrying in %.1fs", delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def _fit_torch_threads() -> None:
    """Torch threads no more than the CPUs this process may use (its cgroup quota included,
    core.lanes.cpu_threads): torch's default counts the node's cores, which under a container's
    CPU limit makes OpenMP teams that the quota throttles mid-kernel. ``OMP_NUM_THREADS`` wins."""
    if "OMP_NUM_THREADS" in os.environ:
        return
    cores = cpu_threads()
    if torch.get_num_threads() > cores:
        log.info("torch threads: %d (the CPUs this process may use), not %d", cores, torch.get_num_threads())
        torch.set_num_threads(cores)


def run_worker(redis_url: str, queues: list[str] | None = None, *, burst: bool = False, max_jobs: int | None = None,
               preload: str | None = None, log_level: str = "INFO") -> int:
    """Work until stopped (or, with ``burst``, until the queues are empty; or after ``max_jobs``).

    rq's loop quits on some Redis errors; this loop waits for Redis and starts a fresh rq worker,
    so a Redis restart costs a few seconds, not the worker.
    """
    _fit_torch_threads()
    cfg = get_settings().job_config
    queues = [cfg.queue_name(kind) for kind in (queues or QUEUES)]
    conn = Redis.from_url(redis_url, socket_connect_timeout=5, health_check_interval=30)
    if preload:
        t0 = time.perf_counter()
        get_model(None if preload == "default" else preload)
        log.info("preloaded model %s in %.1fs", preload, time.perf_counter() - t0)
    done = 0
    try:
        while True:
            _wait_for_redis(conn, _stop)
            if _stop[0]:
                break
            worker = CnnvizWorker(queues, connection=conn, serializer=SERIALIZER, worker_ttl=WORKER_TTL_S,
                                  job_monitoring_interval=5)
            worker.log_result_lifespan = False
            remaining = None if max_jobs is None else max(0, max_jobs - done)
            try:
                worker.work(burst=burst, max_jobs=remaining, logging_level=log_level)
            except redis.exceptions.RedisError as exc:
                # rq's own teardown (register_death) talks to Redis too and raises when it is gone.
                log.warning("rq worker stopped on a Redis error (%s); waiting for Redis", exc)
            done += worker.jobs_run
            if burst or _stop[0] or (max_jobs is not None and done >= max_jobs):
                break
            log.warning("rq worker loop ended (Redis lost?); starting a fresh one")
            time.sleep(0.5)
    except StopRequested:
        pass  # a signal between two rq loops
    log.info("worker exiting after %d job(s)", done)
    return 0
