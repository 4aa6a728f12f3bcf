"""``POST /v1/models/{model}/explain/{method}`` and ``GET /v1/methods``."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Path, Request, Response
from prometheus_client import Counter, Histogram
from starlette.concurrency import run_in_threadpool

from cnnviz.attribution import METHODS
from cnnviz.errors import closest
from core.batching import ExplainBatcher
from core.errors import Invalid, NotFound
from core.explaining import estimate_cost, method_precisions, offered_kinds, png_answer, run_explanation
from core.jobtypes import JOB_TYPES, SubmitContext, parse_job_request
from core.schemas.explain import ExplainResponse, params_model
from core.validation import validate_params
from service.deps import CatalogDep, CompiledDep, LanesDep, ModelDep, OptionalJobsDep, PrincipalDep, SettingsDep
from service.openapi_parts import PROBLEM_RESPONSES, upload_body
from service.schemas.methods import MethodInfo, MethodList
from service.submission import submit_prepared
from service.uploads import read_upload

router = APIRouter(tags=["explain"])

BATCH_REQUESTS = Histogram("cnnviz_inline_batch_requests", "Inline explain requests per engine call",
                           buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32, 64))
BATCHED_IMAGES = Counter("cnnviz_inline_batch_images_total", "Images computed by inline engine calls")


def observe_batch(requests: int, images: int) -> None:
    BATCH_REQUESTS.observe(requests)
    BATCHED_IMAGES.inc(images)


@router.get("/v1/methods", response_model=MethodList, summary="Every method and job type with its parameter "
            "schema and cost")
def list_methods(catalog: CatalogDep, settings: SettingsDep) -> MethodList:
    model = catalog.get(catalog.default)
    out = []
    for name, m in sorted(METHODS.items()):
        cost = m.estimate_cost(model, 1, 1)
        out.append(MethodInfo(name=name, title=m.title or name, family=m.family, kind="explain",
                              inline=cost <= settings.inline_budget, cost_hint=cost, uses_layer=m.uses_layer,
                              supports_units=m.supports_units, map_kinds=list(offered_kinds(name)),
                              precisions=method_precisions(m, model),
                              params_schema=params_model(name).model_json_schema()))
    for name, entry in sorted(JOB_TYPES.items()):  # every type POST /v1/jobs takes, explain and collection too
        out.append(MethodInfo(name=name, title=entry.title, family=entry.family, kind="job", inline=False,
                              cost_hint=entry.default_cost(model), queue=entry.queue, images=entry.images_help,
                              uses_layer=any("layer" in f for f in entry.params.model_fields),
                              supports_units=False, params_schema=entry.params.model_json_schema()))
    return MethodList(methods=out, inline_budget=settings.inline_budget, cost_unit="forward passes at input size")


@router.post("/v1/models/{model}/explain/{method}", response_model=ExplainResponse,
             responses={**PROBLEM_RESPONSES, 503: {
                 "description": "`inline-busy`: too many inline computations in this process; retry after "
                                "`Retry-After` seconds",
                 "content": {"application/problem+json": {"schema": {"type": "object"}}}},
                 200: {
                 "content": {"image/png": {}},
                 "description": "JSON, or with `Accept: image/png` the overlay (one map) or a captioned grid of "
                                "every overlay (several images or targets: one row per image); headers "
                                "`X-Cnnviz-Model`, `X-Cnnviz-Method`, `X-Cnnviz-Layer` and `X-Cnnviz-Tiles` "
                                "(`image:class:label` per tile, comma-separated, labels percent-encoded)",
                 "headers": {h: {"schema": {"type": "string"}} for h in
                             ("X-Cnnviz-Model", "X-Cnnviz-Method", "X-Cnnviz-Layer", "X-Cnnviz-Tiles")}}},
             openapi_extra=upload_body("#/components/schemas/ExplainParams"),
             summary="Explanation maps per image and target")
async def explain(request: Request, model: ModelDep, settings: SettingsDep, catalog: CatalogDep,
                  principal: PrincipalDep, jobs: OptionalJobsDep, lanes: LanesDep, compiled: CompiledDep,
                  method: str = Path(..., max_length=64)) -> Response:
    if method not in METHODS:
        raise NotFound("unknown-method", f"No method named {method!r}", choices=closest(method, sorted(METHODS)))
    upload = await read_upload(request, settings)
    params = validate_params(params_model(method), upload.params)
    cost = estimate_cost(model, method, params, len(upload.images))
    wants_async = "respond-async" in request.headers.get("prefer", "").lower()
    if (cost > settings.inline_budget or wants_async) and jobs is not None:
        # The same request as an explain job: the registry entry checks and prices it again.
        ctx = SubmitContext(catalog, principal.owner)
        job = parse_job_request({"type": "explain", "model": model.name,
                                 "params": {"method": method, "explain": upload.params}})
        prepared = await run_in_threadpool(JOB_TYPES["explain"].check, ctx, job, upload.images)
        return await submit_prepared(jobs, principal, prepared, upload.images, settings,
                                     request.headers.get("idempotency-key"))
    if cost > settings.inline_budget:
        raise Invalid("over-inline-budget", "This request is too expensive to answer inline",
                      f"estimated {cost:.0f} forward passes, inline budget {settings.inline_budget:.0f}",
                      estimate=cost, budget=settings.inline_budget)
    compiled.ensure(model)  # a model's first request starts its background compile (core/compiled.py)
    batcher: ExplainBatcher = request.app.state.batcher
    if "image/png" in request.headers.get("accept", ""):
        with batcher.admit() as ticket:  # 503 inline-busy past the bound; batched with concurrent requests
            png, headers = await run_in_threadpool(png_answer, model, method, upload.images, params, ticket.engine,
                                             lanes.run)
        return Response(png, media_type="image/png", headers=headers)
    if params.output.inline:
        with batcher.admit() as ticket:
            answer = await run_in_threadpool(run_explanation, model, method, upload.images, params,
                                             upload.decode_ms, engine=ticket.engine, lane=lanes.run)
        return Response(answer.model_dump_json(), media_type="application/json")
    if jobs is None:
        raise Invalid("inline-needs-store", "output.inline false needs the job store (Redis), which this "
                      "deployment does not have", "ask for inline pictures (the default output.inline true)")
    # Pictures stored as artifacts of a synthetic finished job of the caller's: same TTL, same owner check.
    answer_id = uuid.uuid4().hex
    stored: list[tuple[str, bytes, str]] = []

    def sink(name: str, data: bytes, media_type: str) -> str:
        stored.append((name, data, media_type))
        return f"/v1/jobs/{answer_id}/artifacts/{name}"

    with batcher.admit() as ticket:
        answer = await run_in_threadpool(run_explanation, model, method, upload.images, params, upload.decode_ms,
                                         sink, engine=ticket.engine, lane=lanes.run)
    with jobs.guard():
        await run_in_threadpool(jobs.store.put_answer_artifacts, answer_id, principal.owner, "explain", model.name,
                                stored, settings.artifact_ttl_s, settings.result_ttl_s)
    return Response(answer.model_dump_json(), media_type="application/json")
