"""What a job sees while it runs in a worker: models loaded once per process, progress, previews,
cancel, artifacts, and a heartbeat that tells the API the job is still alive.

:func:`execute` wraps every job function. It claims the job (queued -> running, atomically, so a
job canceled while queued never starts), keeps a heartbeat key alive from a background thread,
and turns every way a job can end into a terminal status: success, :class:`Cancelled`,
out-of-memory, an rq timeout, any other exception, or the worker being shut down. Errors are
re-raised after they are recorded so rq keeps its own failure record (``failure_ttl``); the worker
itself goes on to the next job.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import torch
from redis import Redis

from cnnviz.models import Catalog, LoadedModel
from cnnviz.render import encode_png, to_uint8_image
from cnnviz.synthesis import Cancelled
from core.settings import get_settings
from core.store.config import JobConfig
from core.store.job_records import CANCELED, FAILED, QUEUED, RUNNING, SUCCEEDED, JobStore

log = logging.getLogger(__name__)

_catalog: Catalog | None = None
_catalog_lock = threading.Lock()
_model_loads = 0  # how many models this process has loaded; a second job on the same model adds none
PROGRESS_INTERVAL_S = 0.25  # progress writes per job: a few a second, whatever the step rate


def catalog() -> Catalog:
    """The process-global catalog, built on first use from the process's settings (models file, device)."""
    global _catalog
    if _catalog is None:
        with _catalog_lock:
            if _catalog is None:
                s = get_settings()
                _catalog = Catalog.open(s.models_file, s.device, s.default_model)
    return _catalog


def get_model(name: str | None) -> LoadedModel:
    """A model from the process-global catalog, loading it on first use only."""
    global _model_loads
    cat = catalog()
    name = name or cat.default
    if not cat.is_loaded(name):
        with _catalog_lock:
            if not cat.is_loaded(name):
                cat.get(name)
                _model_loads += 1
    return cat.get(name)


def model_loads() -> int:
    return _model_loads


def worker_redis() -> Redis:
    """The connection of the rq job being run, or the settings' Redis when called outside a worker."""
    from rq import get_current_job

    job = get_current_job()
    if job is not None:
        return job.connection
    return Redis.from_url(get_settings().redis_url or "redis://127.0.0.1:6379/0")


class _Heartbeat(threading.Thread):
    """Refreshes the job's heartbeat key until stopped; dies with the process on kill -9."""

    def __init__(self, store: JobStore, job_id: str, cfg: JobConfig) -> None:
        super().__init__(name=f"heartbeat-{job_id}", daemon=True)
        self.store, self.job_id, self.cfg = store, job_id, cfg
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.cfg.heartbeat_interval_s):
            try:
                self.store.beat(self.job_id, self.cfg.heartbeat_ttl_s)
            except Exception:  # noqa: BLE001 - a Redis blip must not kill the job; the next beat retries
                log.warning("heartbeat for job %s failed", self.job_id, exc_info=True)

    def stop(self) -> None:
        self._stop_event.set()


class JobContext:
    """The job's side of Redis, as plain callables the engine can take."""

    def __init__(self, store: JobStore, record: dict[str, Any], cfg: JobConfig) -> None:
        self.store = store
        self.record = record
        self.id: str = record["id"]
        self.cfg = cfg
        self.spec: dict[str, Any] = record.get("spec") or {}
        self.artifact_ttl_s = int(record.get("artifact_ttl_s") or 86400)
        self.result_ttl_s = int(record.get("result_ttl_s") or 86400)
        self.max_artifact_bytes = int(record.get("max_artifact_bytes") or 32 * 1024 * 1024)
        self._last_progress = 0.0
        self._previews: list[str] = []

    def model(self) -> LoadedModel:
        m = get_model(self.record.get("model") or None)
        self.store.update(self.id, model_loads=model_loads())
        return m

    def inputs(self) -> list[bytes]:
        return self.store.get_inputs(self.id, int(self.record.get("n_inputs") or 0))

    def cancelled(self) -> bool:
        return self.store.cancel_requested(self.id)

    def progress(self, step: int, total: int, stage: str = "", objective: float | None = None,
                 message: str | None = None) -> None:
        """Record progress, throttled to a few writes a second (the last step always counts)."""
        now = time.monotonic()
        if step < total and now - self._last_progress < PROGRESS_INTERVAL_S:
            return
        self._last_progress = now
        fields: dict[str, Any] = {"step": step, "total": total, "stage": stage}
        if objective is not None:
            fields["objective"] = round(float(objective), 6)
        if message is not None:
            fields["message"] = message
        self.store.update(self.id, **fields)
        self.store.add_event(self.id, "progress", fields, self.result_ttl_s)

    def metrics(self, step: int, values: dict[str, float]) -> None:
        """An evaluation during training: a ``metrics`` event, and a one-line summary in the status."""
        self.store.add_event(self.id, "metrics", {"step": step, **values}, self.result_ttl_s)
        self.store.update(self.id, message=", ".join(f"{k} {v:.4g}" for k, v in values.items()))

    def put(self, name: str, data: bytes, media_type: str) -> None:
        if len(data) > self.max_artifact_bytes:
            raise ValueError(f"artifact {name} is {len(data)} bytes, over the limit of {self.max_artifact_bytes}")
        self.store.put_artifact(self.id, name, data, media_type, self.artifact_ttl_s)

    def put_json(self, name: str, value: Any) -> None:
        self.put(name, json.dumps(value, separators=(",", ":")).encode(), "application/json")

    def preview(self, step: int, image: torch.Tensor) -> None:
        """Store a preview PNG and announce it; past ``max_previews`` the oldest is deleted and a
        ``preview-dropped`` event says so, so an announced preview answers until it is announced gone."""
        name = f"preview-{step:05d}.png"
        self.put(name, encode_png(to_uint8_image(image)), "image/png")
        self._previews.append(name)
        dropped = []
        while len(self._previews) > self.cfg.max_previews:
            dropped.append(self._previews.pop(0))
            self.store.delete_artifact(self.id, dropped[-1])
        self.store.update(self.id, previews=self._previews)
        for old in dropped:
            self.store.add_event(self.id, "preview-dropped", {"name": old, "step": int(old[8:-4]),
                                                              "kept": self.cfg.max_previews}, self.result_ttl_s)
        self.store.add_event(self.id, "preview", {"step": step, "name": name}, self.result_ttl_s)

    def succeed(self, result: str, **fields: Any) -> None:
        self.store.finish(self.id, SUCCEEDED, self.result_ttl_s, self.artifact_ttl_s, result=result, **fields)


