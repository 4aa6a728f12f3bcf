"""Optimization jobs (class/channel visualization, adversarial, inversion, textures, style): one runner.

Each engine method is one function taking the model, its input images and keyword parameters,
and returning a dataclass whose ``image`` is the main result. The job type's registry entry
(:mod:`core.jobtypes`) names that function and which arguments its images fill; every ``[3,H,W]`` tensor of the
result becomes a PNG artifact and everything else goes into ``result.json`` (the objective
history included, so a client sees the run converge).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import torch

from cnnviz.synthesis import Callbacks
from core.imaging import decode_rgb
from core.jobtypes import JOB_TYPES
from workers.runtime import JobContext, execute, png_bytes

log = logging.getLogger(__name__)


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist() if value.numel() <= 64 else None
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, float):
        return round(value, 6)
    return value


def run_synthesis(ctx: JobContext) -> None:
    job_type = ctx.spec["type"]
    spec = JOB_TYPES[job_type]
    assert spec.engine is not None, f"{job_type} has no engine function"
    params: dict[str, Any] = dict(ctx.spec.get("params") or {})
    preview_every = int(params.pop("preview_every", 0) or 0)
    model = ctx.model()
    images = [decode_rgb(b) for b in ctx.inputs()]
    kwargs = {**params, **dict(zip(spec.image_args, images, strict=False))}
    total = int(params.get(spec.steps_param) or 1) if spec.steps_param else 1
    callbacks = Callbacks(progress=lambda step, tot, stage, obj: ctx.progress(step, tot, stage, obj),
                          preview=ctx.preview, preview_every=preview_every, cancel=ctx.cancelled)
    ctx.progress(0, total, "starting")
    result = spec.engine(model, callbacks=callbacks, **kwargs)
    pictures: list[str] = []
    summary: dict[str, Any] = {"model": model.name, "type": job_type, "params": {**params,
                                                                              "preview_every": preview_every}}
    for f in dataclasses.fields(result):
        value = getattr(result, f.name)
        if isinstance(value, torch.Tensor) and value.dim() == 3 and value.shape[0] == 3:
            name = f"{f.name}.png"
            ctx.put(name, png_bytes(value), "image/png")
            pictures.append(name)
        else:
            summary[f.name] = _jsonable(value)
    summary["pictures"] = pictures
    ctx.put_json("result.json", summary)
    ctx.progress(total, total, "done")
    ctx.succeed("image.png" if "image.png" in pictures else "result.json")


def run(job_id: str, prefix: str) -> dict[str, Any]:
    """rq entry point for every optimization job type."""
    return execute(job_id, prefix, run_synthesis)
