"""Retries, backoff, Retry-After, Idempotency-Key reuse, problem parsing and SSE resumption, against
a tiny scripted HTTP server in a thread (a real socket: the service cannot be made to answer 503 on
cue), plus units of the pieces (backoff arithmetic with httpx.MockTransport, the SSE parser, PNGs)."""

from __future__ import annotations

import asyncio
import email.utils
import io
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import numpy as np
import pytest
from cnnviz_client import AsyncClient, Client, ProblemError, RetryPolicy
from cnnviz_client._core import parse_retry_after
from cnnviz_client._images import array_png
from cnnviz_client._sse import SSEDecoder
from PIL import Image

MODELS = {"models": [{"name": "m", "arch": "a", "description": "", "input_size": 224, "num_labels": 2,
                      "default": True, "loaded": True}], "default": "m"}
JOB = {"id": "j1", "type": "deepdream", "status": "queued", "progress": {}, "created_at": "now",
       "links": {"self": "/v1/jobs/j1", "events": "/v1/jobs/j1/events"}}


def problem(status: int, slug: str, retry_after: str | None = None) -> tuple[int, dict[str, str], bytes]:
    headers = {"Content-Type": "application/problem+json"}
    if retry_after is not None:
        headers["Retry-After"] = retry_after
    body = {"type": f"https://cnnviz.dev/problems/{slug}", "title": slug.replace("-", " "), "status": status,
            "detail": f"{slug} for now", "limit": 20}
    return status, headers, json.dumps(body).encode()


def ok(body: Any, status: int = 200) -> tuple[int, dict[str, str], bytes]:
    return status, {"Content-Type": "application/json"}, json.dumps(body).encode()


class Recorded:
    def __init__(self, method: str, path: str, headers: dict[str, str], body: bytes) -> None:
        self.method, self.path, self.headers, self.body = method, path, headers, body


