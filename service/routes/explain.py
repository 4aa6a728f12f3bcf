"""``POST /v1/models/{model}/explain/{method}`` and ``GET /v1/methods``."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Path, Request, Response
from starlette.concurrency import run_in_threadpool

from cnnviz.attribution import METHODS
from cnnviz.models import LoadedModel
from workers.jobs.synthesis import resolve

from ..deps import get_model, get_settings
from ..errors import ProblemError
from ..explaining import estimate_cost, first_overlay_png, run_explanation
from ..schemas.explain import ExplainResponse, params_model
from ..schemas.methods import MethodInfo, MethodList
from ..schemas.synthesis import SYNTHESIS_JOBS
from ..schemas.training import TRAINING_JOBS
from ..settings import Settings
from ..uploads import read_upload, validate_params
from .common import PROBLEM_RESPONSES, upload_body
from .jobs import hand_off_explain

router = APIRouter(tags=["explain"])


@router.get("/v1/methods", response_model=MethodList, summary="Every method with its parameter schema and cost")
def list_methods(request: Request) -> MethodList:
    catalog = request.app.state.catalog
    model = catalog.get(catalog.default)
    settings: Settings = request.app.state.settings
    out = []
    for name, m in sorted(METHODS.items()):
        pm = params_model(name)
        cost = m.cost(model, 1, 1, {})
        out.append(MethodInfo(name=name, title=m.title or name, family=m.family, kind="explain",
                              inline=cost <= settings.inline_budget, cost_hint=cost, uses_layer=m.uses_layer,
                              supports_units=m.supports_units, params_schema=pm.model_json_schema()))
    out += job_methods(model)
    return MethodList(methods=out, inline_budget=settings.inline_budget, cost_unit="forward passes at input size")


def job_methods(model: LoadedModel) -> list[MethodInfo]:
    """The optimization and training job types, with their parameters and the cost of their defaults."""
    out = []
    tables = [("synthesis", {k: (v[0], v[2]) for k, v in SYNTHESIS_JOBS.items()}),
              ("training", {k: (v[0], v[2]) for k, v in TRAINING_JOBS.items()})]
    for family, jobs in tables:
        for name, (params, cost_fn) in sorted(jobs.items()):
            try:
                cost = float(resolve(cost_fn)(model))
            except (TypeError, ValueError):  # a parameter without a default (adversarial's target)
                cost = 0.0
            title = (params.__doc__ or name).strip().splitlines()[0]
            out.append(MethodInfo(name=name, title=title, family=family, kind="job", inline=False, cost_hint=cost,
                                  uses_layer=any("layer" in f for f in params.model_fields), supports_units=False,
                                  params_schema=params.model_json_schema()))
    return out


@router.post("/v1/models/{model}/explain/{method}", response_model=ExplainResponse,
             responses={**PROBLEM_RESPONSES, 200: {"content": {"image/png": {}}}},
             openapi_extra=upload_body("#/components/schemas/ExplainParams"),
             summary="Explanation maps per image and target")
async def explain(request: Request, method: str = Path(..., max_length=64),
                  model: LoadedModel = Depends(get_model), settings: Settings = Depends(get_settings)) -> Response:
    if method not in METHODS:
        raise ProblemError(404, "unknown-method", f"No method named {method!r}", choices=sorted(METHODS))
    upload = await read_upload(request, settings)
    params = validate_params(params_model(method), upload.params)
    cost = estimate_cost(model, method, params, len(upload.images))
    wants_async = "respond-async" in request.headers.get("prefer", "").lower()
    if (cost > settings.inline_budget or wants_async) and getattr(request.app.state, "jobs", None) is not None:
        return await hand_off_explain(request, model.name, method, upload.images, upload.params, cost, settings)
    if cost > settings.inline_budget:
        raise ProblemError(422, "over-inline-budget", "This request is too expensive to answer inline",
                           f"estimated {cost:.0f} forward passes, inline budget {settings.inline_budget:.0f}",
                           estimate=cost, budget=settings.inline_budget)
    if "image/png" in request.headers.get("accept", ""):
        png = await run_in_threadpool(first_overlay_png, model, method, upload.images, params)
        return Response(png, media_type="image/png")
    answer = await run_in_threadpool(run_explanation, model, method, upload.images, params, upload.decode_ms)
    return Response(answer.model_dump_json(), media_type="application/json")
