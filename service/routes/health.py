"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from service.deps import CatalogDep, OptionalJobsDep

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> dict[str, str]:
    # Async and touching nothing: it answers on the event loop even when every pool thread is busy.
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: models loaded, Redis reachable, a live worker on every queue")
async def readyz(catalog: CatalogDep, jobs: OptionalJobsDep) -> JSONResponse:
    checks: dict[str, object] = {"models": {n: catalog.is_loaded(n) for n in catalog.names()}}
    missing = [] if catalog.is_loaded(catalog.default) else [f"model {catalog.default} not loaded"]
    if jobs is not None:
        health = await run_in_threadpool(jobs.health)  # a few short Redis reads, off the event loop
        checks.update(health)
        if not health["redis"]:
            missing.append("redis unreachable")
        missing += [f"no live worker on the {kind} queue" for kind, n in health["queues"].items() if not n]
    return JSONResponse({"ready": not missing, "missing": missing, "checks": checks},
                        status_code=503 if missing else 200)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
