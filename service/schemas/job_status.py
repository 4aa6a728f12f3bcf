"""Job status answers, and how a stored job record becomes one (:func:`status_model`).

The requests are derived from the registry in :mod:`core.jobtypes`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field

from core.store.job_records import CANCELED, SUCCEEDED, JobState


class JobProgress(BaseModel):
    step: int = 0
    total: int = 0
    fraction: float = 0.0
    stage: str = ""
    message: str | None = None
    objective: float | None = None
    checkpoint_step: int | None = Field(None, description="training jobs: the step of the last checkpoint kept, "
                                        "where a resume starts")


class JobError(BaseModel):
    type: str = Field(..., description="Stable error slug, e.g. abandoned, out-of-memory, timeout")
    detail: str = ""


class ArtifactLink(BaseModel):
    name: str
    href: str
    media_type: str | None = None


class WorkerInfo(BaseModel):
    pid: int | None = None
    host: str | None = None
    model_loads: int | None = Field(None, description="Models this worker process had loaded when it ran the job")


class JobLinks(BaseModel):
    self: str
    events: str
    result: str | None = None


class JobStatus(BaseModel):
    id: str
    type: str
    model: str | None = None
    status: JobState
    progress: JobProgress
    queue_position: int | None = Field(None, description="0 = next to run; null unless queued")
    created_at: str
    started_at: str | None = None
    ended_at: str | None = None
    cancel_requested: bool = False
    error: JobError | None = None
    previews: list[ArtifactLink] = Field(default_factory=list)
    artifacts: list[ArtifactLink] = Field(default_factory=list)
    links: JobLinks
    worker: WorkerInfo | None = None


class JobList(BaseModel):
    jobs: list[JobStatus]
    count: int


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def status_model(rec: dict[str, Any], artifacts: list[tuple[str, str]] | None = None) -> JobStatus:
    """The public shape of a job record (``artifacts``: its (name, media type) pairs, when listed)."""
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
