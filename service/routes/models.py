"""The model catalog and top-k predictions."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from cnnviz.attribution import METHODS
from cnnviz.models import Catalog
from core.schemas.models import LayerOut, ModelDetail, ModelList, ModelSummary, PredictParams, PredictResponse
from core.validation import validate_params
from service.deps import CatalogDep, CompiledDep, InlineDep, LanesDep, ModelDep, PrincipalDep, SettingsDep
from service.nd_answers import predict_for_arrays
from service.openapi_parts import PROBLEM_RESPONSES, upload_body
from service.serving import PREDICT_DECODE_SIDE, predict_answer
from service.uploads import read_upload

router = APIRouter(prefix="/v1/models", tags=["models"])


def _summary(catalog: Catalog, name: str) -> ModelSummary:
    spec = catalog.specs[name]
    return ModelSummary(name=name, arch=spec.arch, description=spec.description, input_size=spec.input_size,
                        num_labels=spec.num_classes, default=name == catalog.default, loaded=catalog.is_loaded(name),
                        input=spec.input, input_shape=list(spec.input_shape))


@router.get("", response_model=ModelList, summary="The model catalog")
def list_models(catalog: CatalogDep) -> ModelList:
    return ModelList(models=[_summary(catalog, n) for n in catalog.names()], default=catalog.default)


@router.get("/{model}", response_model=ModelDetail, responses=PROBLEM_RESPONSES,
            summary="Input size, labels, layers with output shapes, default target layer")
def model_detail(model: ModelDep, catalog: CatalogDep, compiled: CompiledDep) -> ModelDetail:
    s = _summary(catalog, model.name)
    state, reason = compiled.state(model)
    return ModelDetail(
        **s.model_dump(), mean=model.spec.mean, std=model.spec.std, default_layer=model.default_layer,
        layers=[LayerOut(name=li.name, kind=li.kind, output_shape=list(li.output_shape) if li.output_shape else None,
                         spatial=li.spatial, grid=li.grid, usable_by=li.usable_by(model.gradients))
                for li in model.layers],
        labels=list(model.labels), head=model.head, gradients=model.gradients,
        methods=sorted(name for name, m in METHODS.items() if m.unavailable(model) is None),
        compiled=state, compiled_reason=reason)


@router.post("/{model}/predict", response_model=PredictResponse, responses=PROBLEM_RESPONSES,
             openapi_extra=upload_body("#/components/schemas/PredictParams", max_images=16),
             summary="Top-k classes per image")
async def predict(request: Request, model: ModelDep, settings: SettingsDep, lanes: LanesDep,
                  compiled: CompiledDep, inline: InlineDep, principal: PrincipalDep) -> Response:
    if model.input_kind != "image":  # a signal or volume model (core/inputkinds.py)
        return await predict_for_arrays(request, model, settings, lanes)
    # Classification needs the network input only (resolution <= 1024): decode at most that large.
    upload = await read_upload(request, settings, max_side=min(settings.max_decode_side, PREDICT_DECODE_SIDE))
    params = validate_params(PredictParams, upload.params)
    answer = await predict_answer(model, upload, params, settings, lanes, compiled, inline, principal.owner)
    # Built and checked once here; returned as bytes so FastAPI does not validate and encode it again.
    return Response(answer.model_dump_json(exclude_none=True), media_type="application/json")
