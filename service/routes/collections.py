"""``/v1/collections``: an uploaded set of images, owned by its API key, kept with a TTL."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from cnnviz.inspection import Gallery
from workers.collections import CollectionStore
from workers.runtime import decode_rgb

from ..auth import current_principal
from ..deps import get_settings, lookup_model
from ..errors import ProblemError
from ..imaging import image_to_tensor
from ..schemas.collections import Candidate, CollectionInfo, CollectionParams, IdentifyParams, IdentifyResponse
from ..settings import Settings
from ..uploads import read_upload, validate_params
from .common import PROBLEM_RESPONSES, upload_body
from .jobs import get_jobs, stored_png
from .trained import Embedding, resolve_embedding

router = APIRouter(prefix="/v1/collections", tags=["collections"])
COLLECTION_ID = Path(..., min_length=1, max_length=64, pattern=r"^[a-f0-9]+$")


def collection_store(request: Request) -> CollectionStore:
    jobs = get_jobs(request)
    return CollectionStore(jobs.redis, jobs.config.prefix)


def owned_collection(request: Request, cid: str) -> dict[str, Any]:
    """The caller's collection; another key's or an unknown id is 404."""
    rec = collection_store(request).get(cid)
    if rec is None or rec.get("owner") != current_principal(request).owner:
        raise ProblemError(404, "collection-not-found", f"No collection {cid!r}")
    return rec


def _info(rec: dict[str, Any]) -> CollectionInfo:
    return CollectionInfo(id=rec["id"], count=rec["count"], labels=rec.get("labels"), bytes=rec["bytes"],
                          created_at=rec["created_at"], ttl_s=rec["ttl_s"],
                          links={"self": f"/v1/collections/{rec['id']}"})


@router.post("", status_code=201, response_model=CollectionInfo, responses=PROBLEM_RESPONSES,
             openapi_extra=upload_body("#/components/schemas/CollectionParams",
                                       "Many images (field image, repeated, and/or a ZIP archive in field "
                                       "zip) and params {labels}, labels in image order."),
             summary="Upload a collection of images for collection-level views")
async def create_collection(request: Request, settings: Settings = Depends(get_settings)) -> Response:
    store = collection_store(request)
    upload = await read_upload(request, settings, min_images=2, max_images=settings.max_collection_images,
                               allow_zip=True)
    params = validate_params(CollectionParams, upload.params)
    if params.labels is not None and len(params.labels) != len(upload.images):
        raise ProblemError(422, "bad-labels", f"{len(params.labels)} labels for {len(upload.images)} images")
    blobs = await run_in_threadpool(lambda: [stored_png(d) for d in upload.images])
    rec = await run_in_threadpool(store.create, current_principal(request).owner, blobs, params.labels,
                                  settings.artifact_ttl_s)
    return Response(_info(rec).model_dump_json(), status_code=201, media_type="application/json",
                    headers={"Location": f"/v1/collections/{rec['id']}"})


@router.get("/{cid}", response_model=CollectionInfo, responses=PROBLEM_RESPONSES, summary="A collection's metadata")
def get_collection(request: Request, cid: str = COLLECTION_ID) -> CollectionInfo:
    return _info(owned_collection(request, cid))


def identify_query(model: Any, store: CollectionStore, rec: dict[str, Any], query: Any, how: Embedding,
                   params: IdentifyParams, budget: float) -> IdentifyResponse:
    """Embed the gallery once (then cached in Redis beside the collection) and search it 1:K."""
    gallery_e = store.get_embeddings(rec["id"], model.name, how.cache_key)
    cached = gallery_e is not None
    if gallery_e is None:
        if rec["count"] > budget:
            raise ProblemError(409, "gallery-not-enrolled", "This gallery is too large to embed inline",
                               "Run a collection job with view=enroll first; identification then uses its cache.")
        images = [decode_rgb(b) for b in store.images(rec["id"], int(rec["count"]))]
        gallery_e = how.embed(images)
        store.put_embeddings(rec["id"], model.name, how.cache_key, gallery_e)
    gallery = Gallery()
    gallery.enroll(rec["labels"], gallery_e)
    q = how.embed([query])[0]
    threshold = params.threshold if params.threshold is not None else how.threshold
    ident = gallery.identify(q, threshold, params.k)
    return IdentifyResponse(model=model.name, layer=how.layer, head=how.head, label=ident.label,
                            distance=ident.distance, threshold=threshold, enrolled=len(gallery), cached=cached,
                            candidates=[Candidate(label=lb, distance=d) for lb, d in ident.candidates])


@router.post("/{cid}/identify", response_model=IdentifyResponse, responses=PROBLEM_RESPONSES,
             openapi_extra=upload_body("#/components/schemas/IdentifyParams", "One query image and params."),
             summary="1:K identification against a labelled collection; 'unknown' when nothing is close")
async def identify(request: Request, cid: str = COLLECTION_ID, model: str = Query(None, max_length=100),
                   settings: Settings = Depends(get_settings)) -> IdentifyResponse:
    rec = owned_collection(request, cid)
    if not rec.get("labels"):
        raise ProblemError(422, "missing-labels", "Identification needs a collection uploaded with labels")
    upload = await read_upload(request, settings, min_images=1, max_images=1)
    params = validate_params(IdentifyParams, upload.params)
    loaded = lookup_model(request.app.state.catalog, model or request.app.state.catalog.default)
    how = await run_in_threadpool(resolve_embedding, request, loaded, params.layer, params.size, params.head)
    query = image_to_tensor(upload.images[0].image)
    return await run_in_threadpool(identify_query, loaded, collection_store(request), rec, query, how, params,
                                   settings.inline_budget)


@router.delete("/{cid}", status_code=204, responses=PROBLEM_RESPONSES, summary="Delete a collection")
def delete_collection(request: Request, cid: str = COLLECTION_ID) -> Response:
    rec = owned_collection(request, cid)
    collection_store(request).delete(cid, int(rec["count"]))
    return Response(status_code=204)
