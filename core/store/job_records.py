"""The job record, its events, artifacts, heartbeat and cancel flag, all in Redis.

rq moves a job through its queue; everything a client sees lives here, under one prefix:

=================================  ==========================================================
``{p}:job:{id}``                   hash: status, progress, timestamps, owner hash, error, spec
``{p}:job:{id}:events``            stream: status / progress / preview / done (SSE, resumable)
``{p}:job:{id}:arts``              hash: artifact name -> media type
``{p}:art:{id}:{name}``            blob: one artifact (PNG, JSON), with a TTL
``{p}:in:{id}:{i}``                blob: the i-th input image, deleted when the job ends
``{p}:job:{id}:hb``                heartbeat, SET with a TTL while a worker runs the job
``{p}:job:{id}:cancel``            cancel flag, checked by the optimization loop every step
``{p}:owner:{o}:jobs``             zset of an owner's job ids by creation time (listing)
``{p}:owner:{o}:active``           set of an owner's queued/running ids (per-key concurrency)
``{p}:idem:{o}:{h}``               idempotency key -> job id
``{p}:admitted:{queue}``           zset of queued ids (the queue bound, checked atomically)
``{p}:running``                    zset of running ids by start time (the API's reaper checks them)
``{p}:fair:{queue}``               zset of queued ids by (round, arrival): the fair order
``{p}:fair:{queue}:rounds``        hash: owner -> round of its last queued job
``{p}:fair:{queue}:v``             the round of the last job a worker started (and ``:seq``)
=================================  ==========================================================

Status changes go through :meth:`JobStore.transition`, a Lua compare-and-set, so a cancel, a
worker start and an abandonment check can race without a job ending twice.

Fair share inside a queue (:meth:`JobStore.fair_push`): a job is not appended to rq's list but
inserted by start-time fair queueing. Its owner's next round is ``max(v, owner's last round) + 1``
(``v``: the round of the job a worker started last), and it goes before the first queued job of a
later round, so the list interleaves owners round-robin: one key's hundred queued jobs hold back
another key's one by at most one job per owner.
"""

from __future__ import annotations

import json
import logging
import time
from enum import StrEnum
from typing import Any, TypedDict, get_type_hints

from redis import Redis

log = logging.getLogger(__name__)


class JobState(StrEnum):
    """A job's status. Stored as its string value, and equal to it, so records read back compare as is."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"


QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELED = (JobState.QUEUED, JobState.RUNNING, JobState.SUCCEEDED,
                                                JobState.FAILED, JobState.CANCELED)
ACTIVE = (QUEUED, RUNNING)
TERMINAL = (SUCCEEDED, FAILED, CANCELED)


class JobRecord(TypedDict, total=False):
    """The one declaration of a job record's fields, as :meth:`JobStore.get` returns them.

    The hash stores strings; the annotations below say how each field is read back (the codec
    lists are derived from them), so a new field is added here and nowhere else.
    """

    id: str
    type: str
    model: str
    owner: str
    queue: str
    status: str  # a JobState value
    created_at: float
    started_at: float
    ended_at: float
    step: int
    total: int
    stage: str
    message: str
    objective: float
    cost: float
    spec: dict[str, Any]
    timeout_s: int
    result_ttl_s: int
    artifact_ttl_s: int
    max_artifact_bytes: int
    previews: list[str]
    artifact_names: list[str]
    worker_pid: int
    worker_host: str
    model_loads: int
    n_inputs: int
    checkpoint_step: int
    attempts: int
    cancel_requested: bool
    error_type: str
    error_detail: str
    result: str
    queue_position: int | None  # computed when read, never stored


_HINTS = get_type_hints(JobRecord)
JSON_FIELDS = tuple(k for k, t in _HINTS.items() if getattr(t, "__origin__", None) in (dict, list))
FLOAT_FIELDS = tuple(k for k, t in _HINTS.items() if t is float)
INT_FIELDS = tuple(k for k, t in _HINTS.items() if t is int)
EVENTS_MAXLEN = 2000

# KEYS[1]=job hash, KEYS[2] (optional)=a key that must not exist; ARGV[1]=json list of allowed
# current states; ARGV[2]=json object of fields to set; ARGV[3]=json object of fields that must hold
# these values (a missing field reads as "").
_TRANSITION = """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return 0 end
if KEYS[2] and redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
for k, v in pairs(cjson.decode(ARGV[3] or '{}')) do
  if (redis.call('HGET', KEYS[1], k) or '') ~= v then return 0 end
