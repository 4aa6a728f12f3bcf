"""The synchronous client: :class:`Client` and its :class:`Job` handles.

All behaviour lives in :mod:`cnnviz_client._core` operations; this module only drives them over
``httpx.Client`` (see :meth:`Client._drive`), so it stays in step with :mod:`cnnviz_client.aio`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

import httpx

from . import _core as ops
from ._core import DEFAULT_URL, Call, Op, RetryPolicy, Sleep, State
from ._images import ImageInput
from ._progress import ProgressBar
from ._sse import EventCursor
from .types import (
    Artifact,
    Collection,
    Event,
    ExplainResult,
    IdentifyResult,
    InspectResult,
    JobStatus,
    MethodList,
    ModelDetail,
    ModelSummary,
    PredictResult,
    StyleResult,
    TrainedInfo,
)

__all__ = ["Client", "Job"]

log = logging.getLogger("cnnviz_client")
T = TypeVar("T")
SSE_MIN_READ_S = 30.0  # the service sends a keepalive every 10 s on a quiet stream


def _retry_policy(retry: RetryPolicy | int | None) -> RetryPolicy:
    if isinstance(retry, RetryPolicy):
        return retry
    return RetryPolicy() if retry is None else RetryPolicy(attempts=max(1, int(retry) + 1))


def _headers(api_key: str | None, headers: Mapping[str, str] | None) -> dict[str, str]:
    from . import __version__

    out = {"User-Agent": f"cnnviz-client/{__version__}", "Accept": "application/json, application/problem+json"}
    out.update(headers or {})
    if api_key:
        out["X-API-Key"] = api_key
    return out


class Client:
    """A cnnviz service at ``base_url``.

    ``api_key`` is sent as ``X-API-Key`` (a service with keys configured needs it on every /v1
    route, and shows each key only its own jobs). ``timeout`` is httpx's (seconds or an
    ``httpx.Timeout``); long polls and event streams extend the read part on their own.
    ``retry``: a :class:`RetryPolicy`, or the number of retries after the first try (0: none).
    ``job_timeout`` bounds how long :meth:`explain` follows a 202 hand-off (None: until done).
    ``transport`` is passed to httpx (tests, proxies, mounts). Use it as a context manager, or
    call :meth:`close`, to release the connection pool.
    """

    def __init__(self, base_url: str = DEFAULT_URL, api_key: str | None = None,
                 timeout: float | httpx.Timeout = 60.0, *, retry: RetryPolicy | int | None = None,
                 default_model: str | None = None, job_timeout: float | None = None,
                 headers: Mapping[str, str] | None = None, transport: httpx.BaseTransport | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.job_timeout = job_timeout
        self._state = State(_retry_policy(retry), default_model)
        self._http = httpx.Client(base_url=self.base_url, headers=_headers(api_key, headers), timeout=timeout,
                                  transport=transport)

    # ---- plumbing --------------------------------------------------------------------------------

    @property
    def retry(self) -> RetryPolicy:
        return self._state.retry

    def _request(self, call: Call) -> httpx.Request:
        timeout: Any = httpx.USE_CLIENT_DEFAULT
        if call.extra_read_s:
            timeout = ops.extend_timeout(self._http.timeout, call.extra_read_s)
        return self._http.build_request(call.method, call.path, params=call.params, json=call.json,
                                        files=call.files, data=call.data, headers=call.headers, timeout=timeout)

    def _drive(self, op: Op[T]) -> T:
        """Run an operation: send what it yields, sleep when it asks, hand back answers and errors."""
        try:
            step = next(op)
            while True:
                if isinstance(step, Sleep):
                    time.sleep(step.seconds)
                    step = op.send(None)
                    continue
                try:
                    resp = self._http.send(self._request(step))
                except httpx.TransportError as exc:
                    step = op.throw(exc)
                    continue
                step = op.send(resp)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # ---- catalog ---------------------------------------------------------------------------------

    def models(self) -> list[ModelSummary]:
        """The model catalog (the default one has ``default=True``)."""
        return self._drive(ops.models(self._state))

    def model(self, name: str | None = None) -> ModelDetail:
        """One model: input size, labels, layers with output shapes, the default target layer."""
        return self._drive(ops.model(self._state, name))

    def methods(self) -> MethodList:
        """Every explain method and job type with its parameter JSON schema and cost hint."""
        return self._drive(ops.methods(self._state))

    # ---- inline calls -----------------------------------------------------------------------------

    def predict(self, image: ImageInput | Sequence[ImageInput], model: str | None = None, *,
                params: Mapping[str, Any] | None = None, **kwargs: Any) -> PredictResult:
        """Top-k classes of one image or several (``top_k``, ``resolution``, ``resize``)."""
        return self._drive(ops.predict(self._state, image, model, ops.merge_params(params, kwargs)))

    def explain(self, image_or_images: ImageInput | Sequence[ImageInput], method: str, model: str | None = None, *,
                respond_async: bool = False, job_timeout: float | None = None,
                params: Mapping[str, Any] | None = None, **kwargs: Any) -> ExplainResult:
        """Explanation maps per image and target (``target``/``top_k``/``layer``/``output``/...).

        CAM-family methods take ``layers`` (a list of layer names, or ``"blocks"``): every layer's map
        from one request, in each explanation's ``layers``; with ``output={"figure": True}`` the figure is
        the captioned row of their overlays.

        When the service hands the request off to a job (its cost is over the inline budget, or
        ``respond_async=True`` sent ``Prefer: respond-async``) this follows the job and returns its
        result, so the caller gets the same :class:`ExplainResult` either way (``job_id`` set).
        Raises :class:`JobFailedError` if that job fails, :class:`JobTimeoutError` after
        ``job_timeout`` seconds (default: the client's ``job_timeout``).
        """
        return self._drive(ops.explain(self._state, image_or_images, method, model, ops.merge_params(params, kwargs),
                                       respond_async, job_timeout if job_timeout is not None else self.job_timeout))

    def inspect(self, view: str, images: ImageInput | Sequence[ImageInput] | None = None, model: str | None = None,
                *, params: Mapping[str, Any] | None = None, **kwargs: Any) -> InspectResult:
        """An inline view of the network: ``filters``, ``activations``, ``embed``, ``verify``, ``invariance``."""
        return self._drive(ops.inspect(self._state, view, images, model, ops.merge_params(params, kwargs)))

    # ---- jobs ----------------------------------------------------------------------------------------

    def submit(self, job_type: str, images: ImageInput | Sequence[ImageInput] | None = None,
               model: str | None = None, *, idempotency_key: str | None = None,
               params: Mapping[str, Any] | None = None, **kwargs: Any) -> Job:
        """Queue a job (``deepdream``, ``class_viz``, ``style``, ``explain``, ``collection``, ...).

        Keyword arguments are the job's parameters (see :meth:`methods`). An Idempotency-Key is
        generated per call (or given) and reused by every retry of it, so a retried submit never
        starts the job twice; giving the same key again returns the same job.
        """
        status = self._drive(ops.submit(self._state, job_type, images, model, ops.merge_params(params, kwargs),
                                        idempotency_key))
        return Job(self, status)

    def job(self, job_id: str) -> Job:
        """A handle on an existing job (no request is made)."""
        return Job(self, job_id)

    def jobs(self, status: str | None = None, limit: int = 50) -> list[JobStatus]:
        """Your own jobs, newest first, optionally only those in one ``status``."""
        return self._drive(ops.list_jobs(self._state, status, limit))

    # ---- collections ------------------------------------------------------------------------------

    def create_collection(self, images: ImageInput | Sequence[ImageInput] | None = None, *, zip: Any = None,
                          labels: Sequence[str] | None = None,
                          boxes: Sequence[Sequence[Sequence[int]]] | None = None) -> Collection:
        """Upload a set of images (and/or a ZIP of them), with optional labels and boxes in image order.

        ``boxes``: per image a list of (x0, y0, x1, y1) in the image's pixels ([] for none), for the
        pointing games of :meth:`evaluate`.
        """
        return self._drive(ops.create_collection(self._state, images, zip, list(labels) if labels else None,
                                                 [list(r) for r in boxes] if boxes is not None else None))

    def evaluate(self, collection_id: str, methods: Sequence[str | Mapping[str, Any]], model: str | None = None,
                 *, params: Mapping[str, Any] | None = None, **kwargs: Any) -> Job:
        """Queue an ``evaluate`` job: which of ``methods`` can be trusted on a labelled collection.

        Each method is a name or ``{"method": ..., "params": {...}, "name": ...}``; keyword arguments
        are the job's other parameters (``classes``, ``steps``, ``randomization``, ``size``, ...).
        The job's ``result.json`` holds the summaries; ``grid.png`` and ``curves.png`` the pictures.
        """
        return self.submit("evaluate", None, model,
                           params=ops.evaluate_params(collection_id, methods, ops.merge_params(params, kwargs)))

    def collection(self, collection_id: str) -> Collection:
        return self._drive(ops.get_collection(self._state, collection_id))

    def delete_collection(self, collection_id: str) -> None:
        self._drive(ops.delete_collection(self._state, collection_id))

    def identify(self, collection_id: str, image: ImageInput, model: str | None = None, *,
                 params: Mapping[str, Any] | None = None, **kwargs: Any) -> IdentifyResult:
        """1:K identification of an image against a labelled collection (``head``, ``threshold``, ``k``, or
        ``verifier``: a trained verification head's probability)."""
        return self._drive(ops.identify(self._state, collection_id, image, model, ops.merge_params(params, kwargs)))

    # ---- trained networks ----------------------------------------------------------------------------

    def styles(self) -> list[TrainedInfo]:
        """Styles trained by your ``fast_style`` jobs."""
        return self._drive(ops.list_trained(self._state, "style"))

    def style(self, name: str) -> TrainedInfo:
        return self._drive(ops.get_trained(self._state, "style", name))

    def delete_style(self, name: str) -> None:
        self._drive(ops.delete_trained(self._state, "style", name))

    def apply_style(self, name: str, image: ImageInput, *, params: Mapping[str, Any] | None = None,
                    **kwargs: Any) -> StyleResult:
        """Stylize an image inline (``size``, ``strength``, ``preserve_color``)."""
        return self._drive(ops.apply_style(self._state, name, image, ops.merge_params(params, kwargs)))

    def embedders(self) -> list[TrainedInfo]:
        """Embedding heads trained by your ``triplet_head`` jobs (use them as ``head=`` in embed/verify/identify)."""
        return self._drive(ops.list_trained(self._state, "embedder"))

    def embedder(self, name: str) -> TrainedInfo:
        return self._drive(ops.get_trained(self._state, "embedder", name))

    def delete_embedder(self, name: str) -> None:
        self._drive(ops.delete_trained(self._state, "embedder", name))

    def verifiers(self) -> list[TrainedInfo]:
        """Verification heads trained by your ``verification_head`` jobs, each with its held-out accuracy beside
        the distance threshold's (use them as ``verifier=`` in verify and identify)."""
        return self._drive(ops.list_trained(self._state, "verifier"))

    def verifier(self, name: str) -> TrainedInfo:
        return self._drive(ops.get_trained(self._state, "verifier", name))

    def delete_verifier(self, name: str) -> None:
        self._drive(ops.delete_trained(self._state, "verifier", name))


class Job:
    """A job of the service: poll it, follow its events, wait for it, fetch its result, cancel it.

    ``last_status`` is the newest status this handle has seen; ``last_event_id`` the id of the
    newest event, where :meth:`events` resumes.
    """

    def __init__(self, client: Client, job: JobStatus | str) -> None:
        self.client = client
        self.last_status: JobStatus | None = job if isinstance(job, JobStatus) else None
        self.id: str = job.id if isinstance(job, JobStatus) else job
        self.last_event_id: str | None = None

    def __repr__(self) -> str:
        state = self.last_status.status if self.last_status else "?"
        return f"Job({self.id!r}, {state})"

    def _seen(self, status: JobStatus) -> JobStatus:
        self.last_status = status
        return status

    def status(self, wait: float = 0.0) -> JobStatus:
        """Status and progress now; with ``wait`` the service holds the answer until the job ends (<= 30 s)."""
        return self._seen(self.client._drive(ops.job_status(self.client._state, self.id, wait)))

    def wait(self, timeout: float | None = None, progress: bool = False) -> JobStatus:
        """Block until the job is done and return its final status (whatever it is).

        ``progress=True`` draws a progress bar on stderr. Raises :class:`JobTimeoutError` after
        ``timeout`` seconds; the job goes on running.
        """
        bar = ProgressBar(self.id) if progress else None

        def seen(st: JobStatus) -> None:
            self._seen(st)
            if bar is not None:
                bar(st)

        try:
            return self.client._drive(ops.wait_job(self.client._state, self.id, timeout, seen,
                                                   poll_s=0.5 if progress else ops.MAX_SERVER_WAIT_S))
        finally:
            if bar is not None:
                bar.close()

    def result(self) -> Artifact:
        """The main result (PNG for synthesis jobs, JSON for explain and collection jobs); 409 if not done."""
        return self.client._drive(ops.job_result(self.client._state, self.id))

    def explanation(self) -> ExplainResult:
        """An explain job's result, typed."""
        return self.result().explanation(job_id=self.id)

    def artifact(self, name: str) -> Artifact:
        """One artifact by name (``result.json``, ``preview-00004.png``, ``overlay-0-0.png``) or href."""
        return self.client._drive(ops.job_artifact(self.client._state, self.id, name))

    def cancel(self) -> JobStatus:
        """Cancel: at once when queued, within a step when running; its artifacts are deleted."""
        return self._seen(self.client._drive(ops.cancel_job(self.client._state, self.id)))

    def events(self, last_event_id: str | None = None, *, from_start: bool = False) -> Iterator[Event]:
        """Server-sent events (``status``, ``progress``, ``preview``, ``metrics``, ``done``) until ``done``.

        Resumes after ``last_event_id`` (default: after the last event this handle has seen, or
        from the first event with ``from_start``); a dropped or ended stream is reconnected with
        ``Last-Event-ID``, so no event is lost or repeated.
        """
        start = None if from_start else (last_event_id or self.last_event_id)
        cursor = EventCursor(self.id, start, self.client.retry)
        http = self.client._http
        timeout = ops.extend_timeout(http.timeout, SSE_MIN_READ_S)
        while not cursor.done:
            call = cursor.call()
            try:
                with http.stream(call.method, call.path, headers=call.headers, timeout=timeout) as resp:
                    if resp.status_code != 200:
                        resp.read()
                        time.sleep(cursor.after_status(resp))
                        continue
                    for line in resp.iter_lines():
                        ev = cursor.feed(line)
                        if ev is not None:
                            self.last_event_id = cursor.last_id
                            yield ev
                            if cursor.done:
                                return
            except httpx.TransportError as exc:
                delay = cursor.after_drop(exc)
                log.info("event stream of job %s dropped (%s); resuming after %s", self.id, exc, cursor.last_id)
                time.sleep(delay)
                continue
            if not cursor.done:
                time.sleep(cursor.after_end())
