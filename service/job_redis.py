"""The job system's Redis as the API process uses it: one sync pool, an asyncio client per event
loop, the job store, the fair rq queues, and the guard that turns an outage into a 503.

:class:`service.job_client.JobClient` is one of these with the job operations on top; the reaper
(:mod:`service.reaper`) needs only this part.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis
import redis.asyncio as aioredis
from redis import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from rq import worker_registration

from core.errors import jobs_unavailable
from core.settings import Settings
from core.store.config import QUEUES, JobConfig
from core.store.job_records import JobStore
from service.job_queue import FairQueue, fair_queue

log = logging.getLogger(__name__)


class JobRedis:
    """Connections are made on first use, so start-up never blocks on a down Redis."""

    def __init__(self, settings: Settings, config: JobConfig | None = None) -> None:
        if not settings.redis_url:
            raise ValueError("the job system needs settings.redis_url")
        self.settings = settings
        self.config = config or settings.job_config
        self._redis: Redis | None = None
        self._aredis: dict[int, aioredis.Redis] = {}  # awaited reads: one asyncio client per event loop
        self._lock = threading.Lock()

    @property
    def redis(self) -> Redis:
        if self._redis is None:
            with self._lock:
                if self._redis is None:
                    self._redis = Redis.from_url(self.settings.redis_url or "", socket_connect_timeout=1,
                                                 socket_timeout=10, health_check_interval=15)
        return self._redis

    def async_redis(self) -> aioredis.Redis:
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

    @property
    def store(self) -> JobStore:
        return JobStore(self.redis, self.config.prefix)

    def queue(self, kind: str) -> FairQueue:
        """The rq queue of a kind of work (``short`` or ``long``), fair across owners."""
        return fair_queue(self.config.queue_name(kind), self.redis, self.store)

    def queue_of(self, rec: dict[str, Any]) -> FairQueue:
        """The rq queue a job was put on (its record names it)."""
        return fair_queue(rec.get("queue") or self.config.queue_name("short"), self.redis, self.store)

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
        """Close the asyncio client of the running loop, then the sync pool."""
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
