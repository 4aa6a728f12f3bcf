"""``/v1/styles`` and ``/v1/embedders``: networks trained by jobs, owned by the key that trained them.

A style is applied inline (``POST /v1/styles/{style}/apply``); an embedder is used by the embed,
verify and identify endpoints through their ``head`` parameter. Both are read from Redis by
:class:`core.store.trained.TrainedStore`, which caches the built network per version in this process.
"""

from __future__ import annotations

import base64
import time
from typing import Any

from fastapi import APIRouter, Path, Request, Response
from starlette.concurrency import run_in_threadpool

from cnnviz.models.catalog import default_device
from cnnviz.render import encode_jpeg, encode_png, to_uint8_image
from cnnviz.training import stylize
from cnnviz.training.fast_style import estimate_apply_cost
from core.errors import Invalid, NotFound
from core.imaging import image_to_tensor
from core.jobtypes import PLURAL
from core.schemas.training import NAME_PATTERN, StyleApplyParams, StyleApplyResponse, TrainedInfo, TrainedList
from core.store.job_records import ACTIVE
from core.store.trained import TrainedStore
from core.validation import validate_params
from service.auth import Principal
from service.deps import CatalogDep, JobsDep, LanesDep, PrincipalDep, SettingsDep, TrainedDep
from service.job_client import JobClient
from service.openapi_parts import JOB_RESPONSES, PROBLEM_RESPONSES, upload_body
from service.uploads import read_upload

router = APIRouter(tags=["trained"])


def _name(alias: str | None = None) -> Any:
    """A fresh ``Path`` per parameter (one FieldInfo shared by two parameter names confuses FastAPI).

    ``alias``: the name in the path (``style``, ``embedder``) where the function's parameter is ``name``.
    """
    return Path(..., alias=alias, pattern=NAME_PATTERN, max_length=64)


def _info(store: TrainedStore, jobs: JobClient, principal: Principal, kind: str, rec: dict[str, Any]) -> TrainedInfo:
    owner = principal.owner
    ckpt = store.checkpoint_info(kind, owner, rec["name"])
    holder = store.trainer_of(kind, owner, rec["name"]) or ""
    running = jobs.find(principal, holder) if holder and not holder.startswith("pending") else None
    base = f"/v1/{PLURAL[kind]}/{rec['name']}"
    links = {"self": base, "job": f"/v1/jobs/{rec['job']}"}
    if kind == "style":
        links["apply"] = base + "/apply"
    return TrainedInfo(name=rec["name"], kind=kind, model=rec["model"], version=rec["version"], job=rec["job"],
                       bytes=rec["bytes"], created_at=rec["created_at"], updated_at=rec["updated_at"],
                       summary=rec.get("summary") or {}, status=rec.get("status") or "ready",
                       step=int(rec.get("step") or 0), checkpoint_step=ckpt["step"] if ckpt else None,
                       training_job=holder if running is not None and running["status"] in ACTIVE else None,
                       links=links)


def _list(store: TrainedStore, jobs: JobClient, principal: Principal, kind: str) -> TrainedList:
    with jobs.guard():
        items = [_info(store, jobs, principal, kind, r) for r in store.list(kind, principal.owner)]
    return TrainedList(items=items, count=len(items))


def _get(store: TrainedStore, jobs: JobClient, principal: Principal, kind: str, name: str) -> TrainedInfo:
    with jobs.guard():
        rec = store.get(kind, principal.owner, name)
        if rec is None:
            raise NotFound(f"{kind}-not-found", f"No {kind} named {name!r}")
        return _info(store, jobs, principal, kind, rec)


def _delete(store: TrainedStore, jobs: JobClient, principal: Principal, kind: str, name: str) -> Response:
    with jobs.guard():
        if not store.delete(kind, principal.owner, name):
            raise NotFound(f"{kind}-not-found", f"No {kind} named {name!r}")
    return Response(status_code=204)