end
for _, s in ipairs(cjson.decode(ARGV[1])) do
  if s == cur then
    local fields = cjson.decode(ARGV[2])
    for k, v in pairs(fields) do redis.call('HSET', KEYS[1], k, v) end
    return 1
  end
end
return 0
"""

FAIR_SCALE = 1_000_000  # a fair score is round * FAIR_SCALE + arrival (mod FAIR_SCALE)

# KEYS: 1 rq list, 2 fair zset, 3 rounds hash, 4 v, 5 seq, 6 job hash; ARGV[1]=job id, ARGV[2]=ttl.
_FAIR_PUSH = """
local owner = redis.call('HGET', KEYS[6], 'owner') or ''
local v = tonumber(redis.call('GET', KEYS[4]) or '0')
local r = math.max(v, tonumber(redis.call('HGET', KEYS[3], owner) or '0')) + 1
redis.call('HSET', KEYS[3], owner, r)
local seq = redis.call('INCR', KEYS[5]) % 1000000
local score = string.format('%.0f', r * 1000000 + seq)
redis.call('ZADD', KEYS[2], score, ARGV[1])
for _, k in ipairs({KEYS[2], KEYS[3], KEYS[5]}) do redis.call('EXPIRE', k, ARGV[2]) end
for _, pivot in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. score, '+inf', 'LIMIT', 0, 50)) do
  if redis.call('LINSERT', KEYS[1], 'BEFORE', pivot, ARGV[1]) > 0 then return r end
  redis.call('ZREM', KEYS[2], pivot)  -- started or canceled meanwhile
end
redis.call('RPUSH', KEYS[1], ARGV[1])
return r
"""

# KEYS: 1 fair zset, 2 v; ARGV[1]=job id, ARGV[2]=ttl. The job left the queue: v moves to its round.
_FAIR_STARTED = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
local r = math.floor(tonumber(score) / 1000000)
if r > tonumber(redis.call('GET', KEYS[2]) or '0') then redis.call('SET', KEYS[2], r, 'EX', ARGV[2]) end
return r
"""
FAIR_TTL_S = 7 * 24 * 3600


def _encode(value: Any) -> str:
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, separators=(",", ":"))
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


