"""The evaluate job: which explanation method can be trusted on a labelled collection.

The request was checked at submission (``core.trusting.check_evaluate``); the worker checks it
again with the same function against the same model and collection (which may have expired
meanwhile), runs it with progress in forward passes and cancel within a chunk of a DELETE, and
stores ``result.json`` (the summaries and per-image numbers), ``grid.png`` (cascading
randomization) and ``curves.png`` (mean deletion / insertion curves).
"""

from __future__ import annotations

import logging
from typing import Any

from cnnviz.render import encode_png
from cnnviz.synthesis import Cancelled
from core.imaging import decode_rgb
from core.schemas.trust import EvaluateParams
from core.store.collections import CollectionStore
from core.trusting import check_evaluate, run_evaluation
from workers.runners.explain import engine_watch
from workers.runtime import JobContext, execute

log = logging.getLogger(__name__)


def _evaluate(ctx: JobContext) -> None:
    params = EvaluateParams.model_validate(ctx.spec.get("params") or {})
    store = CollectionStore(ctx.store.redis, ctx.store.prefix)
    rec = store.get(params.collection)
    if rec is None:
        raise RuntimeError(f"collection {params.collection} has expired or was deleted")
    model = ctx.model()
    checked = check_evaluate(model, params, rec)
    photos = [decode_rgb(b) for b in store.images(params.collection, int(rec["count"]))]
    sizes = rec.get("sizes")
    image_hw = [(int(h), int(w)) for h, w in sizes] if sizes else None
    total = max(2, round(checked.cost))
    ctx.progress(0, total, "evaluating", message=f"{len(checked.specs)} method(s) on {len(photos)} image(s)")
    if ctx.cancelled():
        raise Cancelled("canceled before the evaluation started")
    with engine_watch(ctx, total, "evaluating"):
        run = run_evaluation(model, checked, photos, list(rec["labels"]), rec.get("boxes"), image_hw)
    if run.grid is not None:
        ctx.put("grid.png", encode_png(run.grid), "image/png")
    ctx.put("curves.png", encode_png(run.curves), "image/png")
    ctx.put_json("result.json", run.result)
    ctx.progress(total, total, "done")
    ctx.succeed("result.json")


def run(job_id: str, prefix: str) -> dict[str, Any]:
    """rq entry point for ``type: evaluate``."""
    return execute(job_id, prefix, _evaluate)
