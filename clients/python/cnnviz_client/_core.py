"""The client's logic, written once for the sync and the async client.

Every API call is an *operation*: a generator that yields what it needs done, a :class:`Call` to
send or a :class:`Sleep`, and is sent back the ``httpx.Response`` (or has the transport error
thrown in). :class:`~cnnviz_client.Client` and :class:`~cnnviz_client.AsyncClient` only drive
operations, with ``httpx.Client`` + ``time.sleep`` or ``httpx.AsyncClient`` + ``asyncio.sleep``.
Request building, retries with backoff, the explain route's 202 hand-off, job polling and the
parsing of answers and problems therefore behave identically in both.
"""

from __future__ import annotations

import email.utils
import json
import logging
import random
import time
import uuid
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import quote

import httpx

from ._images import as_image_list, encode_image, sniff_media_type
from .errors import JobFailedError, JobTimeoutError, ProblemError
from .types import (
    Artifact,
    Collection,
    ExplainResult,
    IdentifyResult,
    InspectResult,
    JobStatus,
    MethodList,
    ModelDetail,
    ModelSummary,
    NdExplainResult,
    NdPredictResult,
    PredictResult,
    StyleResult,
    TrainedInfo,
)

log = logging.getLogger("cnnviz_client")

T = TypeVar("T")
DEFAULT_URL = "http://127.0.0.1:8000"
MAX_SERVER_WAIT_S = 30.0  # the service caps ?wait= at 30 s


@dataclass
class Call:
    """One HTTP request, as data, so a retry resends exactly the same thing (same Idempotency-Key)."""

    method: str
    path: str
    params: dict[str, Any] | None = None
    json: Any = None
    files: list[tuple[str, tuple[str, bytes, str]]] | None = None
    data: dict[str, str] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    extra_read_s: float = 0.0  # added to the read timeout (long polls)
    accept: tuple[int, ...] = ()  # non-2xx statuses handed to the operation instead of raised
    replayable: bool = True  # safe to resend after a transport error once the request may have arrived


@dataclass(frozen=True)
class Sleep:
    seconds: float


Op = Generator["Call | Sleep", Any, T]


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries of requests the service turned away *for now*.

    503 (queue full, Redis unreachable) and 429 (too many jobs for this key) mean the request was
    not acted on, so resending is safe for every method; the service says when with Retry-After,
    which is honoured (up to ``max_retry_after``), else the delay doubles from ``backoff`` up to
    ``max_backoff`` with a little jitter so many clients do not retry in lockstep. Transport
    errors are retried too: connection failures always, others only for replayable requests.
    ``attempts`` counts the first try, so ``attempts=1`` disables retrying.
    """

    attempts: int = 4
    backoff: float = 0.5
    max_backoff: float = 8.0
    max_retry_after: float = 60.0
    jitter: float = 0.1
    statuses: frozenset[int] = frozenset({429, 503})

    def delay(self, attempt: int, retry_after: str | None = None) -> float:
        """Seconds to wait after failed try number ``attempt`` (1-based)."""
        server = parse_retry_after(retry_after)
        if server is not None:
            return min(server, self.max_retry_after)
        base = min(self.backoff * (2 ** (attempt - 1)), self.max_backoff)
        return base * (1.0 + random.uniform(0.0, self.jitter))


NO_RETRY = RetryPolicy(attempts=1)


@dataclass
class State:
    """What operations share across calls of one client."""

    retry: RetryPolicy = field(default_factory=RetryPolicy)
    default_model: str | None = None


def extend_timeout(base: httpx.Timeout, extra_read_s: float) -> httpx.Timeout:
    """The client's timeout with a longer read, for long polls that the server holds open on purpose."""
    read = None if base.read is None else base.read + extra_read_s
    return httpx.Timeout(connect=base.connect, read=read, write=base.write, pool=base.pool)


def _connect_failure(exc: Exception) -> bool:
    return isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout))


