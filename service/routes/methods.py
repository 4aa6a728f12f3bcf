"""``GET /v1/methods``: every explanation method and job type, with its parameter schema and cost."""

from __future__ import annotations

from fastapi import APIRouter

from cnnviz.attribution import METHODS
from core.explaining import method_precisions, offered_kinds
from core.jobtypes import JOB_TYPES
from core.schemas.explain import params_model
from service.deps import CatalogDep, SettingsDep
from service.schemas.methods import MethodInfo, MethodList

router = APIRouter(tags=["explain"])


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
