"""The FastAPI application: settings, catalog, routes, error handlers and middleware in one place."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI

from cnnviz.models import Catalog
from core.batching import ExplainBatcher
from core.compiled import CompiledForwards
from core.explaining import warm_model
from core.jobtypes import JOB_REQUEST, JOB_REQUESTS
from core.lanes import shared_lanes
from core.schemas.collections import CollectionParams, IdentifyParams
from core.schemas.explain import METHOD_PARAMS, ExplainParams
from core.schemas.models import PredictParams
from core.schemas.training import StyleApplyParams
from core.settings import Settings, get_settings
from core.store.census import log_restored
from service.auth import require_api_key
from service.errors import install_handlers
from service.explorer import install_explorer
from service.middleware import BodyLimitMiddleware, MetricsMiddleware
from service.openapi_doc import install_openapi
from service.routes import collections, explain, health, inspect, jobs, kserve_v1, methods, models, oip_v2, trained

log = logging.getLogger(__name__)

API_VERSION = "1.0.0"


def create_app(settings: Settings | None = None, catalog: Catalog | None = None) -> FastAPI:
    """Build the app. The catalog is loaded eagerly so a bad weights file fails start-up."""
    settings = settings or get_settings()
    # Every torch call of this process runs on these lanes, loading included (core/lanes.py says why).
    lanes = shared_lanes(settings.inline_slots, settings.torch_threads,
                         elastic=settings.elastic_lanes and settings.inline_slots is None)
    if catalog is None:
        catalog = lanes.run(Catalog.open, settings.models_file, settings.device, settings.default_model)
    if settings.preload_models:
        lanes.run(catalog.load_all)
        for name in catalog.specs:
            if catalog.is_loaded(name):
                lanes.run(warm_model, catalog.get(name))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        jobs = getattr(app.state, "jobs", None)
        reaper = asyncio.create_task(jobs.reaper.run()) if jobs is not None else None  # dead workers' jobs
        # What a durable Redis kept from earlier runs, said once; off the loop, never delaying start-up.
        census = asyncio.create_task(asyncio.to_thread(log_restored, jobs.redis, jobs.config.prefix)) \
            if jobs is not None else None
        yield
        for task in (reaper, census):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if jobs is not None:
            await jobs.aclose()

    app = FastAPI(title="cnnviz", version=API_VERSION, lifespan=lifespan,
                  description="What a convolutional network sees: explanations, internals and synthesis.")
    app.state.settings = settings
    app.state.catalog = catalog
    app.state.lanes = lanes
    app.state.compiled = CompiledForwards(settings.compile_predict, lanes.widths)
    if settings.preload_models:
        app.state.compiled.ensure(catalog.get(catalog.default))  # loaded above: starts its compile in the background
    app.state.batcher = ExplainBatcher(settings.batch_wait_ms / 1000, settings.batch_max_images,
                                       lanes.lanes, settings.inline_max_requests,
                                       settings.inline_retry_after_s, on_batch=explain.observe_batch, run=lanes.run,
                                       layer_forward=app.state.compiled.layer_forward)
    install_handlers(app)
    if settings.redis_url:
        from service.job_client import JobClient

        app.state.jobs = JobClient(settings)  # connects lazily: a down Redis never blocks start-up
    keyed = [Depends(require_api_key)]  # every /v1 route; health and metrics stay open
    app.include_router(health.router)
    app.include_router(kserve_v1.router, dependencies=keyed)  # before models: /v1/models/{model}:predict
    app.include_router(models.router, dependencies=keyed)
    app.include_router(methods.router, dependencies=keyed)
    app.include_router(explain.router, dependencies=keyed)
    app.include_router(jobs.router, dependencies=keyed)
    app.include_router(inspect.router, dependencies=keyed)
    app.include_router(collections.router, dependencies=keyed)
    app.include_router(trained.router, dependencies=keyed)
    app.include_router(oip_v2.open_router)  # V2 health, open like /healthz (probes carry no key)
    app.include_router(oip_v2.router, dependencies=keyed)
    install_explorer(app)  # /ui/ explorer, / redirect, offline /docs and /redoc (service/explorer.py)
    install_openapi(app, [ExplainParams, PredictParams, CollectionParams, IdentifyParams, StyleApplyParams,
                          *METHOD_PARAMS.values(), *JOB_REQUESTS.values()], {"JobRequest": JOB_REQUEST})
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes, body_timeout_s=settings.body_timeout_s)
    app.add_middleware(MetricsMiddleware)
    return app
