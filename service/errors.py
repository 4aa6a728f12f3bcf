"""RFC 9457 problem details: the one place domain errors become HTTP answers.

Each failure has a stable ``type`` slug (``https://cnnviz.dev/problems/<slug>``) that clients can
switch on; the human text goes into ``title`` and ``detail``. Routes, the core and the engine
raise :class:`core.errors.DomainError` subclasses (or :class:`cnnviz.errors.EngineError`); the
table :data:`STATUS` gives each class its status, and the handlers registered by
:func:`install_handlers` turn them, request validation errors and anything unexpected into
``application/problem+json``.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from cnnviz.errors import EngineError
from core.errors import (
    BadInput,
    Conflict,
    DomainError,
    Gone,
    Invalid,
    NotAcceptable,
    NotFound,
    TimedOut,
    TooLarge,
    TooMany,
    Unauthorized,
    Unavailable,
    Unsupported,
    from_engine,
    jobs_unavailable,
)

log = logging.getLogger(__name__)

PROBLEM_BASE = "https://cnnviz.dev/problems/"
PROBLEM_MEDIA_TYPE = "application/problem+json"

STATUS: dict[type[DomainError], int] = {
    BadInput: 400, Unauthorized: 401, NotFound: 404, NotAcceptable: 406, TimedOut: 408, Conflict: 409, Gone: 410,
    TooLarge: 413, Unsupported: 415, Invalid: 422, TooMany: 429, Unavailable: 503,
}
# Where a client looks next for each kind of "unknown name" problem; {model} from the error's extras.
LOOKUP_LINKS = {"unknown-layer": "/v1/models/{model}", "unknown-model": "/v1/models",
                "unknown-method": "/v1/methods", "unknown-job-type": "/v1/methods", "unknown-view": "/v1/methods"}


def status_of(err: DomainError) -> int:
    for cls in type(err).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 400


def problem_body(err: DomainError, instance: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"type": PROBLEM_BASE + err.slug, "title": err.title, "status": status_of(err)}
    if err.detail:
        out["detail"] = err.detail
    if instance:
        out["instance"] = instance
    out.update(err.extra)
    link = LOOKUP_LINKS.get(err.slug)
    if link and ("{model}" not in link or err.extra.get("model")):
        out.setdefault("see", link.format(model=err.extra.get("model", "")))
    return out


def problem_headers(err: DomainError) -> dict[str, str]:
    headers = {}
    if err.retry_after is not None:
        headers["Retry-After"] = str(int(err.retry_after))
    if isinstance(err, Unauthorized):
        headers["WWW-Authenticate"] = "ApiKey"
    return headers


def speaks_protocol(path: str) -> bool:
    """Whether ``path`` is a route of a serving protocol (KServe V1 ``:predict``/``:explain``, or V2).

    Their clients read errors as ``{"error": "..."}`` with ``Content-Type: application/json`` (KServe's
    client and tritonclient both do), so those routes answer in that shape, with the same status.
    """
    return path == "/v2" or path.startswith("/v2/") or (
        path.startswith("/v1/models/") and path.endswith((":predict", ":explain")))


def protocol_message(body: dict[str, Any]) -> str:
    """The problem's title, detail and type as the one string of a protocol's error."""
    text = str(body.get("title", "error"))
    if body.get("detail"):
        text += f": {body['detail']}"
    if body.get("choices"):
        text += f" (choices: {', '.join(map(str, body['choices']))})"
    return f"{text} [{str(body.get('type', '')).removeprefix(PROBLEM_BASE)}]"


def _answer(body: dict[str, Any], status: int, headers: dict[str, str] | None, path: str | None) -> JSONResponse:
    if path is not None and speaks_protocol(path):
        return JSONResponse({"error": protocol_message(body)}, status_code=status, headers=headers)
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_MEDIA_TYPE)


def problem_response(err: DomainError, instance: str | None = None) -> JSONResponse:
    """The error's answer: problem+json, or ``{"error": ...}`` on a serving protocol's path (``instance``)."""
    return _answer(problem_body(err, instance), status_of(err), problem_headers(err), instance)


def _jsonable_errors(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"loc": [str(x) for x in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": e.get("type")}
            for e in errors]


def install_handlers(app: FastAPI) -> None:
    """Register the handlers that make every error a problem+json answer."""

    @app.exception_handler(DomainError)
    async def _problem(request: Request, exc: DomainError) -> JSONResponse:
        return problem_response(exc, request.url.path)

    @app.exception_handler(EngineError)
    async def _engine(request: Request, exc: EngineError) -> JSONResponse:
        return problem_response(from_engine(exc), request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        err = Invalid("invalid-parameters", "Invalid request parameters",
                      "One or more parameters are missing, of the wrong type or out of range.",
                      errors=_jsonable_errors(list(exc.errors())))
        return problem_response(err, request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        slug = {404: "not-found", 405: "method-not-allowed", 413: "request-too-large"}.get(exc.status_code,
                                                                                            "http-error")
        body = {"type": PROBLEM_BASE + slug, "title": str(exc.detail), "status": exc.status_code,
                "instance": request.url.path}
        return _answer(body, exc.status_code, dict(exc.headers or {}), request.url.path)

    @app.exception_handler(redis.exceptions.ConnectionError)
    @app.exception_handler(redis.exceptions.TimeoutError)
    async def _redis(request: Request, exc: Exception) -> JSONResponse:
        log.warning("Redis unavailable on %s %s: %s", request.method, request.url.path, exc)
        return problem_response(jobs_unavailable(), request.url.path)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        body = {"type": PROBLEM_BASE + "internal-error", "title": "Internal server error", "status": 500,
                "detail": "The server failed to handle this request; it has been logged.",
                "instance": request.url.path}
        return _answer(body, 500, None, request.url.path)
