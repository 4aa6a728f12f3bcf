"""``POST /v1/models/{model}/explain/{method}``: explanation maps, inline or handed to an explain job."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import Counter, Histogram

from core.explaining import check_explain
from core.png_answer import PNG_HEADERS
from core.schemas.explain import ExplainResponse
from service.deps import InlineDep, LanesDep, MethodDep, ModelDep, OptionalJobsDep, PrincipalDep, SettingsDep
from service.nd_answers import explain_arrays
from service.openapi_parts import PROBLEM_RESPONSES, upload_body
from service.submission import hand_off_explain, hands_off
from service.uploads import read_upload

router = APIRouter(tags=["explain"])

BATCH_REQUESTS = Histogram("cnnviz_inline_batch_requests", "Inline explain requests per engine call",
                           buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32, 64))
BATCHED_IMAGES = Counter("cnnviz_inline_batch_images_total", "Images computed by inline engine calls")


def observe_batch(requests: int, images: int) -> None:
    BATCH_REQUESTS.observe(requests)
    BATCHED_IMAGES.inc(images)


@router.post("/v1/models/{model}/explain/{method}", response_model=ExplainResponse,
             responses={**PROBLEM_RESPONSES, 503: {
                 "description": "`inline-busy`: too many inline computations in this process; retry after "
                                "`Retry-After` seconds",
                 "content": {"application/problem+json": {"schema": {"type": "object"}}}},
                 200: {
                 "content": {"image/png": {}, "application/x-nifti": {}},
                 "description": "JSON, or with `Accept: image/png` the overlay (one map) or a captioned grid of "
                                "every overlay (several images or targets: one row per image); for a signal or "
                                "volume model (`input` in the models file) the JSON is an NdExplainResponse, "
                                "`Accept: image/png` the first map's signal plot or three slices, and "
                                "`Accept: application/x-nifti` (volumes) the first map as .nii.gz in the input's "
                                "own affine; headers "
                                + ", ".join(f"`{h}`" for h in PNG_HEADERS),
                 "headers": {h: {"description": what, "schema": {"type": "string"}}
                             for h, what in PNG_HEADERS.items()}}},
             openapi_extra=upload_body("#/components/schemas/ExplainParams"),
             summary="Explanation maps per image and target")
async def explain(request: Request, model: ModelDep, settings: SettingsDep, principal: PrincipalDep,
                  jobs: OptionalJobsDep, inline: InlineDep, method: MethodDep, lanes: LanesDep) -> Response:
    if model.input_kind != "image":  # a signal or volume model (core/inputkinds.py): its own decoding and pictures
        return await explain_arrays(request, model, settings, method, lanes)
    upload = await read_upload(request, settings)
    checked = check_explain(model, method, upload.params, len(upload.images),
                            [(d.height, d.width) for d in upload.images])
    if jobs is not None and hands_off(checked, settings, request.headers.get("prefer", "")):
        return await hand_off_explain(jobs, principal, model, checked, upload.images, settings,
                                      request.headers.get("idempotency-key"))
    if "image/png" in request.headers.get("accept", ""):
        png, headers = await inline.png(model, checked, upload, settings)
        return Response(png, media_type="image/png", headers=headers)
    answer = await inline.answer(model, checked, upload, settings, jobs, principal.owner)
    return Response(answer.model_dump_json(), media_type="application/json")
