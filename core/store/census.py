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

from core.store.collections import CollectionStore
from core.store.job_records import JobStore
from core.store.trained import KINDS, TrainedStore

log = logging.getLogger(__name__)

SCAN_COUNT = 1000  # keys per SCAN round trip
HOLE = "\x00"  # stands for a key's variable part when a store's own key function draws its shape
TRAINED_SUFFIXES = ("", ":weights", ":ckpt")  # the record hash and the blobs beside it; ":lock" marks a run


@dataclass(frozen=True)
class StoredCounts:
    """How many of each durable thing one key prefix holds."""

    jobs: int
    collections: int
    trained: int


def _shape(key: str, tail: str = "") -> re.Pattern[str]:
    """A pattern of the keys a store's key function draws, read from one key it drew with :data:`HOLE` parts.

    The stores own their key layout; the census asks them for it instead of writing it again.
    """
    return re.compile("([^:]+)".join(re.escape(part) for part in key.split(HOLE)) + tail)


def count_stored(redis: Redis, prefix: str) -> StoredCounts:
    """Count the jobs, collections and trained networks under ``prefix``: one SCAN of its keys.

    Costs a walk of the keyspace, so callers run it off the event loop, once.
    """
    jobs_store = JobStore(redis, prefix)
    job_list = _shape(jobs_store.owner_jobs_key(HOLE))
    collection = _shape(CollectionStore(redis, prefix).key(HOLE))
    trained_keys = TrainedStore(redis, prefix)
    suffix = "(?:" + "|".join(map(re.escape, TRAINED_SUFFIXES)) + ")"
    networks = [_shape(trained_keys.key(kind, HOLE, HOLE), suffix) for kind in KINDS]
    job_lists: list[str] = []
    collections = 0
    trained: set[tuple[str, ...]] = set()
    pattern = re.sub(r"([*?\[\]\\])", r"\\\1", prefix) + ":*"  # the prefix matched literally by Redis's glob
    for raw in redis.scan_iter(match=pattern, count=SCAN_COUNT):
        key = raw.decode() if isinstance(raw, bytes) else str(raw)
        if job_list.fullmatch(key):
            job_lists.append(key)
        elif collection.fullmatch(key):
            collections += 1
        else:
            for kind, shape in zip(KINDS, networks, strict=True):
                if m := shape.fullmatch(key):
                    trained.add((kind, *m.groups()))
    jobs = 0
    for list_key in job_lists:
        ids = [i.decode() if isinstance(i, bytes) else str(i) for i in redis.zrange(list_key, 0, -1)]
        if ids:
            with redis.pipeline(transaction=False) as p:
                for job_id in ids:
                    p.exists(jobs_store.job_key(job_id))
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
