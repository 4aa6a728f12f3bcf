"""``Idempotency-Key`` on job submission: the same key and the same request give the same job.

The key's Redis value is ``job_id:digest`` (``digest``: a hash of the request's spec and input
images), plus ``:pending`` until that job's record is written. A submit first *claims* the key
(:func:`claim`), creates its job, then *confirms* the claim (:func:`confirm`), or *releases* it if
no job was created (:func:`release`). Claims are atomic (``SET NX``, and a compare-and-set to take
over the key of an expired job), so concurrent submits with one key create one job: the losers
wait for the winner's record and return it.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from redis import Redis

from core.errors import Conflict, Invalid
from core.store.job_records import JobStore

PENDING = "pending"
PENDING_TTL_S = 30  # a claim whose request died frees the key after this long
WAIT_S = 10.0  # how long a concurrent duplicate waits for the first request's job record

# Compare-and-set and compare-and-delete of one key (atomic in Redis).
_CAS = ("if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3]) "
        "return 1 end return 0")
_CAD = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


def request_digest(spec: dict[str, Any], inputs: list[bytes]) -> str:
    """What makes two submits the same request: the spec and every input image."""
    body = hashlib.sha256(json.dumps(spec, sort_keys=True).encode())
    for blob in inputs:
        body.update(hashlib.sha256(blob).digest())
    return body.hexdigest()[:32]


def redis_key(store: JobStore, owner: str, idempotency_key: str) -> str:
    """The Redis key of a caller's Idempotency-Key (hashed: the header is the client's free text)."""
    return store.idem_key(owner, hashlib.sha256(idempotency_key.encode()).hexdigest()[:32])


def pending_claim(job_id: str, digest: str) -> str:
    """The value a submit claims the key with, before its job exists."""
    return f"{job_id}:{digest}:{PENDING}"


def claim(redis: Redis, store: JobStore, idem_key: str, claim_value: str, digest: str) -> dict[str, Any] | None:
    """Claim an Idempotency-Key for a new job (None), or return the job that already holds it.

    A key held by another request's digest is a 422; a claim that stays pending past WAIT_S (its
    request died before writing its job) is a 409 the client retries.
    """
    deadline = time.monotonic() + WAIT_S
    while True:
        if redis.set(idem_key, claim_value, nx=True, ex=PENDING_TTL_S):
            return None
        raw = redis.get(idem_key)
        if raw is None:
            continue  # released or expired between the two calls: claim again
        old_id, old_digest, state = (raw.decode().split(":") + ["", ""])[:3]
        if old_digest != digest:
            raise Invalid("idempotency-key-reused", "Idempotency-Key reused with another request",
                          "This key was already used for a different job request.")
        rec = store.get(old_id)
        if rec is not None:
            return rec
        if state != PENDING:  # its job expired: start anew, unless another submit just did
            if redis.register_script(_CAS)(keys=[idem_key], args=[raw, claim_value, PENDING_TTL_S]):
                return None
            continue
        if time.monotonic() > deadline:
            raise Conflict("idempotency-key-in-use", "A request with this Idempotency-Key is being processed",
                           "Retry shortly to get its job.", retry_after=1)
        time.sleep(0.05)


def confirm(redis: Redis, idem_key: str, claim_value: str, job_id: str, digest: str, ttl_s: int) -> None:
    """The job's record exists: the claim becomes the key's answer for ``ttl_s``."""
    redis.register_script(_CAS)(keys=[idem_key], args=[claim_value, f"{job_id}:{digest}", ttl_s])


def release(redis: Redis, idem_key: str, claim_value: str | None) -> None:
    """Drop our claim (the job was not created), never another request's."""
    if claim_value is not None:
        redis.register_script(_CAD)(keys=[idem_key], args=[claim_value])