def send(state: State, call: Call) -> Op[httpx.Response]:
    """Send ``call`` with the retry policy; a non-2xx answer not in ``call.accept`` raises ProblemError."""
    policy = state.retry
    attempt = 1
    while True:
        try:
            resp = yield call
        except httpx.TransportError as exc:
            if attempt >= policy.attempts or not (_connect_failure(exc) or call.replayable):
                raise
            delay = policy.delay(attempt)
            log.warning("%s %s failed (%s: %s); retry %d of %d in %.2fs", call.method, call.path,
                        type(exc).__name__, exc, attempt, policy.attempts - 1, delay)
            yield Sleep(delay)
            attempt += 1
            continue
        if resp.status_code in policy.statuses and attempt < policy.attempts:
            delay = policy.delay(attempt, resp.headers.get("retry-after"))
            log.warning("%s %s answered %d; retry %d of %d in %.2fs", call.method, call.path, resp.status_code,
                        attempt, policy.attempts - 1, delay)
            yield Sleep(delay)
            attempt += 1
            continue
        log.debug("%s %s -> %d", call.method, call.path, resp.status_code)
        if resp.is_success or resp.status_code in call.accept:
            return resp
        raise ProblemError.from_response(resp)


# ---- request building ----------------------------------------------------------------------------


def seg(value: str) -> str:
    """One URL path segment, escaped."""
    return quote(str(value), safe="")


