"""RFC 9457 problem details: one exception type for every client-visible failure.

Each failure has a stable ``type`` slug (``https://cnnviz.dev/problems/<slug>``) that clients can
switch on; the human text goes into ``title`` and ``detail``. Routes and helpers raise
:class:`ProblemError`; the handlers registered by :func:`install_handlers` turn it, request
validation errors and anything unexpected into ``application/problem+json``.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)

PROBLEM_BASE = "https://cnnviz.dev/problems/"
PROBLEM_MEDIA_TYPE = "application/problem+json"


class ProblemError(Exception):
    """A failure the client caused or must know about, rendered as problem+json."""

    def __init__(
        self,
        status: int,
        slug: str,
        title: str,
        detail: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail or title)
        self.status = status
        self.slug = slug
        self.title = title
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra

    def body(self, instance: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"type": PROBLEM_BASE + self.slug, "title": self.title, "status": self.status}
        if self.detail:
            out["detail"] = self.detail
        if instance:
            out["instance"] = instance
        out.update(self.extra)
        return out


def problem_response(err: ProblemError, instance: str | None = None) -> JSONResponse:
    return JSONResponse(err.body(instance), status_code=err.status, headers=err.headers,
                        media_type=PROBLEM_MEDIA_TYPE)


def _jsonable_errors(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for e in errors:
        item = {"loc": [str(x) for x in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": e.get("type")}
        out.append(item)
    return out


def install_handlers(app: FastAPI) -> None:
    """Register the handlers that make every error a problem+json answer."""

    @app.exception_handler(ProblemError)
    async def _problem(request: Request, exc: ProblemError) -> JSONResponse:
        return problem_response(exc, request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        err = ProblemError(422, "invalid-parameters", "Invalid request parameters",
                           "One or more parameters are missing, of the wrong type or out of range.",
                           errors=_jsonable_errors(list(exc.errors())))
        return problem_response(err, request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        slug = {404: "not-found", 405: "method-not-allowed", 413: "request-too-large"}.get(exc.status_code,
                                                                                            "http-error")
        err = ProblemError(exc.status_code, slug, str(exc.detail), headers=dict(exc.headers or {}))
        return problem_response(err, request.url.path)

    import redis

    @app.exception_handler(redis.exceptions.ConnectionError)
    @app.exception_handler(redis.exceptions.TimeoutError)
    async def _redis(request: Request, exc: Exception) -> JSONResponse:
        log.warning("Redis unavailable on %s %s: %s", request.method, request.url.path, exc)
        err = ProblemError(503, "jobs-unavailable", "Jobs are unavailable",
                           "The job system (Redis) is unreachable; try again shortly.", headers={"Retry-After": "5"})
        return problem_response(err, request.url.path)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        err = ProblemError(500, "internal-error", "Internal server error",
                           "The server failed to handle this request; it has been logged.")
        return problem_response(err, request.url.path)
