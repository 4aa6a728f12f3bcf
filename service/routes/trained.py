"""``/v1/styles`` and ``/v1/embedders``: networks trained by jobs, owned by the key that trained them.

A style is applied inline (``POST /v1/styles/{style}/apply``); an embedder is used by the embed,
verify and identify endpoints through their ``head`` parameter. Both are read from Redis by
:class:`workers.trained.TrainedStore`, which caches the built network per version in this process.
"""

from __future__ import annotations

import base64
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from fastapi import APIRouter, Depends, Path, Request, Response
from starlette.concurrency import run_in_threadpool
from torch import nn

from cnnviz.attribution import AttributionError
from cnnviz.attribution.base import validate_layer
from cnnviz.inspection import embed
from cnnviz.models import LoadedModel
from cnnviz.models.catalog import default_device
from cnnviz.render import encode_png, to_uint8_image
from cnnviz.training import head_embed, stylize
from cnnviz.training.fast_style import apply_cost
from workers.collections import gallery_key
from workers.jobs.synthesis import resolve
from workers.store import ACTIVE
from workers.trained import JOB_KINDS, TrainedStore

from ..auth import Principal, current_principal
from ..deps import get_settings, lookup_model
from ..errors import ProblemError
from ..explaining import attribution_problem
from ..imaging import DecodedImage, image_to_tensor
from ..jobs import JobClient
from ..schemas.training import (
    NAME_PATTERN,
    RESUMABLE,
    TRAINING_JOBS,
    StyleApplyParams,
    StyleApplyResponse,
    TrainedInfo,
    TrainedList,
)
from ..settings import Settings
from ..uploads import read_upload, validate_params
from .common import PROBLEM_RESPONSES, upload_body
from .jobs import RESPONSES, accepted, get_jobs, submit_record

router = APIRouter(tags=["trained"])


def _name() -> Any:
    """A fresh ``Path`` per parameter (one FieldInfo shared by two parameter names confuses FastAPI)."""
    return Path(..., pattern=NAME_PATTERN, max_length=64)


PLURAL = {"style": "styles", "embedder": "embedders"}


def trained_store(request: Request) -> TrainedStore:
    jobs = get_jobs(request)
    return TrainedStore(jobs.redis, jobs.config.prefix)


