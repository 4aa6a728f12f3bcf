"""The explain job: any explanation method, run on a worker when it is too costly to answer inline.

It calls the very function the inline route calls (:func:`service.explaining.run_explanation`),
imported lazily: rendering and answer shaping live in ``service``, and copying them here would let
the two answers drift apart. Only this job function reaches into ``service``; the rest of
``workers`` stays free of it.
"""

from __future__ import annotations

import base64
import logging
from typing import Any

from ..runtime import JobContext, execute

log = logging.getLogger(__name__)


def _explain(ctx: JobContext) -> None:
    from service.explaining import run_explanation
    from service.imaging import decode_image
    from service.schemas.explain import params_model

    params = ctx.spec.get("params") or {}
    method = params["method"]
    explain_params = params_model(method).model_validate(params.get("explain") or {})
    model = ctx.model()
    images = [decode_image(b) for b in ctx.inputs()]
    ctx.progress(0, 1, "explaining", message=f"{method} on {len(images)} image(s)")
    if ctx.cancelled():
        from cnnviz.synthesis import Cancelled

        raise Cancelled("canceled before the explanation started")
    answer = run_explanation(model, method, images, explain_params)
    for img in answer.images:
        for t, exp in enumerate(img.explanations):
            if exp.overlay_png:
                ctx.put(f"overlay-{img.index}-{t}.png", base64.b64decode(exp.overlay_png), "image/png")
            if exp.heatmap_png:
                ctx.put(f"heatmap-{img.index}-{t}.png", base64.b64decode(exp.heatmap_png), "image/png")
    ctx.put("result.json", answer.model_dump_json().encode(), "application/json")
    ctx.progress(1, 1, "done")
    ctx.succeed("result.json")


def run(job_id: str, prefix: str) -> dict[str, Any]:
    """rq entry point for ``type: explain``."""
    return execute(job_id, prefix, _explain)
