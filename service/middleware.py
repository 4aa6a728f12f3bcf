"""ASGI middleware: the request-body size limit and request metrics.

The body limit is enforced before any parsing: a ``Content-Length`` over the limit is refused at
once, and a chunked body is counted as it streams and cut off the moment it passes the limit.
"""

from __future__ import annotations

import asyncio
import time

from prometheus_client import Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.errors import BadInput, TimedOut, TooLarge
from service.errors import problem_response

REQUESTS = Counter("cnnviz_http_requests_total", "HTTP requests", ["method", "route", "status"])
LATENCY = Histogram("cnnviz_http_request_seconds", "HTTP request latency", ["method", "route"],
                    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))


def _too_large(limit: int) -> TooLarge:
    return TooLarge("request-too-large", "Request body too large", f"The body exceeds the limit of {limit} bytes",
                    limit=limit)


class _TooLarge(TooLarge):
    """Raised from ``receive`` mid-stream; a domain error so body parsers let it through."""

    def __init__(self, limit: int) -> None:
        err = _too_large(limit)
        super().__init__(err.slug, err.title, err.detail, **err.extra)


class _SlowBody(TimedOut):
    """Raised from ``receive`` when a client stalls mid-body; answered 408."""


class BodyLimitMiddleware:
    """The body bound (bytes, before parsing) and a bound on how long a client may stall sending it.

    A slow client holds no thread (the app is async), but it holds a connection and a parse
    buffer; a body chunk that does not arrive within ``body_timeout_s`` ends the request with 408.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, body_timeout_s: float = 30.0) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                declared = -1
            if declared < 0 or declared > self.max_bytes:
                err = (_too_large(self.max_bytes) if declared >= 0
                       else BadInput("invalid-content-length", "Invalid Content-Length header"))
                await problem_response(err, scope.get("path"))(scope, receive, send)
                return
        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            try:
                message = await asyncio.wait_for(receive(), self.body_timeout_s)
            except TimeoutError:
                raise _SlowBody("request-timeout", "The request body arrived too slowly",
                                f"No body data for {self.body_timeout_s:g} s.", limit_s=self.body_timeout_s) from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge(self.max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await problem_response(_too_large(self.max_bytes), scope.get("path"))(scope, receive, send)
        except _SlowBody as err:
            if not started:
                await problem_response(err, scope.get("path"))(scope, receive, send)


class MetricsMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        t0 = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            REQUESTS.labels(scope["method"], path, str(status)).inc()
            LATENCY.labels(scope["method"], path).observe(time.perf_counter() - t0)