class Scripted(ThreadingHTTPServer):
    """Answers each request with the next scripted answer (the last one repeats); records requests."""

    daemon_threads = True

    def __init__(self, answers: list[Any]) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.answers = list(answers)
        self.requests: list[Recorded] = []
        self.lock = threading.Lock()

    def next_answer(self) -> Any:
        with self.lock:
            return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Scripted

    def _handle(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.requests.append(Recorded(self.command, self.path, {k.lower(): v for k, v in self.headers.items()},
                                             body))
        answer = self.server.next_answer()
        if callable(answer):  # a streaming answer writes itself
            answer(self)
            return
        status, headers, payload = answer
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_DELETE = _handle

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass


@pytest.fixture
def serve() -> Iterator[Callable[[list[Any]], Scripted]]:
    servers: list[Scripted] = []

    def start(answers: list[Any]) -> Scripted:
        s = Scripted(answers)
        threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


def test_503_then_200_honours_retry_after(serve: Callable[[list[Any]], Scripted]) -> None:
    srv = serve([problem(503, "queue-full", "1"), ok(MODELS)])
    t0 = time.monotonic()
    with Client(srv.url) as c:
        models = c.models()
    assert time.monotonic() - t0 >= 0.95  # it waited the second the server asked for
    assert [m.name for m in models] == ["m"] and len(srv.requests) == 2


def test_429_and_503_submit_reuses_its_idempotency_key(serve: Callable[[list[Any]], Scripted]) -> None:
    srv = serve([problem(429, "too-many-jobs", "0"), problem(503, "queue-full", "0"), ok(JOB, 202),
                 ok({**JOB, "id": "j2"}, 202)])
    with Client(srv.url, api_key="k") as c:
        job = c.submit("deepdream", b"\x89PNG\r\n\x1a\nfake", layer="_blocks.10", steps=2)
        second = c.submit("deepdream", steps=3)
    assert job.id == "j1" and second.id == "j2"
    keys = [r.headers["idempotency-key"] for r in srv.requests]
    assert len(keys) == 4 and keys[0] == keys[1] == keys[2] != keys[3]  # one key per logical submit
    assert all(r.headers["x-api-key"] == "k" and r.path == "/v1/jobs" for r in srv.requests)
    # The envelope: multipart image parts plus params = {type, params}; no images: a JSON body.
    first = srv.requests[0]
    assert first.headers["content-type"].startswith("multipart/form-data")
    assert b'name="image"' in first.body and b'"type":"deepdream"' in first.body
    assert b'{"type":"deepdream","params":{"layer":"_blocks.10","steps":2}}' in first.body
    assert json.loads(srv.requests[3].body) == {"params": {"type": "deepdream", "params": {"steps": 3}}}


def test_retries_are_bounded(serve: Callable[[list[Any]], Scripted]) -> None:
    srv = serve([problem(503, "queue-full", "0")])
    with Client(srv.url, retry=RetryPolicy(attempts=3)) as c, pytest.raises(ProblemError) as info:
        c.jobs()
    assert info.value.status == 503 and info.value.slug == "queue-full" and info.value.limit == 20
    assert info.value.retry_after == "0" and len(srv.requests) == 3
    with Client(srv.url, retry=0) as c, pytest.raises(ProblemError):
        c.jobs()
    assert len(srv.requests) == 4  # retry=0: one try


def test_non_problem_error_page(serve: Callable[[list[Any]], Scripted]) -> None:
    srv = serve([(502, {"Content-Type": "text/html"}, b"<html>bad gateway</html>")])
    with Client(srv.url) as c, pytest.raises(ProblemError) as info:
        c.methods()
    p = info.value
    assert (p.status, p.type, p.title) == (502, "about:blank", "Bad Gateway") and "bad gateway" in p.detail
    assert len(srv.requests) == 1  # 502 is not retried


def test_async_client_retries(serve: Callable[[list[Any]], Scripted]) -> None:
    srv = serve([problem(503, "jobs-unavailable", "0"), ok(JOB, 202)])

    async def run() -> str:
        async with AsyncClient(srv.url) as c:
            return (await c.submit("deepdream")).id

    assert asyncio.run(run()) == "j1"
    assert len(srv.requests) == 2 and srv.requests[0].headers["idempotency-key"] == srv.requests[1].headers[
        "idempotency-key"]


def _sse_answer(lines: list[str], drop: bool) -> Callable[[BaseHTTPRequestHandler], None]:
    """A chunked text/event-stream; with ``drop`` the connection is cut before the last chunk."""

    def write(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        for text in lines:
            data = text.encode()
            h.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            h.wfile.flush()
        if not drop:
            h.wfile.write(b"0\r\n\r\n")
        h.close_connection = True

    return write


def test_events_resume_with_last_event_id_after_a_drop(serve: Callable[[list[Any]], Scripted]) -> None:
    first = _sse_answer(["retry: 10\n\n", 'id: 1-0\nevent: status\ndata: {"status": "running"}\n\n',
                         ': keepalive\n\nid: 2-0\nevent: progress\ndata: {"step": 1,\ndata:  "total": 2}\n\n'],
                        drop=True)
    second = _sse_answer(['id: 3-0\nevent: progress\ndata: {"step": 2, "total": 2}\n\n',
                          'id: 4-0\nevent: done\ndata: {"status": "succeeded"}\n\n'], drop=False)
    srv = serve([first, second])
    with Client(srv.url) as c:
        job = c.job("j1")
        events = list(job.events())
    assert [(e.id, e.event) for e in events] == [("1-0", "status"), ("2-0", "progress"), ("3-0", "progress"),
                                                ("4-0", "done")]
    assert events[1].data == {"step": 1, "total": 2}  # a multi-line data field
    assert "last-event-id" not in srv.requests[0].headers
    assert srv.requests[1].headers["last-event-id"] == "2-0"  # resumed where the dropped stream stopped
    assert job.last_event_id == "4-0"


def test_backoff_doubles_without_retry_after(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[httpx.Request] = []
    sleeps: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if len(calls) <= 3:
            return httpx.Response(503, json={"title": "busy", "status": 503})
        return httpx.Response(200, json=MODELS)

    monkeypatch.setattr(time, "sleep", sleeps.append)
    policy = RetryPolicy(attempts=5, backoff=0.5, max_backoff=1.5, jitter=0.1)
    with Client("http://svc", transport=httpx.MockTransport(handler), retry=policy) as c:
        assert c.models()[0].name == "m"
    assert len(calls) == 4 and len(sleeps) == 3
    for got, base in zip(sleeps, [0.5, 1.0, 1.5], strict=True):  # doubling, capped at max_backoff
        assert base <= got <= base * 1.1


def test_transport_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(time, "sleep", lambda s: None)
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.method} {request.url.path}")
        if len(seen) == 1:
            raise httpx.ConnectError("refused", request=request)
        if request.method == "POST":
            raise httpx.ReadError("reset", request=request)
        return httpx.Response(200, json=MODELS)

    with Client("http://svc", transport=httpx.MockTransport(handler)) as c:
        assert c.models()[0].name == "m"  # a refused connection is retried
        with pytest.raises(httpx.ReadError):
            c.create_collection([b"\x89PNG\r\n\x1a\n", b"\x89PNG\r\n\x1a\n"])  # no idempotency: not resent
    assert seen == ["GET /v1/models", "GET /v1/models", "POST /v1/collections"]


def test_retry_after_forms() -> None:
    assert parse_retry_after("7") == 7.0 and parse_retry_after(None) is None and parse_retry_after("soon") is None
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 28 <= parse_retry_after(later) <= 31
    assert RetryPolicy(max_retry_after=5).delay(1, "3600") == 5  # a server's long ask is capped


def test_sse_decoder() -> None:
    d = SSEDecoder()
    got = [d.feed(line) for line in ["retry: 2000", "", ": comment", "id: 5-1", "event: preview",
                                     'data: {"name": "p.png"}', "", "data: plain text", "data: more", ""]]
    events = [e for e in got if e is not None]
    assert d.retry_ms == 2000 and len(events) == 2
    assert (events[0].id, events[0].event, events[0].data) == ("5-1", "preview", {"name": "p.png"})
    assert (events[1].id, events[1].event, events[1].data) == ("5-1", "message", "plain text\nmore")


@pytest.mark.parametrize("shape,dtype", [((5, 7), np.uint8), ((5, 7, 3), np.uint8), ((5, 7, 4), np.uint8),
                                         ((5, 7, 1), np.uint8), ((5, 7, 3), np.float32), ((5, 7), np.bool_)])
def test_arrays_become_pngs_without_pil(shape: tuple[int, ...], dtype: Any) -> None:
    rng = np.random.default_rng(0)
    arr = rng.random(shape) if dtype != np.uint8 else rng.integers(0, 256, shape)
    arr = (arr > 0.5) if dtype == np.bool_ else arr.astype(dtype)
    back = np.asarray(Image.open(io.BytesIO(array_png(arr))))
    expect = arr[..., 0] if arr.ndim == 3 and arr.shape[2] == 1 else arr
    if dtype == np.float32:
        expect = (expect * 255 + 0.5).astype(np.uint8)
    elif dtype == np.bool_:
        expect = expect.astype(np.uint8) * 255
    assert back.shape == expect.shape and np.array_equal(back, expect)
