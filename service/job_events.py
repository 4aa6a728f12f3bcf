"""Following a job without holding a thread: the long-poll (:func:`long_poll`) and server-sent events
(:func:`event_stream`).

Both read the job's event stream (``{p}:job:{id}:events``, written by the worker: status,
progress, preview, done) with redis.asyncio, a blocking XREAD awaited on the event loop, so any
number of waiting clients hold Redis connections but no thread-pool thread, and ``/healthz`` and
the inline routes stay free. Reads that check ownership or settle a dead worker's job are short
and go through :meth:`JobClient.get` in the pool.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import redis
from starlette.concurrency import run_in_threadpool

from core.errors import DomainError
from core.store.job_records import TERMINAL
from service.auth import Principal
from service.job_client import JobClient

log = logging.getLogger(__name__)

MAX_WAIT_S = 30.0
WAIT_BLOCK_S = 1.0  # a long-poll re-reads the job's status at least this often (events wake it sooner)
SSE_MAX_S = 300.0  # one SSE response lasts at most this long; clients resume with Last-Event-ID
SSE_KEEPALIVE_S = 10.0
SSE_BLOCK_MS = 1000  # one awaited XREAD waits this long for new events


async def long_poll(jobs: JobClient, principal: Principal, job_id: str, wait_s: float) -> dict[str, Any]:
    """Long-poll: return when the job is finished or after ``wait_s`` (at most 30 s).

    Two short reads in the thread pool (the first and the last); in between it awaits the
    job's event stream on the event loop, so a finished job answers as soon as its done event.
    """
    deadline = time.monotonic() + min(max(wait_s, 0.0), MAX_WAIT_S)
    rec = await run_in_threadpool(jobs.get, principal, job_id)  # ownership, settling, the shape
    if rec["status"] in TERMINAL or time.monotonic() >= deadline:
        return rec
    # Between the first and the last read no thread is held: a blocking XREAD on the job's
    # event stream (woken by every status, progress and done event) and an HGET of its status
    # are awaited on the event loop, at most WAIT_BLOCK_S apart.
    aredis, events, key = jobs.async_redis(), jobs.store.events_key(job_id), jobs.store.job_key(job_id)
    last = "$"
    try:
        while time.monotonic() < deadline:
            block_ms = max(10, int(min(WAIT_BLOCK_S, deadline - time.monotonic()) * 1000))
            for _stream, entries in await aredis.xread({events: last}, count=100, block=block_ms) or []:
                last = entries[-1][0]
            status = await aredis.hget(key, "status")
            if status is None or status.decode() in TERMINAL:
                break
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
        # A restarted Redis leaves the asyncio pool's connections dead; the sync read below
        # answers (or raises the 503) and the pool reconnects on its next use.
        log.info("long-poll of job %s: async Redis read failed; answering from a fresh read", job_id)
    return await run_in_threadpool(jobs.get, principal, job_id)


async def event_stream(jobs: JobClient, principal: Principal, job_id: str,
                 last_event_id: str | None) -> AsyncIterator[str]:
    """Server-sent events from the job's stream, resuming after ``last_event_id``.

    The tenant check runs before the response starts (404); the lines are produced as events
    arrive, for at most SSE_MAX_S (the client resumes with Last-Event-ID).
    """
    await run_in_threadpool(jobs.get, principal, job_id)  # 404 before the stream starts
    after = last_event_id if last_event_id and _valid_stream_id(last_event_id) else "0-0"
    return _event_lines(jobs, principal, job_id, after)


async def _read_events(jobs: JobClient, job_id: str, after: str, block_ms: int | None) -> list[tuple[str, str, str]]:
    res = await jobs.async_redis().xread({jobs.store.events_key(job_id): after}, count=200, block=block_ms)
    return [(eid.decode(), f[b"event"].decode(), f[b"data"].decode()) for _k, entries in res or []
            for eid, f in entries]


async def _event_lines(jobs: JobClient, principal: Principal, job_id: str, after: str) -> AsyncIterator[str]:
    started = time.monotonic()
    last_sent = started
    yield "retry: 2000\n\n"
    while time.monotonic() - started < SSE_MAX_S:
        try:
            entries = await _read_events(jobs, job_id, after, SSE_BLOCK_MS)
        except redis.exceptions.RedisError:
            yield "event: error\ndata: {\"type\": \"jobs-unavailable\"}\n\n"
            return
        for eid, event, data in entries:
            after = eid
            last_sent = time.monotonic()
            yield f"id: {eid}\nevent: {event}\ndata: {data}\n\n"
            if event == "done":
                return
        if not entries:
            try:  # one short read in the pool; it settles an abandoned job, which adds "done"
                rec = await run_in_threadpool(jobs.get, principal, job_id)
                if rec["status"] in TERMINAL and not await _read_events(jobs, job_id, after, None):
                    # the stream expired before the record: synthesize the final event
                    yield f"event: done\ndata: {json.dumps({'status': rec['status']})}\n\n"
                    return
            except DomainError:
                return
            except redis.exceptions.RedisError:
                yield "event: error\ndata: {\"type\": \"jobs-unavailable\"}\n\n"
                return
            if time.monotonic() - last_sent > SSE_KEEPALIVE_S:
                last_sent = time.monotonic()
                yield ": keepalive\n\n"


def _valid_stream_id(s: str) -> bool:
    a, _, b = s.partition("-")
    return a.isdigit() and (b == "" or b.isdigit()) and len(s) < 40
