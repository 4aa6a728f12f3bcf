"""Queueing a checked job request: the cost cap, stored inputs, the training lock, the 202 answer.

``POST /v1/jobs`` and the explain route's hand-off both end here, after the request was checked
and priced once: by the job type's registry entry (:meth:`core.jobtypes.JobType.check`), or, for
an explain request handed off (:func:`hand_off_explain`), by :func:`core.explaining.check_explain`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import Response
from starlette.concurrency import run_in_threadpool

from cnnviz.models import LoadedModel
from cnnviz.render import png_from_array
from core.errors import Invalid, TooLarge
from core.explaining import CheckedExplain
from core.imaging import DecodedImage
from core.jobtypes import JOB_TYPES, Prepared, explain_job
from core.settings import Settings
from service.auth import Principal
from service.job_client import JobClient
from service.schemas.job_status import status_model


def stored_png(d: DecodedImage) -> bytes:
    """Inputs are stored as lossless PNG of the decoded, EXIF-oriented RGB image the API validated."""
    return png_from_array(np.asarray(d.image))


def accepted(rec: dict[str, Any], created: bool) -> Response:
    body = status_model(rec).model_dump_json()
    headers = {"Location": f"/v1/jobs/{rec['id']}", "Retry-After": "1"}
    if not created:
        headers["Idempotent-Replayed"] = "true"
    return Response(body, status_code=202, media_type="application/json", headers=headers)


async def submit_prepared(jobs: JobClient, principal: Principal, prepared: Prepared, images: list[DecodedImage],
                          settings: Settings, idempotency_key: str | None) -> Response:
    """Cap the cost, store the inputs, hold the training lock if any, enqueue; 202 with Location."""
    cost = prepared.cost
    if cost > settings.max_job_cost:
        raise Invalid("job-too-expensive", "This job is over the per-request cost cap",
                      f"estimated {cost:.0f} forward passes, limit max_job_cost={settings.max_job_cost:.0f}",
                      estimate=cost, limit=settings.max_job_cost, limit_name="max_job_cost")
    inputs = await run_in_threadpool(lambda: [stored_png(d) for d in images])
    if sum(len(b) for b in inputs) > 4 * settings.max_body_bytes:
        raise TooLarge("inputs-too-large", "The images are too large to store for a job",
                       limit=4 * settings.max_body_bytes)
    lock = prepared.lock
    if lock is None:
        rec, created = await run_in_threadpool(jobs.submit, principal, prepared.spec, inputs, cost, idempotency_key)
        return accepted(rec, created)
    with jobs.guard():
        await run_in_threadpool(lock.claim)
    try:
        rec, created = await run_in_threadpool(jobs.submit, principal, prepared.spec, inputs, cost, idempotency_key)
    except BaseException:
        with jobs.guard():
            lock.release()
        raise
    with jobs.guard():
        lock.bind(rec["id"], int(rec.get("timeout_s") or 3600) + 3600)
    return accepted(rec, created)


def hands_off(request: CheckedExplain, settings: Settings, prefer: str) -> bool:
    """Whether an explain request should become a job: too costly inline, or ``Prefer: respond-async``.

    Asked only where there is a job system; without one, a request over the inline budget is
    refused instead (``over-inline-budget``, :class:`service.inline_explain.InlineExplainer`).
    """
    return request.cost > settings.inline_budget or "respond-async" in prefer.lower()


async def hand_off_explain(jobs: JobClient, principal: Principal, model: LoadedModel, request: CheckedExplain,
                           images: list[DecodedImage], settings: Settings,
                           idempotency_key: str | None) -> Response:
    """An explain request, already checked and priced, queued as an explain job: 202 with Location.

    Only the job type's image count is left to check; parameters and price are not checked again.
    """
    JOB_TYPES["explain"].check_image_count(len(images))
    return await submit_prepared(jobs, principal, explain_job(model, request), images, settings, idempotency_key)
