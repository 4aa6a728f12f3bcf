"""Names and timings shared by the API and the workers: queue, key prefix, heartbeat, TTLs.

Both sides build it from the same settings (:attr:`core.settings.Settings.job_config`), so an API
and its workers that share an environment agree without importing each other. Tests give each
session its own queue and prefix so a shared Redis is never polluted.
"""

from __future__ import annotations

from dataclasses import dataclass

QUEUES = ("short", "long")  # kinds of work; each job type names its kind in core.jobtypes
# A worker refreshes its rq key every WORKER_BEAT_S with this TTL, busy or idle; a worker killed
# with -9 (or a machine gone) drops out of /readyz's count when its key expires, within this.
WORKER_LIVENESS_S = 10
WORKER_BEAT_S = 2.0


@dataclass(frozen=True)
class JobConfig:
    """Where jobs live in Redis and how liveness is judged.

    The defaults here are the settings' defaults (``CNNVIZ_QUEUE``, ``CNNVIZ_KEY_PREFIX``,
    ``CNNVIZ_JOB_*``); the other fields are fixed policy.
    """

    queue: str = "cnnviz"  # base name: the rq queues are "<queue>-short" and "<queue>-long"
    prefix: str = "cnnviz"
    heartbeat_ttl_s: float = 15.0  # a running job whose heartbeat key is gone this long is abandoned
    heartbeat_interval_s: float = 2.0
    # A queued job that is in no rq list this long was taken off it by a worker that stopped (kill -9,
    # lost Redis) before it could start it: the API's reaper pushes it again (service/reaper.py).
    orphan_grace_s: float = 10.0
    seconds_per_cost: float = 0.25  # job_timeout = base + cost * this, bounded below
    min_timeout_s: int = 120
    max_timeout_s: int = 6 * 3600
    # A job keeps its newest previews, at most this many, for its artifact TTL; an older one is deleted
    # and a "preview-dropped" event says so, so every announced preview answers until it is dropped.
    max_previews: int = 64

    def queue_name(self, kind: str) -> str:
        """The rq queue of a kind of work (``short`` or ``long``)."""
        if kind not in QUEUES:
            raise ValueError(f"unknown queue kind {kind!r}; expected one of {QUEUES}")
        return f"{self.queue}-{kind}"

    def job_timeout(self, cost: float) -> int:
        """rq's hard limit for one job, from its cost estimate: generous, but never unbounded."""
        return int(min(self.max_timeout_s, max(self.min_timeout_s, 60 + cost * self.seconds_per_cost)))