def merge_params(params: Mapping[str, Any] | None, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """``params=`` (for keys that clash with argument names) plus keyword parameters; None values dropped."""
    out = dict(params or {})
    out.update(kwargs)
    return {k: v for k, v in out.items() if v is not None}


def upload_call(method: str, path: str, images: Any, params: Mapping[str, Any], *, zip_file: Any = None,
                headers: Mapping[str, str] | None = None, replayable: bool = True,
                accept: tuple[int, ...] = (), query: dict[str, Any] | None = None) -> Call:
    """Images as repeated multipart ``image`` parts plus a ``params`` JSON field; no images: a JSON body.

    (A multipart body needs at least one file with httpx; the service takes ``{"params": ...}`` JSON
    wherever images are optional.)
    """
    parts: list[tuple[str, tuple[str, bytes, str]]] = [
        ("image", encode_image(im, i)) for i, im in enumerate(as_image_list(images))]
    if zip_file is not None:
        name, data, _ = encode_image(zip_file)
        if sniff_media_type(data)[0] != "application/zip":
            raise ValueError("zip must be a ZIP archive (a path, bytes or a binary file)")
        parts.append(("zip", (name if name.endswith(".zip") else "images.zip", data, "application/zip")))
    body = json.dumps(dict(params), separators=(",", ":"))
    if parts:
        return Call(method, path, params=query, files=parts, data={"params": body}, headers=dict(headers or {}),
                    replayable=replayable, accept=accept)
    return Call(method, path, params=query, json={"params": dict(params)}, headers=dict(headers or {}),
                replayable=replayable, accept=accept)


# ---- operations: catalog, predict, explain, inspect ----------------------------------------------------


def models(state: State) -> Op[list[ModelSummary]]:
    body = (yield from send(state, Call("GET", "/v1/models"))).json()
    state.default_model = state.default_model or body.get("default")
    return [ModelSummary.from_json(m) for m in body.get("models") or []]


def resolve_model(state: State, model: str | None) -> Op[str]:
    """The model to use: the one asked for, else the service's default (asked once, then cached)."""
    if model:
        return model
    if state.default_model is None:
        yield from models(state)
    if not state.default_model:
        raise ProblemError(404, "about:blank", "The service has no default model")
    return state.default_model


def model(state: State, name: str | None) -> Op[ModelDetail]:
    name = yield from resolve_model(state, name)
    resp = yield from send(state, Call("GET", f"/v1/models/{seg(name)}"))
    return ModelDetail.from_json(resp.json())


def methods(state: State) -> Op[MethodList]:
    return MethodList.from_json((yield from send(state, Call("GET", "/v1/methods"))).json())


def predict(state: State, images: Any, model_name: str | None, params: dict[str, Any]) -> Op[PredictResult]:
    name = yield from resolve_model(state, model_name)
    resp = yield from send(state, upload_call("POST", f"/v1/models/{seg(name)}/predict", images, params))
    data = resp.json()
    if "input_kind" in data:  # a signal or volume model: files in, one entry per file out
        return NdPredictResult.from_json(data)  # type: ignore[return-value]
    return PredictResult.from_json(data)


def explain(state: State, images: Any, method: str, model_name: str | None, params: dict[str, Any],
            respond_async: bool, job_timeout: float | None) -> Op[ExplainResult]:
    """Inline when the service answers 200; a 202 hand-off is followed to the job's result.

    The request carries an Idempotency-Key: should it become a job, a retried request (after a
    lost connection) joins the same job instead of starting a second one.
    """
    name = yield from resolve_model(state, model_name)
    headers = {"Idempotency-Key": str(uuid.uuid4())}
    if respond_async:
        headers["Prefer"] = "respond-async"
    call = upload_call("POST", f"/v1/models/{seg(name)}/explain/{seg(method)}", images, params, headers=headers,
                       accept=(202,))
    resp = yield from send(state, call)
    if resp.status_code != 202:
        data = resp.json()
        if "input_kind" in data:  # a signal or volume model: maps on each file's own grid
            return NdExplainResult.from_json(data)  # type: ignore[return-value]
        return ExplainResult.from_json(data)
    status = JobStatus.from_json(resp.json())
    log.info("explanation %s on %s became job %s; following it", method, name, status.id)
    final = yield from wait_job(state, status.id, job_timeout)
    if not final.succeeded:
        raise JobFailedError(final)
    result = yield from job_result(state, final.id)
    return result.explanation(job_id=final.id)


def inspect(state: State, view: str, images: Any, model_name: str | None,
            params: dict[str, Any]) -> Op[InspectResult]:
    name = yield from resolve_model(state, model_name)
    resp = yield from send(state, upload_call("POST", f"/v1/models/{seg(name)}/inspect/{seg(view)}", images, params))
    return InspectResult.from_json(view, resp.json())


# ---- operations: jobs ------------------------------------------------------------------------------------


def submit(state: State, job_type: str, images: Any, model_name: str | None, params: dict[str, Any],
           idempotency_key: str | None) -> Op[JobStatus]:
    """``POST /v1/jobs`` with ``{type, model, params}``; one Idempotency-Key per logical submit.

    Retries (503 queue full, 429, a dropped connection) resend the same key, so the service starts
    the job at most once however many tries it took.
    """
    envelope: dict[str, Any] = {"type": job_type, "params": params}
    if model_name:
        envelope["model"] = model_name
    headers = {"Idempotency-Key": idempotency_key or str(uuid.uuid4())}
    resp = yield from send(state, upload_call("POST", "/v1/jobs", images, envelope, headers=headers))
    status = JobStatus.from_json(resp.json())
    log.info("job %s (%s) submitted: %s%s", status.id, job_type, status.status,
             " (replayed)" if resp.headers.get("idempotent-replayed") else "")
    return status


def job_status(state: State, job_id: str, wait_s: float = 0.0) -> Op[JobStatus]:
    wait_s = min(max(wait_s, 0.0), MAX_SERVER_WAIT_S)
    call = Call("GET", f"/v1/jobs/{seg(job_id)}", params={"wait": round(wait_s, 3)} if wait_s > 0 else None,
                extra_read_s=wait_s)
    return JobStatus.from_json((yield from send(state, call)).json())


def wait_job(state: State, job_id: str, timeout: float | None, on_status: Callable[[JobStatus], None] | None = None,
             poll_s: float = MAX_SERVER_WAIT_S) -> Op[JobStatus]:
    """Until the job is done: long polls (the server answers at once when it finishes).

    With ``on_status`` (a progress bar) the polls are short, so progress is seen as it happens.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        wait_s = poll_s if deadline is None else max(0.0, min(poll_s, deadline - time.monotonic()))
        status = yield from job_status(state, job_id, wait_s)
        if on_status is not None:
            on_status(status)
        if status.done:
            return status
        if deadline is not None and time.monotonic() >= deadline:
            raise JobTimeoutError(status, timeout or 0.0)
        if wait_s <= 0:
            yield Sleep(0.2)


def _artifact(resp: httpx.Response, name: str) -> Artifact:
    media = resp.headers.get("content-type", "application/octet-stream").split(";")[0].strip()
    return Artifact(name=name, media_type=media, content=resp.content)


def job_result(state: State, job_id: str) -> Op[Artifact]:
    resp = yield from send(state, Call("GET", f"/v1/jobs/{seg(job_id)}/result"))
    return _artifact(resp, "result")


def job_artifact(state: State, job_id: str, name: str) -> Op[Artifact]:
    if name.startswith("/"):  # an href from JobStatus.previews / .artifacts
        name = name.rstrip("/").rsplit("/", 1)[-1]
    resp = yield from send(state, Call("GET", f"/v1/jobs/{seg(job_id)}/artifacts/{seg(name)}"))
    return _artifact(resp, name)


def cancel_job(state: State, job_id: str) -> Op[JobStatus]:
    return JobStatus.from_json((yield from send(state, Call("DELETE", f"/v1/jobs/{seg(job_id)}"))).json())


def list_jobs(state: State, status: str | None, limit: int) -> Op[list[JobStatus]]:
    query: dict[str, Any] = {"limit": limit}
    if status:
        query["status"] = status
    body = (yield from send(state, Call("GET", "/v1/jobs", params=query))).json()
    return [JobStatus.from_json(j) for j in body.get("jobs") or []]


# ---- operations: collections, styles, embedders ------------------------------------------------------------


def create_collection(state: State, images: Any, zip_file: Any, labels: list[str] | None,
                      boxes: list[list[Sequence[int]]] | None = None) -> Op[Collection]:
    params: dict[str, Any] = {"labels": list(labels)} if labels is not None else {}
    if boxes is not None:
        params["boxes"] = [[list(b) for b in row] for row in boxes]
    if images is None and zip_file is None:
        raise ValueError("give images and/or a zip archive")
    # Not replayable after a dropped connection: the service has no idempotency for collections.
    call = upload_call("POST", "/v1/collections", images, params, zip_file=zip_file, replayable=False)
    return Collection.from_json((yield from send(state, call)).json())


def get_collection(state: State, cid: str) -> Op[Collection]:
    return Collection.from_json((yield from send(state, Call("GET", f"/v1/collections/{seg(cid)}"))).json())


def delete_collection(state: State, cid: str) -> Op[None]:
    yield from send(state, Call("DELETE", f"/v1/collections/{seg(cid)}"))
    return None


def identify(state: State, cid: str, image: Any, model_name: str | None,
             params: dict[str, Any]) -> Op[IdentifyResult]:
    query = {"model": model_name} if model_name else None
    call = upload_call("POST", f"/v1/collections/{seg(cid)}/identify", [image], params, query=query)
    return IdentifyResult.from_json((yield from send(state, call)).json())


def evaluate_params(collection_id: str, methods: Sequence[str | Mapping[str, Any]],
                    params: dict[str, Any]) -> dict[str, Any]:
    """An evaluate job's params: each method a name or ``{"method", "params", "name"}``."""
    entries = [{"method": m} if isinstance(m, str) else dict(m) for m in methods]
    return {"collection": collection_id, "methods": entries, **params}


PLURAL = {"style": "styles", "embedder": "embedders", "verifier": "verifiers"}


def list_trained(state: State, kind: str) -> Op[list[TrainedInfo]]:
    body = (yield from send(state, Call("GET", f"/v1/{PLURAL[kind]}"))).json()
    return [TrainedInfo.from_json(t) for t in body.get("items") or []]


def get_trained(state: State, kind: str, name: str) -> Op[TrainedInfo]:
    return TrainedInfo.from_json((yield from send(state, Call("GET", f"/v1/{PLURAL[kind]}/{seg(name)}"))).json())


def delete_trained(state: State, kind: str, name: str) -> Op[None]:
    yield from send(state, Call("DELETE", f"/v1/{PLURAL[kind]}/{seg(name)}"))
    return None


def apply_style(state: State, name: str, image: Any, params: dict[str, Any]) -> Op[StyleResult]:
    resp = yield from send(state, upload_call("POST", f"/v1/styles/{seg(name)}/apply", [image], params))
    return StyleResult.from_json(resp.json())
