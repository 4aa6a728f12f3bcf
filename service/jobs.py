"""The API's side of the job system: submit, read, wait, stream, cancel, list, fetch artifacts.

Routes call :class:`JobClient`; it speaks to Redis through :class:`core.store.jobs.JobStore` and to
rq through a :class:`rq.Queue` with the JSON serializer. Admission control happens here:

- the queue bound (503 + Retry-After) and the per-key bound on queued + running jobs (429) are
  both *add, then count, then roll back if over*: concurrent submits can be refused a little too
  eagerly but never admitted past the bound;
- a running job whose heartbeat key has expired is settled by whoever reads it first: queued
  again on its queue (same id, inputs kept, ``attempts`` counted by the worker) while its job
  type's ``retries`` allow, a training job from its last checkpoint; else failed/``abandoned``.
  Either way atomically (a compare-and-set on the attempt), so a dead worker's job never shows
  "running" forever and two replicas never retry it twice;
- inside a queue, jobs are ordered fairly across API keys (:class:`FairQueue`).

Every Redis failure becomes a 503 ``jobs-unavailable``: inline routes do not touch Redis and keep
working while it is down.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import redis
import redis.asyncio as aioredis
from redis import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from rq import Queue, worker_registration
from rq.job import Job
from rq.serializers import JSONSerializer
from starlette.concurrency import run_in_threadpool

from core.errors import Conflict, DomainError, Gone, Invalid, NotFound, TooMany, Unavailable, jobs_unavailable
from core.jobtypes import JOB_TYPES
from core.store.config import QUEUES, JobConfig
from core.store.jobs import ACTIVE, CANCELED, FAILED, QUEUED, RUNNING, SUCCEEDED, TERMINAL, JobStore
from service.auth import Principal
from service.schemas.jobs import ArtifactLink, JobError, JobLinks, JobProgress, JobStatus, WorkerInfo
from service.settings import Settings

log = logging.getLogger(__name__)

SERIALIZER = JSONSerializer  # as the workers use: jobs carry ids and small JSON, never pickles

MAX_WAIT_S = 30.0
WAIT_BLOCK_S = 1.0  # a long-poll re-reads the job's status at least this often (events wake it sooner)
SSE_MAX_S = 300.0  # one SSE response lasts at most this long; clients resume with Last-Event-ID
SSE_KEEPALIVE_S = 10.0
SSE_BLOCK_MS = 1000  # one awaited XREAD waits this long for new events
ABANDON_GRACE_S = 1.0
REAP_INTERVAL_S = 2.0  # each API process settles dead workers' jobs this often
IDEM_PENDING = "pending"
IDEM_PENDING_TTL_S = 30  # a claim whose request died frees the key after this long
IDEM_WAIT_S = 10.0  # how long a concurrent duplicate waits for the first request's job record

# Compare-and-set and compare-and-delete of one key (atomic in Redis).
_CAS = ("if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3]) "
        "return 1 end return 0")
_CAD = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


class FairQueue(Queue):
    """An rq queue whose new jobs are inserted in fair order across owners, not appended.

    rq pushes a job id on the queue's list in :meth:`push_job_id` (inside its enqueue pipeline);
    here that push is :meth:`JobStore.fair_push`, a Lua script that interleaves owners
    round-robin. Workers are plain rq workers: they pop the list's head as always.
    """

    fair_store: JobStore | None = None

    def push_job_id(self, job_id: str, pipeline: Any = None, at_front: bool = False) -> None:
        if at_front or self.fair_store is None:
            super().push_job_id(job_id, pipeline=pipeline, at_front=at_front)
            return
        self.fair_store.fair_push(self.key, self.name, job_id, client=pipeline)


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


class JobClient:
    """One per app; the Redis connection pool is created on first use, so start-up never blocks."""

    def __init__(self, settings: Settings, config: JobConfig | None = None) -> None:
        if not settings.redis_url:
            raise ValueError("JobClient needs settings.redis_url")
        self.settings = settings
        self.config = config or JobConfig.from_environment()
        self._redis: Redis | None = None
        self._aredis: dict[int, aioredis.Redis] = {}  # SSE reads: one asyncio client per event loop
        self._lock = threading.Lock()
        self._orphans: dict[str, float] = {}  # queued job id -> when it was first seen on no rq list

    # --- plumbing -------------------------------------------------------------------------
    @property
    def redis(self) -> Redis:
        if self._redis is None:
            with self._lock:
                if self._redis is None:
                    self._redis = Redis.from_url(self.settings.redis_url or "", socket_connect_timeout=1,
                                                 socket_timeout=10, health_check_interval=15)
        return self._redis

    @property
    def store(self) -> JobStore:
        return JobStore(self.redis, self.config.prefix)

    def queue(self, kind: str) -> Queue:
        """The rq queue of a kind of work (``short`` or ``long``), fair across owners."""
        q = FairQueue(self.config.queue_name(kind), connection=self.redis, serializer=SERIALIZER)
        q.fair_store = self.store
        return q

    def queue_of(self, rec: dict[str, Any]) -> Queue:
        """The rq queue a job was put on (its record names it)."""
        q = FairQueue(rec.get("queue") or self.config.queue_name("short"), connection=self.redis,
                      serializer=SERIALIZER)
        q.fair_store = self.store
        return q

    @contextmanager
    def guard(self) -> Iterator[None]:
        """Redis down or slow -> 503, never a 500."""
        try:
            yield
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            log.warning("Redis unavailable: %s", exc)
            raise jobs_unavailable() from exc

    def close(self) -> None:
        if self._redis is not None:
            self._redis.close()

    async def aclose(self) -> None:
        """Close the SSE client of the running loop, then the sync pool."""
        client = self._aredis.pop(id(asyncio.get_running_loop()), None)
        if client is not None:
            await client.aclose()
        self.close()

    def health(self) -> dict[str, Any]:
        """For /readyz: Redis reachable, and how many live workers listen on each queue."""
        try:
            self.redis.ping()
            per_queue = {}
            for kind in QUEUES:
                keys = list(worker_registration.get_keys(self.queue(kind), connection=self.redis))
                with self.redis.pipeline(transaction=False) as p:
                    for k in keys:
                        p.exists(k)
                    per_queue[kind] = sum(int(x) for x in p.execute()) if keys else 0
            return {"redis": True, "workers": min(per_queue.values()), "queues": per_queue}
        except redis.exceptions.RedisError as exc:
            log.warning("readiness: Redis unavailable: %s", exc)
            return {"redis": False, "workers": 0, "queues": {kind: 0 for kind in QUEUES}}

    # --- submit ---------------------------------------------------------------------------
    def submit(self, principal: Principal, spec: dict[str, Any], inputs: list[bytes], cost: float,
               idempotency_key: str | None = None) -> tuple[dict[str, Any], bool]:
        """Create and enqueue a job; returns (record, created). Same key + same body -> same job."""
        with self.guard():
            return self._submit(principal, spec, inputs, cost, idempotency_key)

    def _submit(self, principal: Principal, spec: dict[str, Any], inputs: list[bytes], cost: float,
                idempotency_key: str | None) -> tuple[dict[str, Any], bool]:
        s, cfg, store, r = self.settings, self.config, self.store, self.redis
        owner = principal.owner
        job_id = uuid.uuid4().hex
        timeout = cfg.job_timeout(cost)
        ttl_active = s.artifact_ttl_s + timeout + 3600  # the record outlives queueing and running
        entry = JOB_TYPES[spec["type"]]
        queue = self.queue(entry.queue)
        idem_key = claim = None
        if idempotency_key:
            body = hashlib.sha256(json.dumps(spec, sort_keys=True).encode())
            for blob in inputs:
                body.update(hashlib.sha256(blob).digest())
            digest = body.hexdigest()[:32]
            idem_key = store.idem_key(owner, hashlib.sha256(idempotency_key.encode()).hexdigest()[:32])
            claim = f"{job_id}:{digest}:{IDEM_PENDING}"
            earlier = self._claim_idempotency(idem_key, claim, digest)
            if earlier is not None:
                return earlier, False
        try:
            self._admit(owner, job_id, queue.name)
        except DomainError:
            if idem_key:
                self._release_idempotency(idem_key, claim)
            raise
        now = time.time()
        record = {
            "id": job_id, "type": spec["type"], "model": spec.get("model") or "", "owner": owner,
            "queue": queue.name, "status": QUEUED, "created_at": now, "step": 0, "total": 0, "stage": "queued",
            "cost": round(cost, 3), "spec": spec, "timeout_s": timeout,
            "result_ttl_s": s.result_ttl_s, "artifact_ttl_s": s.artifact_ttl_s,
            "max_artifact_bytes": s.max_body_bytes, "previews": [],
        }
        try:
            store.create(record, inputs, ttl_active)
            queue.enqueue_call(entry.runner, args=(job_id, cfg.prefix), timeout=timeout,
                                    result_ttl=s.result_ttl_s, failure_ttl=s.result_ttl_s, job_id=job_id,
                                    description=f"{spec['type']} {job_id}")
        except Exception:
            store.release(job_id, record)
            store.delete(job_id)
            if idem_key:
                self._release_idempotency(idem_key, claim)
            raise
        if idem_key:  # the record exists: the claim becomes the key's answer for result_ttl_s
            r.register_script(_CAS)(keys=[idem_key], args=[claim, f"{job_id}:{digest}", s.result_ttl_s])
        log.info("job %s (%s) queued, cost %.1f, timeout %ds", job_id, spec["type"], cost, timeout)
        rec = store.get(job_id) or record
        rec["queue_position"] = r.lpos(queue.key, job_id)
        return rec, True

    def _claim_idempotency(self, idem_key: str, claim: str, digest: str) -> dict[str, Any] | None:
        """Claim an Idempotency-Key for a new job, or return the job that already holds it.

        The key's value is ``job_id:digest`` plus ``:pending`` until that job's record is written.
        Claims are atomic (``SET NX``, and a compare-and-set to take over the key of an expired
        job), so concurrent submits with one key create one job: the losers wait for the winner's
        record (a claim lives at most IDEM_PENDING_TTL_S) and return it.
        """
        r, store = self.redis, self.store
        deadline = time.monotonic() + IDEM_WAIT_S
        while True:
            if r.set(idem_key, claim, nx=True, ex=IDEM_PENDING_TTL_S):
                return None
            raw = r.get(idem_key)
            if raw is None:
                continue  # released or expired between the two calls: claim again
            old_id, old_digest, state = (raw.decode().split(":") + ["", ""])[:3]
            if old_digest != digest:
                raise Invalid("idempotency-key-reused", "Idempotency-Key reused with another request",
                              "This key was already used for a different job request.")
            rec = store.get(old_id)
            if rec is not None:
                return rec
            if state != IDEM_PENDING:  # its job expired: start anew, unless another submit just did
                if r.register_script(_CAS)(keys=[idem_key], args=[raw, claim, IDEM_PENDING_TTL_S]):
                    return None
                continue
            if time.monotonic() > deadline:
                raise Conflict("idempotency-key-in-use", "A request with this Idempotency-Key is being processed",
                               "Retry shortly to get its job.", retry_after=1)
            time.sleep(0.05)

    def _release_idempotency(self, idem_key: str, claim: str | None) -> None:
        """Drop our claim (the job was not created), never another request's."""
        if claim is not None:
            self.redis.register_script(_CAD)(keys=[idem_key], args=[claim])

    def _admit(self, owner: str, job_id: str, queue: str) -> None:
        """Per-key concurrency (429) and the queue bound (503), race-safe by add-then-count."""
        s, store, r = self.settings, self.store, self.redis
        active_key = store.owner_active_key(owner)
        r.sadd(active_key, job_id)
        r.expire(active_key, s.artifact_ttl_s)
        if r.scard(active_key) > s.max_jobs_per_key:
            self._prune(active_key, ACTIVE, is_set=True, keep=job_id)
            if r.scard(active_key) > s.max_jobs_per_key:
                r.srem(active_key, job_id)
                raise TooMany("too-many-jobs", "Too many jobs in flight for this key",
                                   f"At most {s.max_jobs_per_key} queued or running jobs per API key.",
                                   retry_after=5, limit=s.max_jobs_per_key)
        adm = store.admitted_key(queue)
        r.zadd(adm, {job_id: time.time()})
        if r.zcard(adm) > s.max_queued_jobs:
            self._prune(adm, (QUEUED,), is_set=False, keep=job_id)
            if r.zcard(adm) > s.max_queued_jobs:
                r.zrem(adm, job_id)
                r.srem(active_key, job_id)
                raise Unavailable("queue-full", "The job queue is full",
                                   f"At most {s.max_queued_jobs} jobs may wait; try again later.",
                                   retry_after=10, limit=s.max_queued_jobs)

    def _prune(self, key: str, states: tuple[str, ...], *, is_set: bool, keep: str) -> None:
        """Drop ids whose job no longer is in ``states`` (finished, expired, or lost)."""
        r, store = self.redis, self.store
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

    # --- read -----------------------------------------------------------------------------
    def get(self, principal: Principal, job_id: str) -> dict[str, Any]:
        """The caller's job, settled if its worker died; a foreign or unknown id is 404."""
        with self.guard():
            rec = self.store.get(job_id) if len(job_id) <= 64 else None
            if rec is None or rec.get("owner") != principal.owner:
                raise NotFound("job-not-found", f"No job {job_id!r}")
            return self._settle(rec)

    def find(self, principal: Principal, job_id: str) -> dict[str, Any] | None:
        """The caller's job, or None (unknown, foreign or expired)."""
        try:
            return self.get(principal, job_id)
        except NotFound:
            return None

    def _settle(self, rec: dict[str, Any]) -> dict[str, Any]:
        store = self.store
        if rec["status"] == RUNNING and not store.alive(rec["id"]) \
                and time.time() - float(rec.get("started_at") or 0) > ABANDON_GRACE_S:
            # Both are compare-and-sets on this attempt: a replica that lost the race changes nothing.
            if self._retry_allowed(rec):
                self._retry(rec)
            elif store.finish(
                    rec["id"], FAILED, self.settings.result_ttl_s, self.settings.artifact_ttl_s,
                    allowed=(RUNNING,), expect={"started_at": rec.get("started_at")},
                    unless_key=store.hb_key(rec["id"]), error_type="abandoned",
                    error_detail="the worker running this job stopped sending heartbeats (it died or lost "
                                 f"Redis); the job was abandoned after {int(rec.get('attempts') or 1)} attempt(s)"):
                log.warning("job %s abandoned by its worker (pid %s)", rec["id"], rec.get("worker_pid"))
            rec = store.get(rec["id"]) or rec
        if rec["status"] == QUEUED:
            rec["queue_position"] = self.redis.lpos(self.queue_of(rec).key, rec["id"])
        return rec

    @staticmethod
    def _retry_allowed(rec: dict[str, Any]) -> bool:
        """Whether a dead worker's job may run again: its type's ``retries`` not spent, no cancel asked."""
        entry = JOB_TYPES.get(rec.get("type", ""))
        return entry is not None and int(rec.get("attempts") or 1) <= entry.retries \
            and not rec.get("cancel_requested")

    def _retry(self, rec: dict[str, Any]) -> bool:
        """Queue a dead worker's job again under its type's retry policy; True if this call did.

        The record goes running -> queued only if it is still the attempt that died (a CAS on
        ``started_at`` with the heartbeat key absent), then the same id is pushed at the front of its
        queue (it waited its turn once). rq's record of the dead execution is dropped first, so
        rq's own registry cleanup cannot later fail the new attempt.
        """
        entry = JOB_TYPES[rec["type"]]
        attempts = int(rec.get("attempts") or 1)
        s, store = self.settings, self.store
        fields: dict[str, Any] = {"message": f"retry {attempts} of {entry.retries}: the worker running attempt "
                                             f"{attempts} died"}
        spec = dict(rec.get("spec") or {})
        if entry.resumes and int(rec.get("checkpoint_step") or 0) > 0:
            spec["params"] = {**(spec.get("params") or {}), "resume": True}  # from this job's checkpoint
            fields["spec"] = spec
            fields["message"] += f"; resuming from step {rec['checkpoint_step']}"
        if not store.requeue(rec["id"], rec, s.result_ttl_s, **fields):
            return False
        self._push_again(rec, f"retry {attempts}")
        log.warning("job %s: its worker (pid %s) died; retry %d of %d queued", rec["id"], rec.get("worker_pid"),
                    attempts, entry.retries)
        return True

    def _push_again(self, rec: dict[str, Any], why: str) -> None:
        """Push a queued job's id at the front of its rq queue again (it waited its turn once).

        rq's record of an earlier execution is dropped first, so rq's own registry cleanup cannot
        later fail the new one. A second copy of an id in the list is harmless: a worker starts a job
        only by its queued -> running compare-and-set, so the copy that loses is skipped.
        """
        queue = self.queue_of(rec)
        s = self.settings
        try:
            wip = queue.started_job_registry.key
            stale = [m for m in self.redis.zrange(wip, 0, -1) if m.decode().split(":")[0] == rec["id"]]
            if stale:
                self.redis.zrem(wip, *stale)
            queue.enqueue_call(JOB_TYPES[rec["type"]].runner, args=(rec["id"], self.config.prefix),
                               timeout=int(rec.get("timeout_s") or self.config.min_timeout_s),
                               result_ttl=s.result_ttl_s, failure_ttl=s.result_ttl_s, job_id=rec["id"],
                               description=f"{rec['type']} {rec['id']} ({why})", at_front=True)
        except redis.exceptions.RedisError:
            log.exception("job %s: queued but could not be pushed on %s", rec["id"], queue.name)
            raise

    def rescue_orphans(self) -> int:
        """Push again every queued job that no rq list holds any more; how many.

        A worker takes a job off the list (``LPOP``) before it starts it; if it dies in between
        (kill -9, or Redis stops just then and the worker's loop restarts), the record says queued
        and nothing will ever run it. The same happens when an API is stopped between requeueing a
        dead worker's job and pushing it. A job is pushed once it has been seen missing for
        ``orphan_grace_s`` (a worker between its pop and its start is never that slow), by one API
        replica (a ``SET NX`` claim per job).
        """
        store, r, grace = self.store, self.redis, self.config.orphan_grace_s
        now = time.monotonic()
        seen: set[str] = set()
        rescued = 0
        for kind in QUEUES:
            queue = self.queue(kind)
            admitted = [m.decode() for m in r.zrange(store.admitted_key(queue.name), 0, -1)]
            if not admitted:
                continue
            listed = {m.decode() for m in r.lrange(queue.key, 0, -1)}
            for job_id in admitted:
                if job_id in listed:
                    continue
                rec = store.get(job_id)
                if rec is None or rec["status"] != QUEUED:
                    continue  # settled, or just started: the worker's claim removes it from the set
                seen.add(job_id)
                first = self._orphans.setdefault(job_id, now)
                if now - first < grace or not r.set(f"{store.prefix}:rescue:{job_id}", 1, nx=True,
                                                    ex=max(1, int(grace * 3))):
                    continue
                self._push_again(rec, "pushed again")
                store.add_event(job_id, "status", {"status": QUEUED, "message": "pushed on the queue again"},
                                int(rec.get("result_ttl_s") or self.settings.result_ttl_s))
                log.warning("job %s was queued but on no rq list (its worker stopped between taking and "
                            "starting it); pushed on %s again", job_id, queue.name)
                rescued += 1
        self._orphans = {k: v for k, v in self._orphans.items() if k in seen}
        return rescued

    def reap(self) -> int:
        """Settle every running job whose worker died (retry or abandon), read or not, and push
        orphaned queued jobs again (:meth:`rescue_orphans`); how many.

        Called every REAP_INTERVAL_S by each API process (cheap: one ZRANGE and a HGET and EXISTS
        per running job), so a dead worker's job is retried even if no client is polling it.
        """
        with self.guard():
            store = self.store
            settled = 0
            for raw in self.redis.zrange(store.running_key(), 0, 999):
                job_id = raw.decode()
                rec = store.get(job_id)
                if rec is None or rec["status"] != RUNNING:
                    self.redis.zrem(store.running_key(), job_id)  # expired, or finished by an older worker
                    continue
                if self._settle(rec)["status"] != RUNNING:
                    settled += 1
            return settled + self.rescue_orphans()

    async def reaper(self) -> None:
        """The background loop of :meth:`reap`; Redis outages are waited out, never raised."""
        while True:
            await asyncio.sleep(REAP_INTERVAL_S)
            try:
                await run_in_threadpool(self.reap)
            except (DomainError, redis.exceptions.RedisError):
                pass
            except Exception:  # noqa: BLE001 - the loop must outlive any one bad record
                log.exception("job reaper failed; retrying")

    async def wait(self, principal: Principal, job_id: str, wait_s: float) -> dict[str, Any]:
        """Long-poll: return when the job is finished or after ``wait_s`` (at most 30 s).

        Two short reads in the thread pool (the first and the last); in between it awaits the
        job's event stream on the event loop, so any number of long-polls leave the pool (and
        ``/healthz``, inline routes) free, and a finished job answers as soon as its done event.
        """
        deadline = time.monotonic() + min(max(wait_s, 0.0), MAX_WAIT_S)
        rec = await run_in_threadpool(self.get, principal, job_id)  # ownership, settling, the shape
        if rec["status"] in TERMINAL or time.monotonic() >= deadline:
            return rec
        # Between the first and the last read no thread is held: a blocking XREAD on the job's
        # event stream (woken by every status, progress and done event) and an HGET of its status
        # are awaited on the event loop, at most WAIT_BLOCK_S apart.
        aredis, events, key = self._async_redis(), self.store.events_key(job_id), self.store.job_key(job_id)
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
        return await run_in_threadpool(self.get, principal, job_id)

    def list(self, principal: Principal, status: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        with self.guard():
            store = self.store
            key = store.owner_jobs_key(principal.owner)
            ids = [i.decode() for i in self.redis.zrevrange(key, 0, 999)]
            out: list[dict[str, Any]] = []
            gone = []
            for job_id in ids:
                rec = store.get(job_id)
                if rec is None:
                    gone.append(job_id)
                    continue
                rec = self._settle(rec)
                if status is None or rec["status"] == status:
                    out.append(rec)
                if len(out) >= limit:
                    break
            if gone:
                self.redis.zrem(key, *gone)
            return out

    def artifact_links(self, rec: dict[str, Any]) -> list[tuple[str, str]]:
        with self.guard():
            names = self.store.artifact_names(rec["id"])
        return sorted(names.items())

    # --- cancel ---------------------------------------------------------------------------
    def cancel(self, principal: Principal, job_id: str) -> dict[str, Any]:
        """Queued: canceled now. Running: flag set, the loop stops within a step. Finished:
        artifacts deleted. Returns the record after the change."""
        rec = self.get(principal, job_id)
        s, store = self.settings, self.store
        with self.guard():
            if rec["status"] == QUEUED and store.finish(job_id, CANCELED, s.result_ttl_s, s.artifact_ttl_s,
                                                        allowed=(QUEUED,), message="canceled while queued"):
                try:
                    self.redis.lrem(self.queue_of(rec).key, 0, job_id)
                    self.redis.delete(Job.key_for(job_id))
                except redis.exceptions.RedisError:
                    log.warning("could not remove rq job %s; the worker will skip it", job_id)
            elif rec["status"] in (QUEUED, RUNNING):
                store.request_cancel(job_id, s.result_ttl_s)
            store.delete_artifacts(job_id)
            return store.get(job_id) or rec

    # --- artifacts ------------------------------------------------------------------------
    def artifact(self, principal: Principal, job_id: str, name: str) -> tuple[bytes, str]:
        rec = self.get(principal, job_id)
        with self.guard():
            found = self.store.get_artifact(job_id, name)
        if found is not None:
            return found
        if name in (rec.get("artifact_names") or []) or (rec.get("result") == name and rec["status"] == SUCCEEDED):
            raise Gone("artifact-expired", f"Artifact {name!r} of job {job_id} has expired or was "
                               "deleted")
        raise NotFound("artifact-not-found", f"Job {job_id} has no artifact {name!r}")

    def result(self, principal: Principal, job_id: str) -> tuple[bytes, str]:
        rec = self.get(principal, job_id)
        if rec["status"] != SUCCEEDED or not rec.get("result"):
            raise Conflict("job-not-succeeded", f"Job {job_id} is {rec['status']}; it has no result",
                               status_of_job=rec["status"], retry_after=2
                               if rec["status"] in ACTIVE else None)
        return self.artifact(principal, job_id, rec["result"])

    # --- events ---------------------------------------------------------------------------
    async def events(self, principal: Principal, job_id: str, last_event_id: str | None) -> AsyncIterator[str]:
        """Server-sent events from the job's stream, resuming after ``last_event_id``.

        The tenant check runs before the response starts (404). The stream is then read with
        redis.asyncio (a blocking XREAD awaited on the event loop), so an open stream holds a
        Redis connection but no thread-pool thread.
        """
        await run_in_threadpool(self.get, principal, job_id)  # 404 before the stream starts
        after = last_event_id if last_event_id and _valid_stream_id(last_event_id) else "0-0"
        return self._event_lines(principal, job_id, after)

    def _async_redis(self) -> aioredis.Redis:
        """A redis.asyncio client of the running event loop (one pool per loop, made on first use)."""
        loop = asyncio.get_running_loop()
        client = self._aredis.get(id(loop))
        if client is None:
            client = aioredis.Redis.from_url(self.settings.redis_url or "", socket_connect_timeout=1,
                                             socket_timeout=10, health_check_interval=15,
                                             retry=Retry(NoBackoff(), 1),
                                             retry_on_error=[redis.exceptions.ConnectionError])
            self._aredis[id(loop)] = client
        return client

    async def _read_events(self, job_id: str, after: str, block_ms: int | None) -> list[tuple[str, str, str]]:
        res = await self._async_redis().xread({self.store.events_key(job_id): after}, count=200, block=block_ms)
        return [(eid.decode(), f[b"event"].decode(), f[b"data"].decode()) for _k, entries in res or []
                for eid, f in entries]

    async def _event_lines(self, principal: Principal, job_id: str, after: str) -> AsyncIterator[str]:
        started = time.monotonic()
        last_sent = started
        yield "retry: 2000\n\n"
        while time.monotonic() - started < SSE_MAX_S:
            try:
                entries = await self._read_events(job_id, after, SSE_BLOCK_MS)
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
                    rec = await run_in_threadpool(self.get, principal, job_id)
                    if rec["status"] in TERMINAL and not await self._read_events(job_id, after, None):
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


def status_model(rec: dict[str, Any], artifacts: list[tuple[str, str]] | None = None) -> JobStatus:
    """The public shape of a job record."""
    base = f"/v1/jobs/{rec['id']}"
    step, total = int(rec.get("step") or 0), int(rec.get("total") or 0)
    error = JobError(type=rec["error_type"], detail=rec.get("error_detail", "")) if rec.get("error_type") else None
    previews = [ArtifactLink(name=n, href=f"{base}/artifacts/{n}", media_type="image/png")
                for n in rec.get("previews") or [] if rec["status"] != CANCELED]
    arts = [ArtifactLink(name=n, href=f"{base}/artifacts/{n}", media_type=mt) for n, mt in artifacts or []]
    worker = None
    if rec.get("worker_pid"):
        worker = WorkerInfo(pid=rec.get("worker_pid"), host=rec.get("worker_host"), model_loads=rec.get("model_loads"))
    return JobStatus(
        id=rec["id"], type=rec.get("type", ""), model=rec.get("model") or None, status=rec["status"],
        progress=JobProgress(step=step, total=total, fraction=round(step / total, 4) if total else 0.0,
                             stage=rec.get("stage", ""), message=rec.get("message"), objective=rec.get("objective"),
                             checkpoint_step=rec.get("checkpoint_step")),
        queue_position=rec.get("queue_position"), created_at=_iso(rec.get("created_at")) or "",
        started_at=_iso(rec.get("started_at")), ended_at=_iso(rec.get("ended_at")),
        cancel_requested=bool(rec.get("cancel_requested")), error=error, previews=previews, artifacts=arts,
        links=JobLinks(self=base, events=f"{base}/events",
                       result=f"{base}/result" if rec["status"] == SUCCEEDED else None),
        worker=worker)