class JobStore:
    """Typed access to one prefix's job keys; used by the API and by workers alike."""

    def __init__(self, redis: Redis, prefix: str = "cnnviz") -> None:
        self.redis = redis
        self.prefix = prefix
        self._transition = redis.register_script(_TRANSITION)
        self._fair_push = redis.register_script(_FAIR_PUSH)
        self._fair_started = redis.register_script(_FAIR_STARTED)

    # --- keys -----------------------------------------------------------------------------
    def job_key(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def events_key(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}:events"

    def arts_key(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}:arts"

    def art_key(self, job_id: str, name: str) -> str:
        return f"{self.prefix}:art:{job_id}:{name}"

    def input_key(self, job_id: str, i: int) -> str:
        return f"{self.prefix}:in:{job_id}:{i}"

    def hb_key(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}:hb"

    def cancel_key(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}:cancel"

    def owner_jobs_key(self, owner: str) -> str:
        return f"{self.prefix}:owner:{owner}:jobs"

    def owner_active_key(self, owner: str) -> str:
        return f"{self.prefix}:owner:{owner}:active"

    def idem_key(self, owner: str, digest: str) -> str:
        return f"{self.prefix}:idem:{owner}:{digest}"

    def admitted_key(self, queue: str) -> str:
        return f"{self.prefix}:admitted:{queue}"

    def running_key(self) -> str:
        return f"{self.prefix}:running"

    def fair_key(self, queue: str) -> str:
        return f"{self.prefix}:fair:{queue}"

    # --- the record -----------------------------------------------------------------------
    def create(self, record: JobRecord, inputs: list[bytes], ttl_s: int) -> None:
        """Write a new job's record, inputs and first event in one round trip."""
        job_id = record["id"]
        fields = {k: _encode(v) for k, v in record.items() if v is not None}
        fields["n_inputs"] = str(len(inputs))
        with self.redis.pipeline(transaction=True) as p:
            p.hset(self.job_key(job_id), mapping=fields)
            p.expire(self.job_key(job_id), ttl_s)
            for i, blob in enumerate(inputs):
                p.set(self.input_key(job_id, i), blob, ex=ttl_s)
            p.zadd(self.owner_jobs_key(record["owner"]), {job_id: float(record["created_at"])})
            p.expire(self.owner_jobs_key(record["owner"]), ttl_s)
            p.execute()
        self.add_event(job_id, "status", {"status": record["status"]}, ttl_s)

    def get(self, job_id: str) -> JobRecord | None:
        raw = self.redis.hgetall(self.job_key(job_id))
        if not raw:
            return None
        rec: Any = {k.decode(): v.decode() for k, v in raw.items()}
        for k in JSON_FIELDS:
            if k in rec:
                rec[k] = json.loads(rec[k])
        for k in FLOAT_FIELDS:
            if k in rec and rec[k] != "":
                rec[k] = float(rec[k])
        for k in INT_FIELDS:
            if k in rec and rec[k] != "":
                rec[k] = int(float(rec[k]))
        rec["cancel_requested"] = rec.get("cancel_requested") == "1"
        return rec

    def update(self, job_id: str, **fields: Any) -> None:
        self.redis.hset(self.job_key(job_id), mapping={k: _encode(v) for k, v in fields.items() if v is not None})

    def transition(self, job_id: str, allowed: tuple[str, ...], *, expect: dict[str, Any] | None = None,
                   unless_key: str | None = None, **fields: Any) -> bool:
        """Set ``fields`` only if the job's status is one of ``allowed`` (and every ``expect`` field
        holds its value, and ``unless_key`` does not exist), atomically; True if it did."""
        payload = {k: _encode(v) for k, v in fields.items() if v is not None}
        expected = {k: "" if v is None else _encode(v) for k, v in (expect or {}).items()}
        keys = [self.job_key(job_id)] + ([unless_key] if unless_key else [])
        return bool(self._transition(keys=keys, args=[json.dumps(list(allowed)), json.dumps(payload),
                                                      json.dumps(expected)]))

    # --- fair order inside a queue ---------------------------------------------------------
    def fair_push(self, list_key: str, queue: str, job_id: str, client: Any = None) -> None:
        """Insert a queued job into rq's list ``list_key`` in fair order (see the module docstring);
        ``client`` may be a pipeline (rq's enqueue pipeline)."""
        fk = self.fair_key(queue)
        self._fair_push(keys=[list_key, fk, f"{fk}:rounds", f"{fk}:v", f"{fk}:seq", self.job_key(job_id)],
                        args=[job_id, FAIR_TTL_S], client=client)

    def fair_started(self, queue: str, job_id: str) -> None:
        """A worker took the job off the queue: forget it, and advance the queue's round to its own."""
        fk = self.fair_key(queue)
        self._fair_started(keys=[fk, f"{fk}:v"], args=[job_id, FAIR_TTL_S])

    def finish(self, job_id: str, status: str, ttl_s: int, artifact_ttl_s: int, allowed: tuple[str, ...] = ACTIVE,
               *, expect: dict[str, Any] | None = None, unless_key: str | None = None, **fields: Any) -> bool:
        """Move an active job to a terminal status, emit ``done``, and start its TTL clock.

        The artifact names are copied into the record, so a later request for an artifact whose
        blob has expired can be told 410 (it existed) rather than 404 (it never did).
        """
        names = sorted(self.artifact_names(job_id)) if status == SUCCEEDED else []
        ok = self.transition(job_id, allowed, expect=expect, unless_key=unless_key, status=status,
                             ended_at=time.time(), artifact_names=names, **fields)
        if not ok:
            return False
        rec = self.get(job_id) or {}
        self.release(job_id, rec)
        with self.redis.pipeline(transaction=False) as p:
            p.expire(self.job_key(job_id), ttl_s)
            p.zrem(self.running_key(), job_id)
            p.delete(self.hb_key(job_id), self.cancel_key(job_id))
            for i in range(int(rec.get("n_inputs") or 0)):
                p.delete(self.input_key(job_id, i))
            p.expire(self.arts_key(job_id), artifact_ttl_s)
            p.execute()
        done = {"status": status}
        if rec.get("error_type"):
            done["error"] = {"type": rec["error_type"], "detail": rec.get("error_detail", "")}
        if rec.get("result"):
            done["result"] = rec["result"]
        self.add_event(job_id, "done", done, ttl_s)
        return True

    def requeue(self, job_id: str, rec: JobRecord, ttl_s: int, **fields: Any) -> bool:
        """Put a running job whose worker died back to queued (inputs kept), atomically.

        Only if it is still the same attempt (``started_at``) and its heartbeat key is still gone,
        so two API replicas settling the same dead job requeue it once, and a job that a new worker
        already restarted is left alone. The caller then pushes the id on its rq queue.
        """
        ok = self.transition(job_id, (RUNNING,), expect={"started_at": rec.get("started_at")},
                             unless_key=self.hb_key(job_id), status=QUEUED, stage="queued", **fields)
        if ok:
            self.redis.zrem(self.running_key(), job_id)
            if rec.get("queue"):
                self.redis.zadd(self.admitted_key(rec["queue"]), {job_id: time.time()})
            self.add_event(job_id, "status", {"status": QUEUED, "retry": int(rec.get("attempts") or 1),
                                              "message": fields.get("message", "")}, ttl_s)
        return ok

    def release(self, job_id: str, rec: JobRecord) -> None:
        """Drop a job from the admission and per-owner concurrency sets."""
        with self.redis.pipeline(transaction=False) as p:
            if rec.get("queue"):
                p.zrem(self.admitted_key(rec["queue"]), job_id)
            if rec.get("owner"):
                p.srem(self.owner_active_key(rec["owner"]), job_id)
            p.execute()

    def delete(self, job_id: str) -> None:
        """Remove a job entirely: record, events, artifacts, inputs."""
        rec = self.get(job_id) or {}
        self.delete_artifacts(job_id)
        keys = [self.job_key(job_id), self.events_key(job_id), self.hb_key(job_id), self.cancel_key(job_id)]
        keys += [self.input_key(job_id, i) for i in range(int(rec.get("n_inputs") or 0))]
        self.redis.delete(*keys)
        if rec.get("owner"):
            self.redis.zrem(self.owner_jobs_key(rec["owner"]), job_id)

    # --- events ---------------------------------------------------------------------------
    def add_event(self, job_id: str, event: str, data: dict[str, Any], ttl_s: int | None = None) -> str:
        key = self.events_key(job_id)
        with self.redis.pipeline(transaction=False) as p:
            p.xadd(key, {"event": event, "data": json.dumps(data, separators=(",", ":"))},
                   maxlen=EVENTS_MAXLEN, approximate=True)
            if ttl_s:
                p.expire(key, ttl_s)
            eid = p.execute()[0]
        return eid.decode() if isinstance(eid, bytes) else str(eid)

    def read_events(self, job_id: str, after: str = "0-0", block_ms: int | None = None,
                    count: int = 200) -> list[tuple[str, str, str]]:
        """Events after stream id ``after`` as (id, event, json data); blocks up to ``block_ms``."""
        res = self.redis.xread({self.events_key(job_id): after}, count=count, block=block_ms)
        out = []
        for _key, entries in res or []:
            for eid, fields in entries:
                out.append((eid.decode(), fields[b"event"].decode(), fields[b"data"].decode()))
        return out

    # --- artifacts and inputs -------------------------------------------------------------
    def put_artifact(self, job_id: str, name: str, data: bytes, media_type: str, ttl_s: int) -> None:
        with self.redis.pipeline(transaction=False) as p:
            p.set(self.art_key(job_id, name), data, ex=ttl_s)
            p.hset(self.arts_key(job_id), name, media_type)
            p.expire(self.arts_key(job_id), ttl_s)
            p.execute()

    def put_answer_artifacts(self, answer_id: str, owner: str, job_type: str, model: str,
                             artifacts: list[tuple[str, bytes, str]], artifact_ttl_s: int, record_ttl_s: int) -> None:
        """Pictures of an inline answer (``output.inline: false``), stored as a finished job's artifacts.

        A minimal succeeded record under ``answer_id`` carries the owner and the artifact names, so
        ``GET /v1/jobs/{id}/artifacts/{name}`` applies the same ownership (404 to anyone else) and
        expiry (410 once a blob's TTL is over) as for job artifacts. The record is not added to the
        owner's job listing: it is not a job anyone submitted.
        """
        now = time.time()
        record = {"id": answer_id, "type": job_type, "model": model, "owner": owner, "status": SUCCEEDED,
                  "created_at": now, "started_at": now, "ended_at": now, "artifact_ttl_s": artifact_ttl_s,
                  "artifact_names": sorted(n for n, _, _ in artifacts), "spec": {"type": job_type, "inline": False}}
        with self.redis.pipeline(transaction=True) as p:
            p.hset(self.job_key(answer_id), mapping={k: _encode(v) for k, v in record.items()})
            p.expire(self.job_key(answer_id), max(record_ttl_s, artifact_ttl_s))
            for name, data, media_type in artifacts:
                p.set(self.art_key(answer_id, name), data, ex=artifact_ttl_s)
                p.hset(self.arts_key(answer_id), name, media_type)
            if artifacts:
                p.expire(self.arts_key(answer_id), artifact_ttl_s)
            p.execute()

    def get_artifact(self, job_id: str, name: str) -> tuple[bytes, str] | None:
        with self.redis.pipeline(transaction=False) as p:
            p.get(self.art_key(job_id, name))
            p.hget(self.arts_key(job_id), name)
            data, media = p.execute()
        if data is None:
            return None
        return data, (media.decode() if media else "application/octet-stream")

    def artifact_names(self, job_id: str) -> dict[str, str]:
        return {k.decode(): v.decode() for k, v in self.redis.hgetall(self.arts_key(job_id)).items()}

    def delete_artifact(self, job_id: str, name: str) -> None:
        with self.redis.pipeline(transaction=False) as p:
            p.delete(self.art_key(job_id, name))
            p.hdel(self.arts_key(job_id), name)
            p.execute()

    def delete_artifacts(self, job_id: str) -> None:
        names = self.artifact_names(job_id)
        keys = [self.art_key(job_id, n) for n in names] + [self.arts_key(job_id)]
        self.redis.delete(*keys)

    def get_inputs(self, job_id: str, n: int) -> list[bytes]:
        blobs = self.redis.mget([self.input_key(job_id, i) for i in range(n)]) if n else []
        if any(b is None for b in blobs):
            raise RuntimeError("the job's input images have expired")
        return list(blobs)

    # --- liveness and cancel --------------------------------------------------------------
    def beat(self, job_id: str, ttl_s: float) -> None:
        self.redis.set(self.hb_key(job_id), b"1", px=int(ttl_s * 1000))

    def alive(self, job_id: str) -> bool:
        return bool(self.redis.exists(self.hb_key(job_id)))

    def request_cancel(self, job_id: str, ttl_s: int) -> None:
        self.redis.set(self.cancel_key(job_id), b"1", ex=ttl_s)
        self.update(job_id, cancel_requested=True)

    def cancel_requested(self, job_id: str) -> bool:
        return bool(self.redis.exists(self.cancel_key(job_id)))