def _fail(ctx: JobContext, error_type: str, detail: str) -> None:
    log.warning("job %s failed: %s: %s", ctx.id, error_type, detail)
    try:
        ctx.store.finish(ctx.id, FAILED, ctx.result_ttl_s, ctx.artifact_ttl_s, error_type=error_type,
                         error_detail=detail[:2000])
    except Exception:  # noqa: BLE001 - recording must not hide the original error
        log.exception("could not record the failure of job %s", ctx.id)


def execute(job_id: str, prefix: str, body: Callable[[JobContext], None]) -> dict[str, Any]:
    """Claim, run and settle one job; see the module docstring."""
    from rq.timeouts import JobTimeoutException

    cfg = get_settings().job_config
    store = JobStore(worker_redis(), prefix)
    record = store.get(job_id)
    if record is None:
        log.warning("job %s has no record (expired or deleted); skipping", job_id)
        return {"skipped": "missing"}
    store.fair_started(record.get("queue", ""), job_id)  # off the queue: its round is the queue's now
    store.beat(job_id, cfg.heartbeat_ttl_s)  # before the claim, so the API never sees running without a beat
    attempt = int(record.get("attempts") or 0) + 1  # a retry after a dead worker is attempt 2, ...
    claimed = store.transition(job_id, (QUEUED,), status=RUNNING, started_at=time.time(), worker_pid=os.getpid(),
                               worker_host=socket.gethostname(), model_loads=model_loads(), attempts=attempt)
    if not claimed:
        log.info("job %s is %s, not queued; skipping", job_id, record.get("status"))
        return {"skipped": record.get("status")}
    with store.redis.pipeline(transaction=False) as p:
        p.zrem(store.admitted_key(record.get("queue", "")), job_id)
        p.zadd(store.running_key(), {job_id: time.time()})  # watched by the API's reaper
        p.execute()
    store.add_event(job_id, "status", {"status": RUNNING, "attempt": attempt},
                    int(record.get("result_ttl_s") or 86400))
    record["status"] = RUNNING
    ctx = JobContext(store, record, cfg)
    hb = _Heartbeat(store, job_id, cfg)
    hb.start()
    t0 = time.perf_counter()
    try:
        body(ctx)
    except Cancelled as exc:
        log.info("job %s canceled: %s", job_id, exc)
        store.delete_artifacts(job_id)
        store.finish(job_id, CANCELED, ctx.result_ttl_s, ctx.artifact_ttl_s, message=str(exc))
        return {"status": CANCELED}
    except (torch.cuda.OutOfMemoryError, MemoryError) as exc:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        _fail(ctx, "out-of-memory", f"the job ran out of memory: {exc}"[:500])
        raise
    except JobTimeoutException as exc:
        _fail(ctx, "timeout", f"the job ran past its time limit: {exc}")
        raise
    except Exception as exc:
        _fail(ctx, getattr(exc, "slug", None) or "job-error", str(getattr(exc, "detail", None) or exc)
              or type(exc).__name__)
        raise
    except BaseException:
        _fail(ctx, "worker-shutdown", "the worker was stopped while running this job")
        raise
    finally:
        hb.stop()
    log.info("job %s finished in %.2fs", job_id, time.perf_counter() - t0)
    return {"status": SUCCEEDED}


def png_bytes(image: torch.Tensor) -> bytes:
    """PNG of a ``[3, H, W]`` float image in [0, 1]."""
    return encode_png(to_uint8_image(image))
