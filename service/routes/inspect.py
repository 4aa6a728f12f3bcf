"""``POST /v1/models/{model}/inspect/{view}``: filters and activation maps, answered inline."""

from __future__ import annotations

import base64

import torch
from fastapi import APIRouter, Depends, Path, Request, Response
from starlette.concurrency import run_in_threadpool
from torch import nn

from cnnviz.attribution import AttributionError
from cnnviz.attribution.base import validate_layer
from cnnviz.inspection import filter_tiles, first_conv, invariance_curves, layer_activations, plot_curves, verify
from cnnviz.models import LoadedModel
from cnnviz.render import apply_colormap, encode_png, make_grid, normalize_map, resize_map

from ..deps import get_model, get_settings
from ..errors import ProblemError
from ..explaining import attribution_problem
from ..imaging import image_to_tensor
from ..schemas.inspect import (
    ActivationsParams,
    ActivationsResponse,
    ChannelOut,
    EmbedParams,
    EmbedResponse,
    FiltersParams,
    FiltersResponse,
    InvarianceParams,
    InvarianceResponse,
    VerifyParams,
    VerifyResponse,
)
from ..settings import Settings
from ..uploads import read_upload, validate_params
from .common import PROBLEM_RESPONSES, upload_body
from .trained import Embedding, resolve_embedding

router = APIRouter(tags=["inspect"])

# view -> (params model, min images, max images)
VIEW_INPUTS = {"filters": (FiltersParams, 0, 1), "activations": (ActivationsParams, 1, 1),
               "embed": (EmbedParams, 1, 64), "verify": (VerifyParams, 2, 2), "invariance": (InvarianceParams, 1, 1)}
VIEWS = tuple(VIEW_INPUTS)


def _png_b64(img: torch.Tensor) -> str:
    return base64.b64encode(encode_png(img)).decode("ascii")


def filters_view(model: LoadedModel, params: FiltersParams) -> FiltersResponse:
    if params.layer is None:
        name, conv = first_conv(model)
    else:
        if not model.has_layer(params.layer) or not isinstance(model.submodule(params.layer), nn.Conv2d):
            convs = [li.name for li in model.layers if li.kind.endswith("Conv2d")]
            raise ProblemError(422, "unknown-layer", f"{params.layer!r} is not a Conv2d of {model.name}",
                               choices=convs[:50])
        name, conv = params.layer, model.submodule(params.layer)
    tiles = filter_tiles(conv.weight[: params.max_filters], params.scale, params.per_filter)
    return FiltersResponse(model=model.name, layer=name, shape=list(conv.weight.shape),
                           grid_png=_png_b64(make_grid(tiles, pad=2)))


def activations_view(model: LoadedModel, image: torch.Tensor, params: ActivationsParams) -> ActivationsResponse:
    x = model.preprocessing.batch([image], params.resolution, device=model.device)
    try:
        acts = layer_activations(model, x, params.layer, params.top, params.channels, params.rank_by)
    except AttributionError as exc:
        raise attribution_problem(exc) from exc
    tiles = [apply_colormap(resize_map(normalize_map(m, "max"), (params.tile, params.tile)), params.colormap)
             for m in acts.maps]
    chans = [ChannelOut(channel=s.channel, mean=s.mean, max=s.max, active_fraction=s.active_fraction,
                        values=acts.maps[i].tolist() if params.values else None) for i, s in enumerate(acts.channels)]
    return ActivationsResponse(model=model.name, layer=acts.layer, shape=list(acts.shape), channels=chans,
                               grid_png=_png_b64(make_grid(tiles, pad=2)))


def _layer(model: LoadedModel, layer: str | None) -> str:
    try:
        return validate_layer(model, layer, spatial=False)
    except AttributionError as exc:
        raise attribution_problem(exc) from exc


def embed_view(model: LoadedModel, images: list[torch.Tensor], how: Embedding) -> EmbedResponse:
    e = how.embed(images)
    return EmbedResponse(model=model.name, layer=how.layer, head=how.head, dim=int(e.shape[1]),
                         embeddings=[[round(float(v), 6) for v in row] for row in e.tolist()])


def verify_view(model: LoadedModel, images: list[torch.Tensor], how: Embedding, params: VerifyParams) -> VerifyResponse:
    e = how.embed(images)
    threshold = params.threshold if params.threshold is not None else how.threshold
    dist, same = verify(e[0], e[1], threshold, metric=params.metric)
    return VerifyResponse(model=model.name, layer=how.layer, head=how.head, metric=params.metric,
                          distance=float(dist), threshold=threshold, same=bool(same))


def invariance_view(model: LoadedModel, image: torch.Tensor, params: InvarianceParams) -> InvarianceResponse:
    layer = _layer(model, params.layer)
    curves = invariance_curves(model, image, layer, shifts=params.shifts, scales=params.scales,
                               rotations=params.rotations, size=params.resolution, shift_axis=params.shift_axis)
    return InvarianceResponse(model=model.name, curves=curves, plot_png=_png_b64(plot_curves(curves)))


@router.post("/v1/models/{model}/inspect/{view}", responses=PROBLEM_RESPONSES,
             response_model=FiltersResponse | ActivationsResponse | EmbedResponse | VerifyResponse | InvarianceResponse,
             openapi_extra=upload_body(description="filters: no image; activations, invariance: one image; "
                                                   "embed: 1-64 images; verify: two images"),
             summary="Model internals: filters, activations, embeddings, verification, feature invariance")
async def inspect(request: Request, view: str = Path(..., max_length=32), model: LoadedModel = Depends(get_model),
                  settings: Settings = Depends(get_settings)) -> Response:
    if view not in VIEWS:
        raise ProblemError(404, "unknown-view", f"No view named {view!r}", choices=list(VIEWS))
    params_model, min_images, max_images = VIEW_INPUTS[view]
    upload = await read_upload(request, settings, min_images=min_images, max_images=max_images)
    params = validate_params(params_model, upload.params)
    images = [image_to_tensor(d.image) for d in upload.images]
    if view == "filters":
        out = await run_in_threadpool(filters_view, model, params)
    elif view == "activations":
        out = await run_in_threadpool(activations_view, model, images[0], params)
    elif view in ("embed", "verify"):
        how = await run_in_threadpool(resolve_embedding, request, model, params.layer, params.resolution, params.head,
                                      params.pool)
        out = await (run_in_threadpool(embed_view, model, images, how) if view == "embed"
                     else run_in_threadpool(verify_view, model, images, how, params))
    else:
        out = await run_in_threadpool(invariance_view, model, images[0], params)
    png = getattr(out, "grid_png", None) or getattr(out, "plot_png", None)
    if png and "image/png" in request.headers.get("accept", ""):
        return Response(base64.b64decode(png), media_type="image/png")
    return Response(out.model_dump_json(), media_type="application/json")
