"""What routes receive as dependencies: settings, the catalog, the caller, the stores, owned things.

Every route gets these with ``Annotated[..., Depends(...)]`` aliases, so a route body never reads
``request.app.state`` or authenticates by hand, and a test can override any one of them. The
inline explainer (``InlineDep``) holds the batcher, the compute lanes and the compiled forwards, so
the explain route neither reads them from the app nor schedules an explanation on threads itself.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Path, Request

from cnnviz.models import Catalog, LoadedModel
from core.batching import ExplainBatcher
from core.compiled import CompiledForwards
from core.errors import jobs_unavailable
from core.explaining import warm_model
from core.jobtypes import SubmitContext
from core.lanes import ComputeLanes
from core.lookups import known_method, lookup_model, owned_collection
from core.settings import Settings
from core.store.collections import CollectionStore
from core.store.job_records import ACTIVE
from core.store.trained import TrainedStore
from service.auth import Principal, current_principal
from service.inline_explain import InlineExplainer
from service.job_client import JobClient


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_catalog(request: Request) -> Catalog:
    return request.app.state.catalog


async def get_principal(request: Request) -> Principal:
    return current_principal(request)


async def get_lanes(request: Request) -> ComputeLanes:
    return request.app.state.lanes


async def get_compiled(request: Request) -> CompiledForwards:
    return request.app.state.compiled


async def get_batcher(request: Request) -> ExplainBatcher:
    return request.app.state.batcher


async def get_method_name(method: str = Path(..., max_length=64)) -> str:
    """The explanation method named in the path; 404 with the closest names before the body is read."""
    known_method(method)
    return method


async def get_model(catalog: Annotated[Catalog, Depends(get_catalog)],
                    lanes: Annotated[ComputeLanes, Depends(get_lanes)],
                    model: str = Path(..., max_length=100)) -> LoadedModel:
    if model in catalog.specs and catalog.is_loaded(model):
        return lookup_model(catalog, model)
    # A first load runs forwards, and its warm-up traces the network: on a lane (core/lanes.py).
    return await lanes.arun(lambda: warm_model(lookup_model(catalog, model)))


async def get_jobs(request: Request) -> JobClient:
    jobs = getattr(request.app.state, "jobs", None)
    if jobs is None:
        raise jobs_unavailable("This service runs without a job system (no Redis configured).")
    return jobs


async def get_optional_jobs(request: Request) -> JobClient | None:
    """The job client, or None when the service runs without Redis (inline routes still work)."""
    return getattr(request.app.state, "jobs", None)


SettingsDep = Annotated[Settings, Depends(get_settings)]
OptionalJobsDep = Annotated[JobClient | None, Depends(get_optional_jobs)]
CatalogDep = Annotated[Catalog, Depends(get_catalog)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]
ModelDep = Annotated[LoadedModel, Depends(get_model)]
LanesDep = Annotated[ComputeLanes, Depends(get_lanes)]
CompiledDep = Annotated[CompiledForwards, Depends(get_compiled)]
JobsDep = Annotated[JobClient, Depends(get_jobs)]
BatcherDep = Annotated[ExplainBatcher, Depends(get_batcher)]
MethodDep = Annotated[str, Depends(get_method_name)]


async def get_inline_explainer(batcher: BatcherDep, lanes: LanesDep, compiled: CompiledDep) -> InlineExplainer:
    return InlineExplainer(batcher, lanes, compiled)


InlineDep = Annotated[InlineExplainer, Depends(get_inline_explainer)]


async def get_collections(jobs: JobsDep) -> CollectionStore:
    return CollectionStore(jobs.redis, jobs.config.prefix)


async def get_trained(jobs: JobsDep) -> TrainedStore:
    return TrainedStore(jobs.redis, jobs.config.prefix)


CollectionsDep = Annotated[CollectionStore, Depends(get_collections)]
TrainedDep = Annotated[TrainedStore, Depends(get_trained)]
COLLECTION_ID = Path(..., min_length=1, max_length=64, pattern=r"^[a-f0-9]+$")


def get_owned_collection(collections: CollectionsDep, principal: PrincipalDep, jobs: JobsDep,
                         cid: str = COLLECTION_ID) -> dict[str, Any]:
    """The caller's collection named in the path; another key's or an unknown id is 404."""
    with jobs.guard():
        return owned_collection(collections, principal.owner, cid)


OwnedCollectionDep = Annotated[dict[str, Any], Depends(get_owned_collection)]


def get_submit_context(catalog: CatalogDep, principal: PrincipalDep, jobs: JobsDep, settings: SettingsDep,
                       collections: CollectionsDep, trained: TrainedDep) -> SubmitContext:
    """What checking a job request needs, for this caller."""

    def is_active(job_id: str) -> bool:
        if not job_id or job_id.startswith("pending"):
            return False
        rec = jobs.find(principal, job_id)
        return rec is not None and rec["status"] in ACTIVE

    return SubmitContext(catalog, principal.owner, collections, trained, is_active,
                         max_trained_per_key=settings.max_trained_per_key, trained_ttl_s=settings.trained_ttl_s,
                         checkpoint_ttl_s=settings.artifact_ttl_s)


SubmitContextDep = Annotated[SubmitContext, Depends(get_submit_context)]
