"""``POST /v1/models/{model}/inspect/{view}``: filters, activations, embeddings, verification, invariance."""

from __future__ import annotations

import base64
from functools import partial

from fastapi import APIRouter, Path, Request, Response

from core.imaging import image_to_tensor
from core.inspecting import check_view, inspect_view, resolve_embedding
from core.schemas.inspect import (
    ActivationsResponse,
    EmbedResponse,
    FiltersResponse,
    InvarianceResponse,
    VerifyResponse,
)
from core.store.trained import TrainedStore
from core.validation import validate_params
from service.deps import LanesDep, ModelDep, OptionalJobsDep, PrincipalDep, SettingsDep
from service.nd_answers import inspect_for_arrays
from service.openapi_parts import PROBLEM_RESPONSES, upload_body
from service.uploads import read_upload

router = APIRouter(tags=["inspect"])


@router.post("/v1/models/{model}/inspect/{view}", responses=PROBLEM_RESPONSES,
             response_model=FiltersResponse | ActivationsResponse | EmbedResponse | VerifyResponse | InvarianceResponse,
             openapi_extra=upload_body(description="filters: no image; activations, invariance: one image; "
                                                   "embed: 1-64 images; verify: two images",
                                       min_images=0, max_images=64),
             summary="Model internals: filters, activations, embeddings, verification, feature invariance")
async def inspect(request: Request, model: ModelDep, settings: SettingsDep, principal: PrincipalDep,
                  jobs: OptionalJobsDep, lanes: LanesDep, view: str = Path(..., max_length=32)) -> Response:
    params_model, min_images, max_images = check_view(view)
    if model.input_kind != "image":  # a signal or volume model: filters and activations of its 1-D / 3-D layers
        return await inspect_for_arrays(request, model, settings, view, lanes)
    upload = await read_upload(request, settings, min_images=min_images, max_images=max_images)
    params = validate_params(params_model, upload.params)
    trained = TrainedStore(jobs.redis, jobs.config.prefix) if jobs is not None else None
    embedding = partial(resolve_embedding, model, getattr(params, "layer", None), getattr(params, "resolution", None),
                        getattr(params, "head", None), trained, principal.owner, getattr(params, "pool", "avg"),
                        getattr(params, "verifier", None))
    out = await lanes.arun(
        lambda: inspect_view(view, model, [image_to_tensor(d.image) for d in upload.images], params, embedding))
    png = getattr(out, "grid_png", None) or getattr(out, "plot_png", None)
    if png and "image/png" in request.headers.get("accept", ""):
        return Response(base64.b64decode(png), media_type="image/png")
    return Response(out.model_dump_json(), media_type="application/json")
