"""``/v1/jobs``: submit, status (long-poll), events (SSE), result, artifacts, cancel, list.

Routes stay thin: parse and validate here, then one :class:`service.jobs.JobClient` call. Redis
work runs in the thread pool (sync client), never on the event loop.
"""

from __future__ import annotations

import io
import re
from typing import Any

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from cnnviz.attribution import METHODS
from cnnviz.synthesis import DeepDreamConfig
from cnnviz.synthesis import estimate_cost as dream_cost
from workers.jobs.synthesis import resolve

from ..auth import Principal, current_principal
from ..deps import get_settings, lookup_model
from ..errors import ProblemError
from ..explaining import estimate_cost as explain_cost
from ..imaging import DecodedImage
from ..jobs import JobClient, status_model, unavailable
from ..schemas.explain import params_model
from ..schemas.jobs import JOB_REQUEST, DeepDreamJob, JobList, JobStatus
from ..schemas.synthesis import SYNTHESIS_JOBS
from ..schemas.training import TRAINING_JOBS
from ..settings import Settings
from ..uploads import read_upload, validate_params, validation_problem
from .common import PROBLEM_RESPONSES, upload_body

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

JOB_ID = Path(..., min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
ARTIFACT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
RESPONSES: dict[int | str, dict[str, Any]] = {
    **PROBLEM_RESPONSES,
    **{code: {"description": text, "content": {"application/problem+json": {"schema": {"type": "object"}}}}
       for code, text in [(401, "Missing or wrong API key"), (409, "Job not finished"), (410, "Result expired"),
                          (429, "Too many jobs for this key"), (503, "Queue full or Redis unreachable")]},
}


def get_jobs(request: Request) -> JobClient:
    jobs = getattr(request.app.state, "jobs", None)
    if jobs is None:
        raise unavailable("This service runs without a job system (no Redis configured).")
    return jobs


def stored_png(d: DecodedImage) -> bytes:
    """Inputs are stored as lossless PNG of the decoded, EXIF-oriented RGB image the API validated."""
    buf = io.BytesIO()
    d.image.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def accepted(rec: dict[str, Any], jobs: JobClient, created: bool) -> Response:
    body = status_model(rec).model_dump_json()
    headers = {"Location": f"/v1/jobs/{rec['id']}", "Retry-After": "1"}
    if not created:
        headers["Idempotent-Replayed"] = "true"
    return Response(body, status_code=202, media_type="application/json", headers=headers)


async def submit_spec(request: Request, jobs: JobClient, principal: Principal, spec: dict[str, Any],
                      images: list[DecodedImage], cost: float, settings: Settings) -> Response:
    """Shared by POST /v1/jobs and the explain route's hand-off: cap the cost, store, enqueue, 202."""
    rec, created = await submit_record(request, jobs, principal, spec, images, cost, settings)
    return accepted(rec, jobs, created)


async def submit_record(request: Request, jobs: JobClient, principal: Principal, spec: dict[str, Any],
                        images: list[DecodedImage], cost: float, settings: Settings) -> tuple[dict[str, Any], bool]:
    """Cap the cost, store the inputs, enqueue; the job's record and whether it is new."""
    if cost > settings.max_job_cost:
        raise ProblemError(422, "job-too-expensive", "This job is over the per-request cost cap",
                           f"estimated {cost:.0f} forward passes, limit max_job_cost={settings.max_job_cost:.0f}",
                           estimate=cost, limit=settings.max_job_cost, limit_name="max_job_cost")
    inputs = await run_in_threadpool(lambda: [stored_png(d) for d in images])
    total = sum(len(b) for b in inputs)
    if total > 4 * settings.max_body_bytes:
        raise ProblemError(413, "inputs-too-large", "The images are too large to store for a job",
                           limit=4 * settings.max_body_bytes)
    return await run_in_threadpool(jobs.submit, principal, spec, inputs, cost, request.headers.get("idempotency-key"))


def _validate_job(params: dict[str, Any]) -> Any:
    try:
        return JOB_REQUEST.validate_python(params)
    except ValidationError as exc:
        raise validation_problem(exc, "Invalid job request") from exc


@router.post("", status_code=202, response_model=JobStatus, responses=RESPONSES,
             openapi_extra=upload_body(None, "Images (deepdream 0-1, explain 1+, class_viz 0, adversarial/"
                                             "inversion/texture/texture_nn 1, style 2: content then style) and "
                                             "params = {type, model, params}, a discriminated union on type."),
             summary="Submit a job; 202 with Location and Retry-After")
async def submit_job(request: Request, settings: Settings = Depends(get_settings),
                     idempotency_key: str | None = Header(None, max_length=200)) -> Response:
    jobs = get_jobs(request)
    principal = current_principal(request)
    upload = await read_upload(request, settings, min_images=0)
    job = _validate_job(upload.params)
    if job.type in TRAINING_JOBS:
        from .trained import submit_training

        return await submit_training(request, jobs, principal, job, upload.images, settings)
    model = lookup_model(request.app.state.catalog, job.model or request.app.state.catalog.default)
    if isinstance(job, DeepDreamJob):
        if len(upload.images) > 1:
            raise ProblemError(422, "too-many-images", "DeepDream takes at most one image", limit=1)
        p = job.params
        if p.layer is not None and not model.has_layer(p.layer):
            raise ProblemError(422, "unknown-layer", f"Model {model.name!r} has no layer {p.layer!r}",
                               "See GET /v1/models/{model} for the layer names.")
        h, w = (upload.images[0].height, upload.images[0].width) if upload.images else (p.size, p.size)
        config = DeepDreamConfig(**p.model_dump(exclude={"preview_every"}))
        cost = dream_cost(config, model.preprocessing.input_size, h, w)
        spec = {"type": "deepdream", "model": model.name, "params": p.model_dump(mode="json")}
    elif job.type == "collection":
        spec, cost = _collection(request, model, job, upload.images)
    elif job.type in SYNTHESIS_JOBS:
        spec, cost = _synthesis(model, job, upload.images)
    else:
        method = job.params.method
        if method not in METHODS:
            raise ProblemError(404, "unknown-method", f"No method named {method!r}", choices=sorted(METHODS))
        if not upload.images:
            raise ProblemError(422, "missing-image", "An explain job needs at least one image")
        eparams = validate_params(params_model(method), job.params.explain)
        cost = explain_cost(model, method, eparams, len(upload.images))
        spec = {"type": "explain", "model": model.name,
                "params": {"method": method, "explain": job.params.explain}}
    return await submit_spec(request, jobs, principal, spec, upload.images, cost, settings)


def _collection(request: Request, model: Any, job: Any, images: list[DecodedImage]) -> tuple[dict[str, Any], float]:
    """Check a collection view (owner, layer, query image) and estimate it in forward passes."""
    from .collections import owned_collection

    p = job.params
    rec = owned_collection(request, p.collection)
    wanted = 1 if p.view == "neighbours" else 0
    if len(images) != wanted:
        raise ProblemError(422, "wrong-image-count", f"A {p.view} view takes {wanted} image(s); got {len(images)}",
                           expected=wanted)
    if p.layer is not None and not model.has_layer(p.layer):
        raise ProblemError(422, "unknown-layer", f"Model {model.name!r} has no layer {p.layer!r}")
    if p.view in ("calibrate", "enroll") and not rec.get("labels"):
        raise ProblemError(422, "missing-labels", "Calibration needs a collection uploaded with labels")
    if p.head is not None:
        from .trained import resolve_embedding

        resolve_embedding(request, model, None, p.size, p.head)  # 404 unknown head, 422 another model's
    scale = ((p.size or model.preprocessing.input_size) / model.preprocessing.input_size) ** 2
    cost = (rec["count"] + 1) * scale
    if p.view == "top_patches":
        cost += 3 * p.k * (len(p.channels) if p.channels else p.top_channels) * scale
    return {"type": "collection", "model": model.name, "params": p.model_dump(mode="json")}, cost


def _synthesis(model: Any, job: Any, images: list[DecodedImage]) -> tuple[dict[str, Any], float]:
    """Check an optimization job against the model and estimate its cost before it is queued."""
    _, n_images, cost_fn = SYNTHESIS_JOBS[job.type]
    if len(images) != n_images:
        what = {0: "no image", 1: "one image", 2: "two images (content, then style)"}[n_images]
        raise ProblemError(422, "wrong-image-count", f"A {job.type} job takes {what}; got {len(images)}",
                           expected=n_images)
    bad = [n for n in job.params.layer_names() if not model.has_layer(n)]
    if bad:
        raise ProblemError(422, "unknown-layer", f"Model {model.name!r} has no layer {bad[0]!r}",
                           "See GET /v1/models/{model} for the layer names.")
    params = job.params.model_dump(mode="json")
    kwargs = {k: v for k, v in params.items() if v is not None and k != "preview_every"}
    if job.type == "texture_nn":
        kwargs["source_size"] = (images[0].height, images[0].width)
    cost = float(resolve(cost_fn)(model, **kwargs))
    return {"type": job.type, "model": model.name, "params": {k: v for k, v in params.items() if v is not None}}, cost


async def hand_off_explain(request: Request, model_name: str, method: str, images: list[DecodedImage],
                           raw_params: dict[str, Any], cost: float, settings: Settings) -> Response:
    """The explain route's async path: the same request, run as an ``explain`` job (202)."""
    jobs = get_jobs(request)
    spec = {"type": "explain", "model": model_name, "params": {"method": method, "explain": raw_params}}
    return await submit_spec(request, jobs, current_principal(request), spec, images, cost, settings)


@router.get("", response_model=JobList, responses=RESPONSES, summary="Your own jobs, newest first")
def list_jobs(request: Request,
              status: str | None = Query(None, pattern="^(queued|running|succeeded|failed|canceled)$"),
              limit: int = Query(50, ge=1, le=500)) -> JobList:
    jobs = get_jobs(request)
    recs = jobs.list(current_principal(request), status, limit)
    return JobList(jobs=[status_model(r) for r in recs], count=len(recs))


@router.get("/{job_id}", response_model=JobStatus, responses=RESPONSES,
            summary="Status, progress, queue position, previews; ?wait=N long-polls until done")
def get_job(request: Request, job_id: str = JOB_ID,
            wait: float = Query(0, ge=0, le=30, description="Seconds to wait for the job to finish")) -> Response:
    jobs = get_jobs(request)
    principal = current_principal(request)
    rec = jobs.wait(principal, job_id, wait) if wait else jobs.get(principal, job_id)
    headers = {"Retry-After": "1"} if rec["status"] in ("queued", "running") else {}
    # Serialized once here: returning the model would make FastAPI validate it a second time,
    # a measurable share of a poll's cost when many clients poll.
    return Response(status_model(rec, jobs.artifact_links(rec)).model_dump_json(), media_type="application/json",
                    headers=headers)


@router.get("/{job_id}/events", responses={**RESPONSES, 200: {"content": {"text/event-stream": {}}}},
            summary="Server-sent events: status, progress, preview, done (resumable with Last-Event-ID)")
def job_events(request: Request, job_id: str = JOB_ID,
               last_event_id: str | None = Header(None, max_length=40)) -> StreamingResponse:
    jobs = get_jobs(request)
    lines = jobs.events(current_principal(request), job_id, last_event_id)
    return StreamingResponse(lines, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.get("/{job_id}/result", responses={**RESPONSES, 200: {"content": {"image/png": {}, "application/json": {}}}},
            summary="The job's main result (PNG for synthesis jobs, JSON for explain jobs)")
def job_result(request: Request, job_id: str = JOB_ID) -> Response:
    data, media = get_jobs(request).result(current_principal(request), job_id)
    return Response(data, media_type=media)


@router.get("/{job_id}/artifacts/{name}",
            responses={**RESPONSES, 200: {"content": {"image/png": {}, "application/json": {}}}},
            summary="One artifact of a job: previews, result, overlays")
def job_artifact(request: Request, job_id: str = JOB_ID, name: str = Path(..., max_length=64)) -> Response:
    if not ARTIFACT_NAME.match(name):
        raise ProblemError(404, "artifact-not-found", f"No artifact {name!r}")
    data, media = get_jobs(request).artifact(current_principal(request), job_id, name)
    return Response(data, media_type=media)


@router.delete("/{job_id}", response_model=JobStatus, responses={**RESPONSES, 202: {"model": JobStatus}},
               summary="Cancel (queued: at once; running: within a step) and delete artifacts")
def cancel_job(request: Request, job_id: str = JOB_ID) -> Response:
    jobs = get_jobs(request)
    rec = jobs.cancel(current_principal(request), job_id)
    code = 202 if rec["status"] == "running" else 200
    return Response(status_model(rec).model_dump_json(), status_code=code, media_type="application/json")

