"""The explain job: any explanation method, run on a worker when it is too costly to answer inline.

It calls the very function the inline route calls (:func:`core.explaining.run_explanation`), so
the inline answer and the job's ``result.json`` cannot drift apart.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from cnnviz.progress import reporting
from cnnviz.synthesis import Cancelled
from core.explaining import estimate_cost, run_explanation
from core.imaging import decode_image
from core.schemas.explain import params_model
from workers.runtime import JobContext, execute

log = logging.getLogger(__name__)


CANCEL_CHECK_S = 0.25


@contextmanager
def engine_watch(ctx: JobContext, total: int, stage: str) -> Iterator[None]:
    """Progress and cancellation for methods that know nothing of jobs.

    Every loop of the engine that can run long reports each finished chunk to
    :func:`cnnviz.progress.checkpoint`, in the cost estimate's unit (forward passes of one image at
    the model's input size, a backward about two): the running sum rises toward ``total`` (held one
    short of it until the answer is stored) and the cancel flag is read a few times a second, so a
    running explanation stops within one chunk of a DELETE, whichever network the method runs (the
    served module, the gradient family's folded copy, the incremental occlusion graph).
    """
    done = 0.0
    last_check = time.monotonic()

    def on_chunk(work: float) -> None:
        nonlocal done, last_check
        done += work
        ctx.progress(min(int(done), total - 1), total, stage)
        now = time.monotonic()
        if now - last_check >= CANCEL_CHECK_S:
            last_check = now
            if ctx.cancelled():
                raise Cancelled("canceled while explaining")

    with reporting(on_chunk):
        yield


def _explain(ctx: JobContext) -> None:
    params = ctx.spec.get("params") or {}
    method = params["method"]
    explain_params = params_model(method).model_validate(params.get("explain") or {})
    if "format" not in explain_params.output.model_fields_set:
        # Job pictures are files a client downloads one by one: lossless unless asked otherwise.
        explain_params.output.format = "png"
    model = ctx.model()
    images = [decode_image(b) for b in ctx.inputs()]
    # Progress in the cost estimate's unit (forward-pass equivalents); the last step is exact.
    total = max(2, round(estimate_cost(model, method, explain_params, len(images))))
    ctx.progress(0, total, "explaining", message=f"{method} on {len(images)} image(s)")
    if ctx.cancelled():
        raise Cancelled("canceled before the explanation started")

    def sink(name: str, data: bytes, media_type: str) -> str:  # output.inline false: the job's own artifacts
        ctx.put(name, data, media_type)
        return f"/v1/jobs/{ctx.id}/artifacts/{name}"

    with engine_watch(ctx, total, "explaining"):
        answer = run_explanation(model, method, images, explain_params, sink=sink)
    ext = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}
    for img in answer.images:
        for t, exp in enumerate(img.explanations):
            for kind, b64 in (("overlay", exp.overlay_png), ("heatmap", exp.heatmap_png), ("figure", exp.figure_png)):
                if b64 and exp.media_type:
                    ctx.put(f"{kind}-{img.index}-{t}.{ext[exp.media_type]}", base64.b64decode(b64), exp.media_type)
    ctx.put("result.json", answer.model_dump_json().encode(), "application/json")
    ctx.progress(total, total, "done")
    ctx.succeed("result.json")


def run(job_id: str, prefix: str) -> dict[str, Any]:
    """rq entry point for ``type: explain``."""
    return execute(job_id, prefix, _explain)
