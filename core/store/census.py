"""What one key prefix of Redis holds from earlier runs: jobs, collections and trained networks.

The stores are durable (an embedded Redis keeps an append-only file in its data directory), so a
restarted ``cnnviz serve`` lists every earlier job. That is by design, but surprising unless said:
the API counts what it finds when it starts and logs it (``service/app.py``). Counted the way the
listings show them: the jobs of the owners' job listings whose record still exists (an inline
answer's stored pictures are kept as a job record too, but listed nowhere), the collections, and the
trained networks by name (finished or only checkpointed: ``status: partial``).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from redis import Redis, RedisError

log = logging.getLogger(__name__)

SCAN_COUNT = 1000  # keys per SCAN round trip
_TRAINED_SUFFIXES = (":weights", ":ckpt")  # beside the record hash; ":lock" marks a run, not a network


@dataclass(frozen=True)
class StoredCounts:
    """How many of each durable thing one key prefix holds."""

    jobs: int
    collections: int
    trained: int


def _glob_escape(text: str) -> str:
    """``text`` matched literally by a Redis glob pattern (a prefix may hold ``*``, ``?`` or brackets)."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


def count_stored(redis: Redis, prefix: str) -> StoredCounts:
    """Count the jobs, collections and trained networks under ``prefix``: one SCAN of its keys.

    Costs a walk of the keyspace, so callers run it off the event loop, once.
    """
    job_lists: list[str] = []
    collections = 0
    trained: set[str] = set()
    head = f"{prefix}:"
    for raw in redis.scan_iter(match=_glob_escape(head) + "*", count=SCAN_COUNT):
        key = raw.decode() if isinstance(raw, bytes) else str(raw)
        kind, _, rest = key[len(head):].partition(":")
        if kind == "owner" and rest.endswith(":jobs") and rest.count(":") == 1:
            job_lists.append(key)
        elif kind == "col" and rest and ":" not in rest:
            collections += 1
        elif kind == "trained" and rest.count(":") >= 2:  # {kind}:{owner}:{name}[:suffix]
            base = next((key[: -len(s)] for s in _TRAINED_SUFFIXES if key.endswith(s)), key)
            if base.count(":") - prefix.count(":") == 4:
                trained.add(base)
    jobs = 0
    for list_key in job_lists:
        ids = [i.decode() if isinstance(i, bytes) else str(i) for i in redis.zrange(list_key, 0, -1)]
        if ids:
            with redis.pipeline(transaction=False) as p:
                for job_id in ids:
                    p.exists(f"{prefix}:job:{job_id}")
                jobs += sum(int(n) for n in p.execute())
    return StoredCounts(jobs=jobs, collections=collections, trained=len(trained))


def log_restored(redis: Redis, prefix: str) -> StoredCounts | None:
    """Log at INFO what ``prefix`` holds from earlier runs; None (and a warning) when Redis cannot say."""
    try:
        counts = count_stored(redis, prefix)
    except RedisError as exc:
        log.warning("could not count the stored jobs, collections and trained networks: %s", exc)
        return None
    log.info("restored from Redis (key prefix %r): %d job(s), %d collection(s), %d trained network(s)",
             prefix, counts.jobs, counts.collections, counts.trained)
    return counts