def load_trained(request: Request, kind: str, name: str, device: str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """The caller's trained network of ``kind`` (built once per version), or a 404 problem."""
    jobs = get_jobs(request)
    with jobs.guard():
        found = trained_store(request).load(kind, current_principal(request).owner, name, device)
    if found is None:
        raise ProblemError(404, f"{kind}-not-found", f"No {kind} named {name!r}",
                           f"Train one with a {'fast_style' if kind == 'style' else 'triplet_head'} job.")
    return found


DEFAULT_THRESHOLD = 0.9


@dataclass(frozen=True)
class Embedding:
    """How images become embeddings for one request: a layer's pooled features, or a trained head."""

    layer: str
    size: int | None
    head: str | None
    threshold: float  # the default "same" threshold: the head's calibrated one, else 0.9
    cache_key: str  # names cached gallery embeddings; a retrained head gets a new one
    embed: Callable[[list[torch.Tensor]], torch.Tensor]


def resolve_embedding(request: Request, model: LoadedModel, layer: str | None, size: int | None,
                      head: str | None, pool: str = "avg") -> Embedding:
    """The embedding a request asks for; unknown layers and heads, or a head of another model, are 4xx."""
    if head is None:
        try:
            name = validate_layer(model, layer, spatial=False)
        except AttributionError as exc:
            raise attribution_problem(exc) from exc
        return Embedding(name, size, None, DEFAULT_THRESHOLD,
                         gallery_key(name, size or model.preprocessing.input_size, pool=pool),
                         lambda images: embed(model, images, name, pool, size=size))
    net, rec = load_trained(request, "embedder", head)
    config = rec["meta"]["config"]
    if config.get("backbone") != model.name:
        raise ProblemError(422, "head-model-mismatch", f"Embedder {head!r} was trained on {config.get('backbone')!r},"
                           f" not {model.name!r}", model=config.get("backbone"))
    name, size = config["layer"], size or int(config["size"])
    threshold = float((rec.get("summary") or {}).get("threshold") or DEFAULT_THRESHOLD)
    return Embedding(name, size, head, threshold, gallery_key(name, size, head=head, version=rec["version"]),
                     lambda images: head_embed(model, net, images, name, size))  # type: ignore[arg-type]


def _active_job(jobs: JobClient, principal: Principal, job_id: str) -> bool:
    """Whether ``job_id`` is the caller's queued or running job (a dead worker's job is settled first)."""
    if not job_id or job_id.startswith("pending"):
        return False
    try:
        return jobs.get(principal, job_id)["status"] in ACTIVE
    except ProblemError:
        return False


def _info(request: Request, kind: str, rec: dict[str, Any]) -> TrainedInfo:
    principal = current_principal(request)
    store, owner = trained_store(request), principal.owner
    ckpt = store.checkpoint_info(kind, owner, rec["name"])
    holder = store.trainer_of(kind, owner, rec["name"]) or ""
    base = f"/v1/{PLURAL[kind]}/{rec['name']}"
    links = {"self": base, "job": f"/v1/jobs/{rec['job']}"}
    if kind == "style":
        links["apply"] = base + "/apply"
    return TrainedInfo(name=rec["name"], kind=kind, model=rec["model"], version=rec["version"], job=rec["job"],
                       bytes=rec["bytes"], created_at=rec["created_at"], updated_at=rec["updated_at"],
                       summary=rec.get("summary") or {}, checkpoint_step=ckpt["step"] if ckpt else None,
                       training_job=holder if _active_job(get_jobs(request), principal, holder) else None,
                       links=links)


def _list(request: Request, kind: str) -> TrainedList:
    jobs = get_jobs(request)
    with jobs.guard():
        recs = trained_store(request).list(kind, current_principal(request).owner)
        items = [_info(request, kind, r) for r in recs]
    return TrainedList(items=items, count=len(items))


def _get(request: Request, kind: str, name: str) -> TrainedInfo:
    jobs = get_jobs(request)
    with jobs.guard():
        rec = trained_store(request).get(kind, current_principal(request).owner, name)
        if rec is None:
            raise ProblemError(404, f"{kind}-not-found", f"No {kind} named {name!r}")
        return _info(request, kind, rec)


def _delete(request: Request, kind: str, name: str) -> Response:
    jobs = get_jobs(request)
    with jobs.guard():
        if not trained_store(request).delete(kind, current_principal(request).owner, name):
            raise ProblemError(404, f"{kind}-not-found", f"No {kind} named {name!r}")
    return Response(status_code=204)


@router.get("/v1/styles", response_model=TrainedList, responses=RESPONSES, summary="Your trained styles")
def list_styles(request: Request) -> TrainedList:
    return _list(request, "style")


@router.get("/v1/styles/{style}", response_model=TrainedInfo, responses=RESPONSES,
            summary="A trained style: backbone, parameters, final losses, checkpoint")
def get_style(request: Request, style: str = _name()) -> TrainedInfo:
    return _get(request, "style", style)


@router.delete("/v1/styles/{style}", status_code=204, responses=RESPONSES,
               summary="Delete a style, its weights and checkpoint")
def delete_style(request: Request, style: str = _name()) -> Response:
    return _delete(request, "style", style)


@router.get("/v1/embedders", response_model=TrainedList, responses=RESPONSES,
            summary="Your trained embedding heads")
def list_embedders(request: Request) -> TrainedList:
    return _list(request, "embedder")


@router.get("/v1/embedders/{embedder}", response_model=TrainedInfo, responses=RESPONSES,
            summary="A trained embedding head: layer, threshold, held-out accuracy against the frozen features")
def get_embedder(request: Request, embedder: str = _name()) -> TrainedInfo:
    return _get(request, "embedder", embedder)


@router.delete("/v1/embedders/{embedder}", status_code=204, responses=RESPONSES, summary="Delete an embedding head")
def delete_embedder(request: Request, embedder: str = _name()) -> Response:
    return _delete(request, "embedder", embedder)


@router.post("/v1/styles/{style}/apply", response_model=StyleApplyResponse,
             responses={**PROBLEM_RESPONSES, 200: {"content": {"image/png": {}, "image/jpeg": {}}}},
             openapi_extra=upload_body("#/components/schemas/StyleApplyParams", "One content image and params."),
             summary="Stylize an image with a trained style (inline); Accept: image/png or image/jpeg for the "
                     "picture alone")
async def apply_style(request: Request, style: str = _name(), settings: Settings = Depends(get_settings)) -> Response:
    upload = await read_upload(request, settings, min_images=1, max_images=1)
    params = validate_params(StyleApplyParams, upload.params)
    if params.size is not None and params.size > settings.max_apply_side:
        raise ProblemError(422, "size-too-large", f"size {params.size} is over max_apply_side="
                           f"{settings.max_apply_side}", limit=settings.max_apply_side)
    device = settings.device or str(default_device())
    net, rec = await run_in_threadpool(load_trained, request, "style", style, device)
    d = upload.images[0]
    size = params.size or min(max(d.width, d.height), 1024, settings.max_apply_side)
    scale = size / max(d.width, d.height)
    spec = rec["meta"]["config"]["network"]
    catalog = request.app.state.catalog
    cost = apply_cost(catalog.get(catalog.default), spec["width"], spec["blocks"], round(d.height * scale),
                      round(d.width * scale))
    if cost > settings.inline_budget:
        raise ProblemError(422, "too-expensive", f"Stylizing at {size} px costs about {cost:.0f} forward passes, "
                           f"over the inline budget of {settings.inline_budget:.0f}; ask for a smaller size",
                           estimate=round(cost, 1), limit=settings.inline_budget)
    t0 = time.perf_counter()
    out = await run_in_threadpool(stylize, net, image_to_tensor(d.image), size=size, strength=params.strength,
                                  preserve_color=params.preserve_color)
    compute_ms = (time.perf_counter() - t0) * 1000
    headers = {"Server-Timing": f"compute;dur={compute_ms:.1f}"}
    accept = request.headers.get("accept", "")
    if "image/jpeg" in accept:  # smaller and faster to encode than PNG for a photo-like answer
        return Response(await run_in_threadpool(encode_jpeg, out), media_type="image/jpeg", headers=headers)
    png = await run_in_threadpool(lambda: encode_png(to_uint8_image(out)))
    if "image/png" in accept:
        return Response(png, media_type="image/png", headers=headers)
    timings = {"decode_ms": round(upload.decode_ms, 3), "compute_ms": round(compute_ms, 3),
               "total_ms": round((time.perf_counter() - t0) * 1000 + upload.decode_ms, 3)}
    body = StyleApplyResponse(style=style, width=int(out.shape[2]), height=int(out.shape[1]),
                              image_png=base64.b64encode(png).decode("ascii"), timings=timings)
    return Response(body.model_dump_json(), media_type="application/json", headers=headers)


def encode_jpeg(image: torch.Tensor, quality: int = 90) -> bytes:
    """A ``[3,H,W]`` float image in [0,1] as JPEG bytes."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(to_uint8_image(image).numpy()).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _training_spec(request: Request, jobs: JobClient, principal: Principal, job: Any, images: list[DecodedImage],
                   settings: Settings) -> tuple[dict[str, Any], float]:
    """Check a training request against its model, collection, name and checkpoint; estimate its cost.

    A resumed run takes its checkpoint's parameters, model and images; the request may change
    only the step count and the reporting cadences.
    """
    from .collections import owned_collection

    kind = JOB_KINDS[job.type]
    p = job.params
    store, owner = trained_store(request), principal.owner
    catalog = request.app.state.catalog
    _, (min_images, max_images), cost_fn = TRAINING_JOBS[job.type]
    if p.resume:
        ckpt = store.checkpoint_info(kind, owner, p.name)
        if ckpt is None:
            raise ProblemError(404, "no-checkpoint", f"No checkpoint of {kind} {p.name!r} to resume",
                               "Checkpoints are kept while a name is trained, cancelled or failed, until its TTL.")
        if job.model is not None and job.model != ckpt["model"]:
            raise ProblemError(422, "checkpoint-model-mismatch", f"The checkpoint was trained on {ckpt['model']!r}")
        if images:
            raise ProblemError(422, "wrong-image-count", "A resumed run reuses its checkpoint's images; send none",
                               expected=0)
        params = {**ckpt["params"], **p.model_dump(mode="json", include=p.model_fields_set & RESUMABLE),
                  "resume": True}
        model = lookup_model(catalog, ckpt["model"])
    else:
        if not min_images <= len(images) <= max_images:
            what = "no image" if max_images == 0 else "a style image (and optionally a preview content image)"
            raise ProblemError(422, "wrong-image-count", f"A {job.type} job takes {what}; got {len(images)}",
                               expected=[min_images, max_images])
        model = lookup_model(catalog, job.model or catalog.default)
        bad = [n for n in p.layer_names() if not model.has_layer(n)]
        if bad:
            raise ProblemError(422, "unknown-layer", f"Model {model.name!r} has no layer {bad[0]!r}",
                               "See GET /v1/models/{model} for the layer names.")
        if store.get(kind, owner, p.name) is None and store.count(kind, owner) >= settings.max_trained_per_key:
            raise ProblemError(422, "too-many-trained", f"At most {settings.max_trained_per_key} {PLURAL[kind]} "
                               "per key; delete one first", limit=settings.max_trained_per_key)
        params = p.model_dump(mode="json")
    col = owned_collection(request, params["collection"])
    if kind == "embedder" and not col.get("labels"):
        raise ProblemError(422, "missing-labels", "A triplet head needs a collection uploaded with labels")
    if kind == "embedder":
        counts = Counter(col["labels"])
        if len(counts) < 2:
            raise ProblemError(422, "bad-labels", "A triplet head needs at least two classes")
        if params.get("split") == "images" and min(counts.values()) < 2:
            raise ProblemError(422, "bad-labels", "split 'images' needs two images of every class",
                               "Use split 'views' (or 'auto') to hold out augmented views instead.",
                               single=sorted(k for k, v in counts.items() if v < 2)[:20])
    cost = float(resolve(cost_fn)(model, n_images=int(col["count"]),
                                  **{k: v for k, v in params.items() if v is not None}))
    spec = {"type": job.type, "model": model.name, "params": params,
            "store": {"ttl_s": settings.trained_ttl_s, "checkpoint_ttl_s": settings.artifact_ttl_s}}
    return spec, cost


async def submit_training(request: Request, jobs: JobClient, principal: Principal, job: Any,
                          images: list[DecodedImage], settings: Settings) -> Response:
    """Queue a training job; one run per name at a time (409 while another trains it)."""
    kind, name = JOB_KINDS[job.type], job.params.name
    with jobs.guard():
        spec, cost = await run_in_threadpool(_training_spec, request, jobs, principal, job, images, settings)
        store = trained_store(request)
        pending = f"pending-{time.time_ns()}"
        if not store.claim(kind, principal.owner, name, pending, 60):
            holder = store.trainer_of(kind, principal.owner, name) or ""
            if holder.startswith("pending") or _active_job(jobs, principal, holder):
                raise ProblemError(409, "training-in-progress", f"{kind} {name!r} is being trained by another job",
                                   job=None if holder.startswith("pending") else holder, headers={"Retry-After": "10"})
            store.claim(kind, principal.owner, name, pending, 60, replace=True)
    try:
        rec, created = await submit_record(request, jobs, principal, spec, images, cost, settings)
    except BaseException:
        with jobs.guard():
            store.release(kind, principal.owner, name, pending)
        raise
    with jobs.guard():
        store.claim(kind, principal.owner, name, rec["id"], int(rec.get("timeout_s") or 3600) + 3600, replace=True)
    return accepted(rec, jobs, created)
