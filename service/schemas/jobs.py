"""Job requests (a discriminated union on ``type``) and job status answers."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, create_model

from .collections import CollectionJob
from .synthesis import SYNTHESIS_JOBS
from .training import FastStyleJob, TripletHeadJob

JobState = Literal["queued", "running", "succeeded", "failed", "canceled"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DeepDreamParams(_Strict):
    """DeepDream on one layer; every knob bounded so a request cannot ask for unbounded work."""

    layer: str | None = Field(None, max_length=200, description="Layer to amplify; default: a mid-depth layer")
    channel: int | None = Field(None, ge=0, le=100_000, description="Amplify only this channel of the layer")
    objective: Literal["l2", "mean"] = Field("l2", description="Mean square (l2) or mean of the activation")
    octaves: int = Field(4, ge=1, le=8)
    octave_scale: float = Field(1.4, ge=1.1, le=2.0)
    steps: int = Field(10, ge=1, le=500, description="Gradient steps per octave")
    step_size: float = Field(0.01, gt=0.0, le=0.5, description="Pixels moved per step ([0,1] units), normalized")
    jitter: int = Field(8, ge=0, le=64, description="Random shift in px per step")
    size: int = Field(224, ge=32, le=1024, description="Long side of the output in px")
    preview_every: int = Field(5, ge=0, le=500, description="Store a preview image every N steps (0: none)")
    seed: int = Field(0, ge=0, le=2**31 - 1)


class DeepDreamJob(_Strict):
    type: Literal["deepdream"]
    model: str | None = Field(None, max_length=100, description="Default: the catalog's default model")
    params: DeepDreamParams = Field(default_factory=DeepDreamParams)


class ExplainJobParams(_Strict):
    method: str = Field(..., max_length=64, description="Any method of GET /v1/methods")
    explain: dict[str, Any] = Field(default_factory=dict, description="The method's explain parameters")


class ExplainJob(_Strict):
    type: Literal["explain"]
    model: str | None = Field(None, max_length=100)
    params: ExplainJobParams


def _job(type_name: str, params: type[BaseModel]) -> type[BaseModel]:
    """A ``{type, model, params}`` request model for one optimization job type."""
    title = "".join(w.capitalize() for w in type_name.split("_")) + "Job"
    return create_model(title, __base__=_Strict, type=(Literal[type_name], ...),  # type: ignore[call-overload]
                        model=(str | None, Field(None, max_length=100)), params=(params, Field(default_factory=params)))


SYNTHESIS_REQUESTS = {name: _job(name, spec[0]) for name, spec in SYNTHESIS_JOBS.items()}
# Adversarial jobs need a target, so their params have no default; the rest may be omitted.
SynthesisJob = Union[tuple(SYNTHESIS_REQUESTS.values())]  # type: ignore[valid-type]  # noqa: UP007

JobRequest = Annotated[DeepDreamJob | ExplainJob | CollectionJob | SynthesisJob | FastStyleJob | TripletHeadJob,
                       Field(discriminator="type")]
JOB_REQUEST = TypeAdapter(JobRequest)


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
