"""The asyncio client: :class:`AsyncClient` and :class:`AsyncJob`, the same surface as the sync ones.

The operations are those of :mod:`cnnviz_client._core`, driven over ``httpx.AsyncClient`` with
``asyncio.sleep``; see :class:`cnnviz_client.Client` for what each call does.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

import httpx

from . import _core as ops
from ._core import DEFAULT_URL, Call, Op, RetryPolicy, Sleep, State
from ._images import ImageInput
from ._progress import ProgressBar
from ._sse import EventCursor
from .client import SSE_MIN_READ_S, _headers, _retry_policy
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

__all__ = ["AsyncClient", "AsyncJob"]

log = logging.getLogger("cnnviz_client")
T = TypeVar("T")


class AsyncClient:
    """The asyncio twin of :class:`cnnviz_client.Client` (same arguments, same methods, awaited)."""

    def __init__(self, base_url: str = DEFAULT_URL, api_key: str | None = None,
                 timeout: float | httpx.Timeout = 60.0, *, retry: RetryPolicy | int | None = None,
                 default_model: str | None = None, job_timeout: float | None = None,
                 headers: Mapping[str, str] | None = None,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.job_timeout = job_timeout
        self._state = State(_retry_policy(retry), default_model)
        self._http = httpx.AsyncClient(base_url=self.base_url, headers=_headers(api_key, headers), timeout=timeout,
                                       transport=transport)

    @property
    def retry(self) -> RetryPolicy:
        return self._state.retry

    def _request(self, call: Call) -> httpx.Request:
        timeout: Any = httpx.USE_CLIENT_DEFAULT
        if call.extra_read_s:
            timeout = ops.extend_timeout(self._http.timeout, call.extra_read_s)
        return self._http.build_request(call.method, call.path, params=call.params, json=call.json,
                                        files=call.files, data=call.data, headers=call.headers, timeout=timeout)

    async def _drive(self, op: Op[T]) -> T:
        """As :meth:`Client._drive`, awaiting the sends and sleeps."""
        try:
            step = next(op)
            while True:
                if isinstance(step, Sleep):
                    await asyncio.sleep(step.seconds)
                    step = op.send(None)
                    continue
                try:
                    resp = await self._http.send(self._request(step))
                except httpx.TransportError as exc:
                    step = op.throw(exc)
                    continue
                step = op.send(resp)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    # ---- catalog ---------------------------------------------------------------------------------

    async def models(self) -> list[ModelSummary]:
        return await self._drive(ops.models(self._state))

    async def model(self, name: str | None = None) -> ModelDetail:
        return await self._drive(ops.model(self._state, name))

    async def methods(self) -> MethodList:
        return await self._drive(ops.methods(self._state))

    # ---- inline calls -----------------------------------------------------------------------------

    async def predict(self, image: ImageInput | Sequence[ImageInput], model: str | None = None, *,
                      params: Mapping[str, Any] | None = None, **kwargs: Any) -> PredictResult:
        return await self._drive(ops.predict(self._state, image, model, ops.merge_params(params, kwargs)))

    async def explain(self, image_or_images: ImageInput | Sequence[ImageInput], method: str,
                      model: str | None = None, *, respond_async: bool = False, job_timeout: float | None = None,
                      params: Mapping[str, Any] | None = None, **kwargs: Any) -> ExplainResult:
        """See :meth:`Client.explain`: a 202 hand-off is followed to the job's result."""
        return await self._drive(ops.explain(self._state, image_or_images, method, model,
                                             ops.merge_params(params, kwargs), respond_async,
                                             job_timeout if job_timeout is not None else self.job_timeout))

    async def inspect(self, view: str, images: ImageInput | Sequence[ImageInput] | None = None,
                      model: str | None = None, *, params: Mapping[str, Any] | None = None,
                      **kwargs: Any) -> InspectResult:
        return await self._drive(ops.inspect(self._state, view, images, model, ops.merge_params(params, kwargs)))

    # ---- jobs ----------------------------------------------------------------------------------------

    async def submit(self, job_type: str, images: ImageInput | Sequence[ImageInput] | None = None,
                     model: str | None = None, *, idempotency_key: str | None = None,
                     params: Mapping[str, Any] | None = None, **kwargs: Any) -> AsyncJob:
        """See :meth:`Client.submit` (one Idempotency-Key per call, reused by its retries)."""
        status = await self._drive(ops.submit(self._state, job_type, images, model, ops.merge_params(params, kwargs),
                                              idempotency_key))
        return AsyncJob(self, status)

    def job(self, job_id: str) -> AsyncJob:
        return AsyncJob(self, job_id)

    async def jobs(self, status: str | None = None, limit: int = 50) -> list[JobStatus]:
        return await self._drive(ops.list_jobs(self._state, status, limit))

    # ---- collections ------------------------------------------------------------------------------

    async def create_collection(self, images: ImageInput | Sequence[ImageInput] | None = None, *, zip: Any = None,
                                labels: Sequence[str] | None = None,
                                boxes: Sequence[Sequence[Sequence[int]]] | None = None) -> Collection:
        return await self._drive(ops.create_collection(self._state, images, zip, list(labels) if labels else None,
                                                       [list(r) for r in boxes] if boxes is not None else None))

    async def evaluate(self, collection_id: str, methods: Sequence[str | Mapping[str, Any]], model: str | None = None,
                       *, params: Mapping[str, Any] | None = None, **kwargs: Any) -> AsyncJob:
        """See :meth:`Client.evaluate`."""
        return await self.submit("evaluate", None, model,
                                 params=ops.evaluate_params(collection_id, methods, ops.merge_params(params, kwargs)))

    async def collection(self, collection_id: str) -> Collection:
        return await self._drive(ops.get_collection(self._state, collection_id))

    async def delete_collection(self, collection_id: str) -> None:
        await self._drive(ops.delete_collection(self._state, collection_id))

    async def identify(self, collection_id: str, image: ImageInput, model: str | None = None, *,
                       params: Mapping[str, Any] | None = None, **kwargs: Any) -> IdentifyResult:
        return await self._drive(ops.identify(self._state, collection_id, image, model,
                                              ops.merge_params(params, kwargs)))

    # ---- trained networks ----------------------------------------------------------------------------

    async def styles(self) -> list[TrainedInfo]:
        return await self._drive(ops.list_trained(self._state, "style"))

    async def style(self, name: str) -> TrainedInfo:
        return await self._drive(ops.get_trained(self._state, "style", name))

    async def delete_style(self, name: str) -> None:
        await self._drive(ops.delete_trained(self._state, "style", name))

    async def apply_style(self, name: str, image: ImageInput, *, params: Mapping[str, Any] | None = None,
                          **kwargs: Any) -> StyleResult:
        return await self._drive(ops.apply_style(self._state, name, image, ops.merge_params(params, kwargs)))

    async def embedders(self) -> list[TrainedInfo]:
        return await self._drive(ops.list_trained(self._state, "embedder"))

    async def embedder(self, name: str) -> TrainedInfo:
        return await self._drive(ops.get_trained(self._state, "embedder", name))

    async def delete_embedder(self, name: str) -> None:
        await self._drive(ops.delete_trained(self._state, "embedder", name))

    async def verifiers(self) -> list[TrainedInfo]:
        return await self._drive(ops.list_trained(self._state, "verifier"))

    async def verifier(self, name: str) -> TrainedInfo:
        return await self._drive(ops.get_trained(self._state, "verifier", name))

    async def delete_verifier(self, name: str) -> None:
        await self._drive(ops.delete_trained(self._state, "verifier", name))


