"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness: the process answers")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: models loaded, Redis and a worker reachable")
def readyz(request: Request) -> JSONResponse:
    catalog = request.app.state.catalog
    checks: dict[str, object] = {"models": {n: catalog.is_loaded(n) for n in catalog.names()}}
    ready = catalog.is_loaded(catalog.default)
    jobs = getattr(request.app.state, "jobs", None)
    if jobs is not None:
        checks.update(jobs.health())
    return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
