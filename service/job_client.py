"""The API's side of the job system: submit, read, list, cancel, and fetch artifacts.

Routes call :class:`JobClient`; it speaks to Redis through :class:`core.store.job_records.JobStore`
and to rq through the fair queues of :mod:`service.job_queue`, over the connections of
:class:`service.job_redis.JobRedis`. The other roles live beside it, each in its own module:

- :mod:`service.idempotency`: the same ``Idempotency-Key`` and request give the same job;
- :mod:`service.admission`: the per-key bound (429) and the queue bound (503);
- :mod:`service.reaper`: dead workers' jobs retried or abandoned, orphaned queued jobs pushed again;
- :mod:`service.job_events`: the long-poll and server-sent events, awaited without a thread.

Every Redis failure becomes a 503 ``jobs-unavailable`` (:meth:`JobRedis.guard`): inline routes do
not touch Redis and keep working while it is down.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

import redis
from rq.job import Job

from core.errors import Conflict, DomainError, Gone, NotFound
from core.jobtypes import JOB_TYPES
from core.settings import Settings
from core.store.config import JobConfig
from core.store.job_records import ACTIVE, CANCELED, QUEUED, RUNNING, SUCCEEDED
from service import admission, idempotency
from service.auth import Principal
from service.job_queue import enqueue_runner
from service.job_redis import JobRedis
from service.reaper import Reaper

log = logging.getLogger(__name__)


class JobClient(JobRedis):
    """One per app: the job operations routes call, over :class:`JobRedis`."""

    def __init__(self, settings: Settings, config: JobConfig | None = None) -> None:
        super().__init__(settings, config)
        self.reaper = Reaper(self)

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
        idem_key = claim = digest = None
        if idempotency_key:
            digest = idempotency.request_digest(spec, inputs)
            idem_key = idempotency.redis_key(store, owner, idempotency_key)
            claim = idempotency.pending_claim(job_id, digest)
            earlier = idempotency.claim(r, store, idem_key, claim, digest)
            if earlier is not None:
                return earlier, False
        try:
            admission.admit(r, store, s, owner, job_id, queue.name)
        except DomainError:
            if idem_key:
                idempotency.release(r, idem_key, claim)
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
            enqueue_runner(queue, entry.runner, job_id, cfg.prefix, timeout=timeout, ttl_s=s.result_ttl_s,
                           description=f"{spec['type']} {job_id}")
        except Exception:
            store.release(job_id, record)
            store.delete(job_id)
            if idem_key:
                idempotency.release(r, idem_key, claim)
            raise
        if idem_key and claim and digest:  # the record exists: the claim becomes the key's answer
            idempotency.confirm(r, idem_key, claim, job_id, digest, s.result_ttl_s)
        log.info("job %s (%s) queued, cost %.1f, timeout %ds", job_id, spec["type"], cost, timeout)
        rec = store.get(job_id) or record
        rec["queue_position"] = r.lpos(queue.key, job_id)
        return rec, True

    # --- read -----------------------------------------------------------------------------
    def get(self, principal: Principal, job_id: str) -> dict[str, Any]:
        """The caller's job, settled if its worker died; a foreign or unknown id is 404."""
        with self.guard():
            rec = self.store.get(job_id) if len(job_id) <= 64 else None
            if rec is None or rec.get("owner") != principal.owner:
                raise NotFound("job-not-found", f"No job {job_id!r}")
            return self.reaper.settle(rec)

    def find(self, principal: Principal, job_id: str) -> dict[str, Any] | None:
        """The caller's job, or None (unknown, foreign or expired)."""
        try:
            return self.get(principal, job_id)
        except NotFound:
            return None

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
                rec = self.reaper.settle(rec)
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
