"""Job status answers (the requests are derived from the registry in :mod:`core.jobtypes`)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from core.store.jobs import JobState


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
