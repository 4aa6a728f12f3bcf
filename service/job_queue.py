"""The rq queues the API puts jobs on: fair across API keys, and one way to enqueue a job's runner.

A job is not appended to rq's list but inserted by start-time fair queueing
(:meth:`core.store.job_records.JobStore.fair_push`), so one key's hundred queued jobs hold back
another key's one by at most one job per owner. Workers are plain rq workers: they pop the list's
head as always.
"""

from __future__ import annotations

from typing import Any

from redis import Redis
from rq import Queue
from rq.serializers import JSONSerializer

from core.store.job_records import JobStore

SERIALIZER = JSONSerializer  # as the workers use: jobs carry ids and small JSON, never pickles


class FairQueue(Queue):
    """An rq queue whose new jobs are inserted in fair order across owners, not appended.

    rq pushes a job id on the queue's list in :meth:`push_job_id` (inside its enqueue pipeline);
    here that push is :meth:`JobStore.fair_push`, a Lua script that interleaves owners
    round-robin.
    """

    fair_store: JobStore | None = None

    def push_job_id(self, job_id: str, pipeline: Any = None, at_front: bool = False) -> None:
        if at_front or self.fair_store is None:
            super().push_job_id(job_id, pipeline=pipeline, at_front=at_front)
            return
        self.fair_store.fair_push(self.key, self.name, job_id, client=pipeline)


def fair_queue(name: str, redis: Redis, store: JobStore) -> FairQueue:
    """The rq queue ``name``, ordering its new jobs fairly with ``store``'s bookkeeping."""
    queue = FairQueue(name, connection=redis, serializer=SERIALIZER)
    queue.fair_store = store
    return queue


def enqueue_runner(queue: Queue, runner: str, job_id: str, prefix: str, *, timeout: int, ttl_s: int,
                   description: str, at_front: bool = False) -> None:
    """Put job ``job_id`` on ``queue``: rq will call ``runner(job_id, prefix)`` in a worker.

    ``runner`` is the dotted path of the job type's worker function, stored by rq as a string
    (the API never imports worker code); rq keeps its own record of the run for ``ttl_s``.
    """
    queue.enqueue_call(runner, args=(job_id, prefix), timeout=timeout, result_ttl=ttl_s, failure_ttl=ttl_s,
                       job_id=job_id, description=description, at_front=at_front)
