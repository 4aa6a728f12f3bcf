"""Admission of a new job: at most ``max_jobs_per_key`` in flight per API key (429) and at most
``max_queued_jobs`` waiting per queue (503 + Retry-After).

Both are *add, then count, then roll back if over*: concurrent submits can be refused a little
too eagerly but never admitted past the bound. Before refusing, ids of jobs that have since
finished, expired or been lost are pruned from the counted set, so a bound never sticks.
"""

from __future__ import annotations

import time

from redis import Redis

from core.errors import TooMany, Unavailable
from core.settings import Settings
from core.store.job_records import ACTIVE, QUEUED, JobStore


def admit(redis: Redis, store: JobStore, settings: Settings, owner: str, job_id: str, queue: str) -> None:
    """Count ``job_id`` against its owner's and its queue's bounds, or raise and count it nowhere."""
    s, r = settings, redis
    active_key = store.owner_active_key(owner)
    r.sadd(active_key, job_id)
    r.expire(active_key, s.artifact_ttl_s)
    if r.scard(active_key) > s.max_jobs_per_key:
        _prune(r, store, active_key, ACTIVE, is_set=True, keep=job_id)
        if r.scard(active_key) > s.max_jobs_per_key:
            r.srem(active_key, job_id)
            raise TooMany("too-many-jobs", "Too many jobs in flight for this key",
                          f"At most {s.max_jobs_per_key} queued or running jobs per API key.",
                          retry_after=5, limit=s.max_jobs_per_key)
    adm = store.admitted_key(queue)
    r.zadd(adm, {job_id: time.time()})
    if r.zcard(adm) > s.max_queued_jobs:
        _prune(r, store, adm, (QUEUED,), is_set=False, keep=job_id)
        if r.zcard(adm) > s.max_queued_jobs:
            r.zrem(adm, job_id)
            r.srem(active_key, job_id)
            raise Unavailable("queue-full", "The job queue is full",
                              f"At most {s.max_queued_jobs} jobs may wait; try again later.",
                              retry_after=10, limit=s.max_queued_jobs)


def _prune(r: Redis, store: JobStore, key: str, states: tuple[str, ...], *, is_set: bool, keep: str) -> None:
    """Drop ids whose job no longer is in ``states`` (finished, expired, or lost)."""
    members = [m.decode() for m in (r.smembers(key) if is_set else r.zrange(key, 0, -1))]
    members = [m for m in members if m != keep]
    if not members:
        return
    with r.pipeline(transaction=False) as p:
        for m in members:
            p.hget(store.job_key(m), "status")
        statuses = p.execute()
    stale = [m for m, st in zip(members, statuses, strict=True) if st is None or st.decode() not in states]
    if stale:
        (r.srem if is_set else r.zrem)(key, *stale)
