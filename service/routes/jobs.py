"""``/v1/jobs``: submit, status (long-poll), events (SSE), result, artifacts, cancel, list.

Routes stay thin: parse, let the job type's registry entry check and price the request, then one
:class:`service.job_client.JobClient` call (or :mod:`service.job_events` for the long-poll and SSE).
Redis work runs in the thread pool (sync client), never on the event loop.
"""

from __future__ import annotations

import re

from fastapi import APIRouter, Header, Path, Query, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from core.errors import NotFound
from core.jobtypes import JOB_TYPES, parse_job_request
from core.store.job_records import JobState
from service.deps import JobsDep, PrincipalDep, SettingsDep, SubmitContextDep
from service.job_events import event_stream, long_poll
from service.openapi_parts import JOB_RESPONSES
from service.schemas.job_status import JobList, JobStatus, status_model
from service.submission import submit_prepared
from service.uploads import read_upload

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

JOB_ID = Path(..., min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
ARTIFACT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
STATES = "^(" + "|".join(s.value for s in JobState) + ")$"


def _job_request_body() -> dict[str, object]:
    """``POST /v1/jobs`` typed in OpenAPI: a discriminated union on ``type``, as JSON or multipart."""
    ref = {"$ref": "#/components/schemas/JobRequest"}
    images = "; ".join(f"{name}: {e.images_help}" for name, e in JOB_TYPES.items())
    return {"requestBody": {"required": True, "description": f"Images per type — {images}.", "content": {
        "multipart/form-data": {
            "schema": {"type": "object", "required": ["params"], "properties": {
                "image": {"type": "array", "items": {"type": "string", "format": "binary"}, "maxItems": 256},
                "params": ref}, "additionalProperties": False},
            "encoding": {"params": {"contentType": "application/json"}}},
        "application/json": {
            "schema": {"type": "object", "required": ["params"], "properties": {
                "images": {"type": "array", "items": {"type": "string", "format": "byte"}, "maxItems": 256},
                "params": ref}, "additionalProperties": False}},
    }}}


@router.post("", status_code=202, response_model=JobStatus, responses=JOB_RESPONSES,
             openapi_extra=_job_request_body(), summary="Submit a job; 202 with Location and Retry-After")
async def submit_job(request: Request, settings: SettingsDep, jobs: JobsDep, principal: PrincipalDep,
                     ctx: SubmitContextDep, idempotency_key: str | None = Header(None, max_length=200)) -> Response:
    upload = await read_upload(request, settings, min_images=0)
    job = parse_job_request(upload.params)
    entry = JOB_TYPES[job.type]
    with jobs.guard():
        prepared = await run_in_threadpool(entry.check, ctx, job, upload.images)
    return await submit_prepared(jobs, principal, prepared, upload.images, settings, idempotency_key)


@router.get("", response_model=JobList, responses=JOB_RESPONSES, summary="Your own jobs, newest first")
def list_jobs(jobs: JobsDep, principal: PrincipalDep, status: str | None = Query(None, pattern=STATES),
              limit: int = Query(50, ge=1, le=500)) -> JobList:
    recs = jobs.list(principal, status, limit)
    return JobList(jobs=[status_model(r) for r in recs], count=len(recs))


@router.get("/{job_id}", response_model=JobStatus, responses=JOB_RESPONSES,
            summary="Status, progress, queue position, previews; ?wait=N long-polls until done")
async def get_job(jobs: JobsDep, principal: PrincipalDep, job_id: str = JOB_ID,
                  wait: float = Query(0, ge=0, le=30, description="Seconds to wait for the job to finish")) -> Response:
    # Async: a long-poll awaits between its checks instead of holding a thread-pool thread.
    if wait:
        rec = await long_poll(jobs, principal, job_id, wait)
    else:
        rec = await run_in_threadpool(jobs.get, principal, job_id)
    headers = {"Retry-After": "1"} if rec["status"] in (JobState.QUEUED, JobState.RUNNING) else {}
    # Serialized once here: returning the model would make FastAPI validate it a second time,
    # a measurable share of a poll's cost when many clients poll.
    links = await run_in_threadpool(jobs.artifact_links, rec)
    return Response(status_model(rec, links).model_dump_json(), media_type="application/json", headers=headers)


@router.get("/{job_id}/events", responses={**JOB_RESPONSES, 200: {"content": {"text/event-stream": {}}}},
            summary="Server-sent events: status, progress, preview, done (resumable with Last-Event-ID)")
async def job_events(jobs: JobsDep, principal: PrincipalDep, job_id: str = JOB_ID,
                     last_event_id: str | None = Header(None, max_length=40)) -> StreamingResponse:
    # Async end to end: an open stream awaits Redis on the event loop and holds no pool thread.
    lines = await event_stream(jobs, principal, job_id, last_event_id)
    return StreamingResponse(lines, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.get("/{job_id}/result",
            responses={**JOB_RESPONSES, 200: {"content": {"image/png": {}, "application/json": {}}}},
            summary="The job's main result (PNG for synthesis jobs, JSON for explain jobs)")
def job_result(jobs: JobsDep, principal: PrincipalDep, job_id: str = JOB_ID) -> Response:
    data, media = jobs.result(principal, job_id)
    return Response(data, media_type=media)


@router.get("/{job_id}/artifacts/{name}",
            responses={**JOB_RESPONSES, 200: {"content": {"image/png": {}, "application/json": {}}}},
            summary="One artifact of a job: previews, result, overlays")
def job_artifact(jobs: JobsDep, principal: PrincipalDep, job_id: str = JOB_ID,
                 name: str = Path(..., max_length=64)) -> Response:
    if not ARTIFACT_NAME.match(name):
        raise NotFound("artifact-not-found", f"No artifact {name!r}")
    data, media = jobs.artifact(principal, job_id, name)
    return Response(data, media_type=media)


@router.delete("/{job_id}", response_model=JobStatus, responses={**JOB_RESPONSES, 202: {"model": JobStatus}},
               summary="Cancel (queued: at once; running: within a step) and delete artifacts")
def cancel_job(jobs: JobsDep, principal: PrincipalDep, job_id: str = JOB_ID) -> Response:
    rec = jobs.cancel(principal, job_id)
    code = 202 if rec["status"] == JobState.RUNNING else 200
    return Response(status_model(rec).model_dump_json(), status_code=code, media_type="application/json")
