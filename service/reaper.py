"""Jobs whose worker died: settled (retried or abandoned), and queued jobs no rq list holds, pushed again.

- A running job whose heartbeat key has expired is settled by whoever sees it first (a read of
  the job, or the background loop :meth:`Reaper.run`): queued again on its queue (same id, inputs
  kept, ``attempts`` counted by the worker) while its job type's ``retries`` allow, a training job
  from its last checkpoint; else failed/``abandoned``. Either way atomically (a compare-and-set on
  the attempt), so a dead worker's job never shows "running" forever and two replicas never retry
  it twice.
- A queued job that is on no rq list (its worker took it and stopped before starting it) is
  pushed again after ``orphan_grace_s`` (:meth:`Reaper.rescue_orphans`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import redis
from starlette.concurrency import run_in_threadpool

from core.errors import DomainError
from core.jobtypes import JOB_TYPES
from core.store.config import QUEUES
from core.store.job_records import FAILED, QUEUED, RUNNING
from service.job_queue import enqueue_runner
from service.job_redis import JobRedis

log = logging.getLogger(__name__)

ABANDON_GRACE_S = 1.0
REAP_INTERVAL_S = 2.0  # each API process settles dead workers' jobs this often


class Reaper:
    """One per API process (its job client's); remembers when each orphaned queued job was first seen."""

    def __init__(self, jobs: JobRedis) -> None:
        self.jobs = jobs
        self._orphans: dict[str, float] = {}  # queued job id -> when it was first seen on no rq list

    def settle(self, rec: dict[str, Any]) -> dict[str, Any]:
        """The record as it stands once a dead worker's job is retried or abandoned (and its queue
        position, when queued)."""
        jobs = self.jobs
        store, s = jobs.store, jobs.settings
        if rec["status"] == RUNNING and not store.alive(rec["id"]) \
                and time.time() - float(rec.get("started_at") or 0) > ABANDON_GRACE_S:
            # Both are compare-and-sets on this attempt: a replica that lost the race changes nothing.
            if self._retry_allowed(rec):
                self._retry(rec)
            elif store.finish(
                    rec["id"], FAILED, s.result_ttl_s, s.artifact_ttl_s,
                    allowed=(RUNNING,), expect={"started_at": rec.get("started_at")},
                    unless_key=store.hb_key(rec["id"]), error_type="abandoned",
                    error_detail="the worker running this job stopped sending heartbeats (it died or lost "
                                 f"Redis); the job was abandoned after {int(rec.get('attempts') or 1)} attempt(s)"):
                log.warning("job %s abandoned by its worker (pid %s)", rec["id"], rec.get("worker_pid"))
            rec = store.get(rec["id"]) or rec
        if rec["status"] == QUEUED:
            rec["queue_position"] = jobs.redis.lpos(jobs.queue_of(rec).key, rec["id"])
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
        fields: dict[str, Any] = {"message": f"retry {attempts} of {entry.retries}: the worker running attempt "
                                             f"{attempts} died"}
        spec = dict(rec.get("spec") or {})
        if entry.resumes and int(rec.get("checkpoint_step") or 0) > 0:
            spec["params"] = {**(spec.get("params") or {}), "resume": True}  # from this job's checkpoint
            fields["spec"] = spec
            fields["message"] += f"; resuming from step {rec['checkpoint_step']}"
        if not self.jobs.store.requeue(rec["id"], rec, self.jobs.settings.result_ttl_s, **fields):
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
        jobs = self.jobs
        queue = jobs.queue_of(rec)
        try:
            wip = queue.started_job_registry.key
            stale = [m for m in jobs.redis.zrange(wip, 0, -1) if m.decode().split(":")[0] == rec["id"]]
            if stale:
                jobs.redis.zrem(wip, *stale)
            enqueue_runner(queue, JOB_TYPES[rec["type"]].runner, rec["id"], jobs.config.prefix,
                           timeout=int(rec.get("timeout_s") or jobs.config.min_timeout_s),
                           ttl_s=jobs.settings.result_ttl_s, description=f"{rec['type']} {rec['id']} ({why})",
                           at_front=True)
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
        jobs = self.jobs
        store, r, grace = jobs.store, jobs.redis, jobs.config.orphan_grace_s
        now = time.monotonic()
        seen: set[str] = set()
        rescued = 0
        for kind in QUEUES:
            queue = jobs.queue(kind)
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
                                int(rec.get("result_ttl_s") or jobs.settings.result_ttl_s))
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
        jobs = self.jobs
        with jobs.guard():
            store = jobs.store
            settled = 0
            for raw in jobs.redis.zrange(store.running_key(), 0, 999):
                job_id = raw.decode()
                rec = store.get(job_id)
                if rec is None or rec["status"] != RUNNING:
                    jobs.redis.zrem(store.running_key(), job_id)  # expired, or finished by an older worker
                    continue
                if self.settle(rec)["status"] != RUNNING:
                    settled += 1
            return settled + self.rescue_orphans()

    async def run(self) -> None:
        """The background loop of :meth:`reap`; Redis outages are waited out, never raised."""
        while True:
            await asyncio.sleep(REAP_INTERVAL_S)
            try:
                await run_in_threadpool(self.reap)
            except (DomainError, redis.exceptions.RedisError):
                pass
            except Exception:  # noqa: BLE001 - the loop must outlive any one bad record
                log.exception("job reaper failed; retrying")
