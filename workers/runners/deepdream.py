"""The DeepDream job: inputs from Redis -> :func:`cnnviz.synthesis.deep_dream` -> PNG + JSON artifacts."""

from __future__ import annotations

import logging
from typing import Any

from cnnviz.synthesis import Callbacks, DeepDreamConfig, deep_dream
from core.imaging import decode_rgb
from workers.runtime import JobContext, execute, png_bytes

log = logging.getLogger(__name__)


def _dream(ctx: JobContext) -> None:
    params: dict[str, Any] = dict(ctx.spec.get("params") or {})
    preview_every = int(params.pop("preview_every", 0) or 0)
    config = DeepDreamConfig(**params)
    model = ctx.model()
    inputs = ctx.inputs()
    image = decode_rgb(inputs[0]) if inputs else None
    callbacks = Callbacks(progress=lambda step, total, stage, obj: ctx.progress(step, total, stage, obj),
                          preview=ctx.preview, preview_every=preview_every, cancel=ctx.cancelled)
    ctx.progress(0, config.steps * config.octaves, "starting")
    result = deep_dream(model, image, config, callbacks)
    ctx.put("result.png", png_bytes(result.image), "image/png")
    ctx.put_json("result.json", {
        "model": model.name, "layer": result.layer, "octave_sizes": result.sizes,
        "width": int(result.image.shape[2]), "height": int(result.image.shape[1]),
        "objective": [round(v, 6) for v in result.objective], "config": {**params, "preview_every": preview_every},
    })
    ctx.succeed("result.png", layer=result.layer)


def run(job_id: str, prefix: str) -> dict[str, Any]:
    """rq entry point for ``type: deepdream``."""
    return execute(job_id, prefix, _dream)
