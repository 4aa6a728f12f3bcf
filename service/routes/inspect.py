"""``POST /v1/models/{model}/inspect/{view}``: filters and activation maps, answered inline."""

from __future__ import annotations

import base64

import torch
from fastapi import APIRouter, Depends, Path, Request, Response
from starlette.concurrency import run_in_threadpool
from torch import nn

from cnnviz.attribution import AttributionError
from cnnviz.inspection import filter_tiles, first_conv, layer_activations
from cnnviz.models import LoadedModel
from cnnviz.render import apply_colormap, encode_png, make_grid, normalize_map, resize_map

from ..deps import get_model, get_settings
from ..errors import ProblemError
from ..explaining import attribution_problem
from ..imaging import image_to_tensor
from ..schemas.inspect import ActivationsParams, ActivationsResponse, ChannelOut, FiltersParams, FiltersResponse
from ..settings import Settings
from ..uploads import read_upload, validate_params
from .common import PROBLEM_RESPONSES, upload_body

router = APIRouter(tags=["inspect"])

VIEWS = ("filters", "activations")


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


@router.post("/v1/models/{model}/inspect/{view}", responses=PROBLEM_RESPONSES,
             response_model=FiltersResponse | ActivationsResponse,
             openapi_extra=upload_body(description="filters: no image needed (params only); activations: one image"),
             summary="Model internals: first-layer filters or a layer's activation maps")
async def inspect(request: Request, view: str = Path(..., max_length=32), model: LoadedModel = Depends(get_model),
                  settings: Settings = Depends(get_settings)) -> Response:
    if view not in VIEWS:
        raise ProblemError(404, "unknown-view", f"No view named {view!r}", choices=list(VIEWS))
    if view == "filters":
        upload = await read_upload(request, settings, min_images=0, max_images=1)
        params = validate_params(FiltersParams, upload.params)
        out = await run_in_threadpool(filters_view, model, params)
    else:
        upload = await read_upload(request, settings, min_images=1, max_images=1)
        params = validate_params(ActivationsParams, upload.params)
        out = await run_in_threadpool(activations_view, model, image_to_tensor(upload.images[0].image), params)
    if "image/png" in request.headers.get("accept", ""):
        return Response(base64.b64decode(out.grid_png), media_type="image/png")
    return Response(out.model_dump_json(), media_type="application/json")
