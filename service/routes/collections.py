"""``/v1/collections``: an uploaded set of images, owned by its API key, kept with a TTL."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from core.errors import Invalid
from core.imaging import image_to_tensor
from core.inspecting import identify_query, resolve_embedding
from core.lookups import lookup_model
from core.schemas.collections import CollectionInfo, CollectionParams, IdentifyParams, IdentifyResponse
from core.trusting import check_boxes
from core.validation import validate_params
from service.deps import (
    CatalogDep,
    CollectionsDep,
    JobsDep,
    LanesDep,
    OwnedCollectionDep,
    PrincipalDep,
    SettingsDep,
    TrainedDep,
)
from service.openapi_parts import PROBLEM_RESPONSES, upload_body
from service.submission import stored_png
from service.uploads import read_upload

router = APIRouter(prefix="/v1/collections", tags=["collections"])


def _info(rec: dict[str, Any]) -> CollectionInfo:
    return CollectionInfo(id=rec["id"], count=rec["count"], labels=rec.get("labels"), boxes=rec.get("boxes"),
                          bytes=rec["bytes"],
                          created_at=rec["created_at"], ttl_s=rec["ttl_s"],
                          links={"self": f"/v1/collections/{rec['id']}"})


@router.post("", status_code=201, response_model=CollectionInfo, responses=PROBLEM_RESPONSES,
             openapi_extra=upload_body("#/components/schemas/CollectionParams",
                                       "Many images (field image, repeated, and/or a ZIP archive in field "
                                       "zip) and params {labels, boxes}, both in image order.", min_images=2,
                                       max_images=500),
             summary="Upload a collection of images for collection-level views")
async def create_collection(request: Request, settings: SettingsDep, collections: CollectionsDep,
                            principal: PrincipalDep, jobs: JobsDep) -> Response:
    upload = await read_upload(request, settings, min_images=2, max_images=settings.max_collection_images,
                               allow_zip=True, max_side=settings.collection_decode_side,
                               max_pixels=settings.max_collection_pixels)
    params = validate_params(CollectionParams, upload.params)
    if params.labels is not None and len(params.labels) != len(upload.images):
        raise Invalid("bad-labels", f"{len(params.labels)} labels for {len(upload.images)} images")
    sizes = [(d.height, d.width) for d in upload.images]
    if params.boxes is not None:
        check_boxes(params.boxes, sizes, upload.names)
    blobs = await run_in_threadpool(lambda: [stored_png(d) for d in upload.images])
    with jobs.guard():
        rec = await run_in_threadpool(lambda: collections.create(
            principal.owner, blobs, params.labels, settings.artifact_ttl_s, boxes=params.boxes,
            sizes=sizes if params.boxes is not None else None))
    return Response(_info(rec).model_dump_json(), status_code=201, media_type="application/json",
                    headers={"Location": f"/v1/collections/{rec['id']}"})


@router.get("/{cid}", response_model=CollectionInfo, responses=PROBLEM_RESPONSES, summary="A collection's metadata")
def get_collection(rec: OwnedCollectionDep) -> CollectionInfo:
    return _info(rec)


@router.post("/{cid}/identify", response_model=IdentifyResponse, responses=PROBLEM_RESPONSES,
             openapi_extra=upload_body("#/components/schemas/IdentifyParams", "One query image and params.",
                                       max_images=1),
             summary="1:K identification against a labelled collection; 'unknown' when nothing is close")
async def identify(request: Request, rec: OwnedCollectionDep, settings: SettingsDep, catalog: CatalogDep,
                   principal: PrincipalDep, collections: CollectionsDep, trained: TrainedDep, jobs: JobsDep,
                   lanes: LanesDep, model: str = Query(None, max_length=100)) -> IdentifyResponse:
    if not rec.get("labels"):
        raise Invalid("missing-labels", "Identification needs a collection uploaded with labels")
    upload = await read_upload(request, settings, min_images=1, max_images=1)
    params = validate_params(IdentifyParams, upload.params)
    loaded = lookup_model(catalog, model or catalog.default)
    with jobs.guard():
        how = await lanes.arun(resolve_embedding, loaded, params.layer, params.size, params.head, trained,
                               principal.owner, "avg", params.verifier)
        return await lanes.arun(lambda: identify_query(loaded, collections, rec,
                                                              image_to_tensor(upload.images[0].image), how,
                                                              params, settings.inline_budget))


@router.delete("/{cid}", status_code=204, responses=PROBLEM_RESPONSES, summary="Delete a collection")
def delete_collection(rec: OwnedCollectionDep, collections: CollectionsDep, jobs: JobsDep) -> Response:
    with jobs.guard():
        collections.delete(rec["id"], int(rec["count"]))
    return Response(status_code=204)
