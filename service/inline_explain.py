"""Answering a checked explain request inline: admitted by the batcher, computed off the event loop.

The explain route calls :class:`InlineExplainer` (a dependency, ``service.deps.InlineDep``) for a
request it does not hand to a job (:mod:`service.submission`). Each answer is admitted by the
batcher, which bounds the inline computations of this process (503 ``inline-busy`` past it) and
gathers concurrent requests into one engine call; the work runs in the thread pool, the torch work
around the engine on the compute lanes (core/lanes.py).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool

from cnnviz.models import LoadedModel
from core.batching import ExplainBatcher
from core.compiled import CompiledForwards
from core.errors import Invalid
from core.explaining import CheckedExplain, Sink, run_explanation
from core.lanes import ComputeLanes
from core.png_answer import png_answer
from core.schemas.explain import ExplainResponse
from core.settings import Settings
from service.job_client import JobClient
from service.uploads import Upload


@dataclass(frozen=True)
class InlineExplainer:
    """What an inline answer runs on: the batcher, the compute lanes, the compiled forwards."""

    batcher: ExplainBatcher
    lanes: ComputeLanes
    compiled: CompiledForwards

    def _start(self, model: LoadedModel, request: CheckedExplain, budget: float) -> None:
        if request.cost > budget:
            raise Invalid("over-inline-budget", "This request is too expensive to answer inline",
                          f"estimated {request.cost:.0f} forward passes, inline budget {budget:.0f}",
                          estimate=request.cost, budget=budget)
        self.compiled.ensure(model)  # a model's first request starts its background compile (core/compiled.py)

    async def png(self, model: LoadedModel, request: CheckedExplain, upload: Upload,
                  settings: Settings) -> tuple[bytes, dict[str, str]]:
        """The ``Accept: image/png`` answer: the picture and its headers (:data:`core.png_answer.PNG_HEADERS`)."""
        self._start(model, request, settings.inline_budget)
        with self.batcher.admit() as ticket:
            return await run_in_threadpool(png_answer, model, request.method, upload.images, request.params,
                                           ticket.engine, self.lanes.run)

    async def answer(self, model: LoadedModel, request: CheckedExplain, upload: Upload, settings: Settings,
                     jobs: JobClient | None, owner: str) -> ExplainResponse:
        """The JSON answer; with ``output.inline: false`` its pictures are stored as links (needs ``jobs``).

        The pictures are artifacts of a synthetic finished job of the caller's: the same TTL and
        owner check as a job's. Without a job store, :func:`core.explaining.run_explanation`
        refuses ``output.inline: false`` before computing.
        """
        self._start(model, request, settings.inline_budget)
        stored: list[tuple[str, bytes, str]] = []
        answer_id = uuid.uuid4().hex
        sink: Sink | None = None
        if not request.params.output.inline and jobs is not None:
            def sink(name: str, data: bytes, media_type: str) -> str:
                stored.append((name, data, media_type))
                return f"/v1/jobs/{answer_id}/artifacts/{name}"

        with self.batcher.admit() as ticket:
            answer = await run_in_threadpool(run_explanation, model, request.method, upload.images, request.params,
                                             upload.decode_ms, sink, engine=ticket.engine, lane=self.lanes.run)
        if sink is not None and jobs is not None:
            with jobs.guard():
                await run_in_threadpool(jobs.store.put_answer_artifacts, answer_id, owner, "explain", model.name,
                                        stored, settings.artifact_ttl_s, settings.result_ttl_s)
        return answer