def _add_trained_routes(kind: str, summaries: tuple[str, str, str]) -> None:
    """``GET /v1/{kinds}``, ``GET`` and ``DELETE /v1/{kinds}/{kind}`` for one kind of trained network.

    ``summaries`` are those of the list, get and delete routes. The routes keep the names (and so
    the OpenAPI operation ids) ``list_{kinds}``, ``get_{kind}`` and ``delete_{kind}``.
    """
    base = f"/v1/{PLURAL[kind]}"
    item = f"{base}/{{{kind}}}"

    def list_trained(store: TrainedDep, jobs: JobsDep, principal: PrincipalDep) -> TrainedList:
        return _list(store, jobs, principal, kind)

    def get_trained(store: TrainedDep, jobs: JobsDep, principal: PrincipalDep, name: str = _name(kind)) -> TrainedInfo:
        return _get(store, jobs, principal, kind, name)

    def delete_trained(store: TrainedDep, jobs: JobsDep, principal: PrincipalDep, name: str = _name(kind)) -> Response:
        return _delete(store, jobs, principal, kind, name)

    router.add_api_route(base, list_trained, methods=["GET"], name=f"list_{PLURAL[kind]}", response_model=TrainedList,
                         responses=JOB_RESPONSES, summary=summaries[0])
    router.add_api_route(item, get_trained, methods=["GET"], name=f"get_{kind}", response_model=TrainedInfo,
                         responses=JOB_RESPONSES, summary=summaries[1])
    router.add_api_route(item, delete_trained, methods=["DELETE"], name=f"delete_{kind}", status_code=204,
                         responses=JOB_RESPONSES, summary=summaries[2])


_add_trained_routes("style", ("Your trained styles", "A trained style: backbone, parameters, final losses, checkpoint",
                              "Delete a style, its weights and checkpoint"))
_add_trained_routes("embedder", ("Your trained embedding heads", "A trained embedding head: layer, threshold, "
                                 "held-out accuracy against the frozen features", "Delete an embedding head"))
_add_trained_routes("verifier", ("Your trained verification heads, each with its held-out accuracy beside the "
                                 "distance threshold's", "A trained verification head: layer, form, held-out "
                                 "accuracy beside the distance threshold's on the same pairs",
                                 "Delete a verification head"))


@router.post("/v1/styles/{style}/apply", response_model=StyleApplyResponse,
             responses={**PROBLEM_RESPONSES, 200: {"content": {"image/png": {}, "image/jpeg": {}}}},
             openapi_extra=upload_body("#/components/schemas/StyleApplyParams", "One content image and params.",
                                       max_images=1),
             summary="Stylize an image with a trained style (inline); Accept: image/png or image/jpeg for the "
                     "picture alone")
async def apply_style(request: Request, settings: SettingsDep, catalog: CatalogDep, store: TrainedDep,
                      jobs: JobsDep, principal: PrincipalDep, lanes: LanesDep, style: str = _name()) -> Response:
    upload = await read_upload(request, settings, min_images=1, max_images=1, max_side=settings.max_apply_side)
    params = validate_params(StyleApplyParams, upload.params)
    if params.size is not None and params.size > settings.max_apply_side:
        raise Invalid("size-too-large", f"size {params.size} is over max_apply_side={settings.max_apply_side}",
                      limit=settings.max_apply_side)
    device = settings.device or str(default_device())
    with jobs.guard():
        found = await run_in_threadpool(store.load, "style", principal.owner, style, device)
    if found is None:
        raise NotFound("style-not-found", f"No style named {style!r}", "Train one with a fast_style job.")
    net, rec = found
    d = upload.images[0]
    size = params.size or min(max(d.width, d.height), 1024, settings.max_apply_side)
    scale = size / max(d.width, d.height)
    spec = rec["meta"]["config"]["network"]
    cost = estimate_apply_cost(catalog.get(catalog.default), spec["width"], spec["blocks"], round(d.height * scale),
                               round(d.width * scale))
    if cost > settings.inline_budget:
        raise Invalid("too-expensive", f"Stylizing at {size} px costs about {cost:.0f} forward passes, "
                      f"over the inline budget of {settings.inline_budget:.0f}; ask for a smaller size",
                      estimate=round(cost, 1), limit=settings.inline_budget)
    t0 = time.perf_counter()
    out = await lanes.arun(lambda: stylize(net, image_to_tensor(d.image), size=size, strength=params.strength,
                                                  preserve_color=params.preserve_color))
    compute_ms = (time.perf_counter() - t0) * 1000
    headers = {"Server-Timing": f"compute;dur={compute_ms:.1f}"}
    accept = request.headers.get("accept", "")
    if "image/jpeg" in accept:  # smaller and faster to encode than PNG for a photo-like answer
        return Response(await lanes.arun(encode_jpeg, out), media_type="image/jpeg", headers=headers)
    png = await lanes.arun(lambda: encode_png(to_uint8_image(out)))
    if "image/png" in accept:
        return Response(png, media_type="image/png", headers=headers)
    timings = {"decode_ms": round(upload.decode_ms, 3), "compute_ms": round(compute_ms, 3),
               "total_ms": round((time.perf_counter() - t0) * 1000 + upload.decode_ms, 3)}
    body = StyleApplyResponse(style=style, width=int(out.shape[2]), height=int(out.shape[1]),
                              image_png=base64.b64encode(png).decode("ascii"), timings=timings)
    return Response(body.model_dump_json(), media_type="application/json", headers=headers)