class AsyncJob:
    """The asyncio twin of :class:`cnnviz_client.Job`."""

    def __init__(self, client: AsyncClient, job: JobStatus | str) -> None:
        self.client = client
        self.last_status: JobStatus | None = job if isinstance(job, JobStatus) else None
        self.id: str = job.id if isinstance(job, JobStatus) else job
        self.last_event_id: str | None = None

    def __repr__(self) -> str:
        state = self.last_status.status if self.last_status else "?"
        return f"AsyncJob({self.id!r}, {state})"

    def _seen(self, status: JobStatus) -> JobStatus:
        self.last_status = status
        return status

    async def status(self, wait: float = 0.0) -> JobStatus:
        return self._seen(await self.client._drive(ops.job_status(self.client._state, self.id, wait)))

    async def wait(self, timeout: float | None = None, progress: bool = False) -> JobStatus:
        """See :meth:`Job.wait`."""
        bar = ProgressBar(self.id) if progress else None

        def seen(st: JobStatus) -> None:
            self._seen(st)
            if bar is not None:
                bar(st)

        try:
            return await self.client._drive(ops.wait_job(self.client._state, self.id, timeout, seen,
                                                         poll_s=0.5 if progress else ops.MAX_SERVER_WAIT_S))
        finally:
            if bar is not None:
                bar.close()

    async def result(self) -> Artifact:
        return await self.client._drive(ops.job_result(self.client._state, self.id))

    async def explanation(self) -> ExplainResult:
        return (await self.result()).explanation(job_id=self.id)

    async def artifact(self, name: str) -> Artifact:
        return await self.client._drive(ops.job_artifact(self.client._state, self.id, name))

    async def cancel(self) -> JobStatus:
        return self._seen(await self.client._drive(ops.cancel_job(self.client._state, self.id)))

    async def events(self, last_event_id: str | None = None, *, from_start: bool = False) -> AsyncIterator[Event]:
        """See :meth:`Job.events`: resumable with Last-Event-ID, reconnecting when the stream drops."""
        start = None if from_start else (last_event_id or self.last_event_id)
        cursor = EventCursor(self.id, start, self.client.retry)
        http = self.client._http
        timeout = ops.extend_timeout(http.timeout, SSE_MIN_READ_S)
        while not cursor.done:
            call = cursor.call()
            try:
                async with http.stream(call.method, call.path, headers=call.headers, timeout=timeout) as resp:
                    if resp.status_code != 200:
                        await resp.aread()
                        await asyncio.sleep(cursor.after_status(resp))
                        continue
                    async for line in resp.aiter_lines():
                        ev = cursor.feed(line)
                        if ev is not None:
                            self.last_event_id = cursor.last_id
                            yield ev
                            if cursor.done:
                                return
            except httpx.TransportError as exc:
                delay = cursor.after_drop(exc)
                log.info("event stream of job %s dropped (%s); resuming after %s", self.id, exc, cursor.last_id)
                await asyncio.sleep(delay)
                continue
            if not cursor.done:
                await asyncio.sleep(cursor.after_end())
