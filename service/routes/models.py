"""The model catalog and top-k predictions."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request, Response

from cnnviz.attribution import METHODS
from cnnviz.models import Catalog, LoadedModel
from core.detecting import predict_detections
from core.errors import Invalid
from core.imaging import image_to_tensor
from core.lanes import ComputeLanes
from core.schemas.models import (
    Detection,
    ImagePredictions,
    LayerOut,
    ModelDetail,
    ModelList,
    ModelSummary,
    PredictParams,
    PredictResponse,
    Segmentation,
)
from core.segmenting import predict_segmentation
from core.validation import validate_params
from service.deps import CatalogDep, CompiledDep, InlineDep, LanesDep, ModelDep, PrincipalDep, SettingsDep
from service.nd_answers import predict_for_arrays
from service.openapi_parts import PROBLEM_RESPONSES, upload_body
from service.serving import PREDICT_DECODE_SIDE, predict_answer
from service.uploads import Upload, read_upload

router = APIRouter(prefix="/v1/models", tags=["models"])


def _summary(catalog: Catalog, name: str) -> ModelSummary:
    spec = catalog.specs[name]
    return ModelSummary(name=name, task=spec.task, arch=spec.arch, description=spec.description,
                        input_size=spec.input_size, num_labels=spec.num_classes, default=name == catalog.default,
                        loaded=catalog.is_loaded(name), input=spec.input, input_shape=list(spec.input_shape))


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
             summary="Top-k classes, a detector's boxes, or a segmenter's label map and class areas per image")
async def predict(request: Request, model: ModelDep, settings: SettingsDep, lanes: LanesDep,
                  compiled: CompiledDep, inline: InlineDep, principal: PrincipalDep) -> Response:
    if model.input_kind != "image":  # a signal or volume model (core/inputkinds.py)
        return await predict_for_arrays(request, model, settings, lanes)
    # Classification needs the network input only (resolution <= 1024): decode at most that large.
    upload = await read_upload(request, settings, max_side=min(settings.max_decode_side, PREDICT_DECODE_SIDE))
    params = validate_params(PredictParams, upload.params)
    if not model.classifier:  # a detector's boxes or a segmenter's label map
        t0 = time.perf_counter()
        return await _predict_task(model, upload, params, params.resolution or model.preprocessing.input_size,
                                   lanes, t0)
    answer = await predict_answer(model, upload, params, settings, lanes, compiled, inline, principal.owner)
    # Built and checked once here; returned as bytes so FastAPI does not validate and encode it again.
    return Response(answer.model_dump_json(exclude_none=True), media_type="application/json")


async def _predict_task(model: LoadedModel, upload: Upload, params: PredictParams, size: int, lanes: ComputeLanes,
                        t0: float) -> Response:
    """Predict for a detector (boxes in the original image's pixels) or a segmenter (its label map and areas)."""
    if model.task == "segmentation":
        def segment() -> list[Segmentation]:
            return predict_segmentation(model, [image_to_tensor(d.image) for d in upload.images],
                                        [(d.height, d.width) for d in upload.images], size, params.masks)

        segs = await lanes.arun(segment)
        answer = PredictResponse(
            model=model.name, task=model.task, input_size=(size, size), forward="eager",
            images=[ImagePredictions(index=i, width=d.width, height=d.height, segmentation=seg)
                    for i, (d, seg) in enumerate(zip(upload.images, segs, strict=True))],
            timings={"decode_ms": upload.decode_ms, "compute_ms": (time.perf_counter() - t0) * 1000})
        return Response(answer.model_dump_json(), media_type="application/json")
    if model.task != "detection":
        raise Invalid("task-unsupported", f"predict does not answer for {model.task} models yet",
                      f"model {model.name} is a {model.task} model")

    def compute() -> tuple[list[list[Detection]], list[str]]:
        return predict_detections(model, [image_to_tensor(d.image) for d in upload.images], size, params.resize,
                                  params.score_threshold, params.top_k)

    dets, warnings = await lanes.arun(compute)
    answer = PredictResponse(
        model=model.name, task=model.task, input_size=(size, size), forward="eager", warnings=warnings,
        images=[ImagePredictions(index=i, width=d.width, height=d.height, detections=found)
                for i, (d, found) in enumerate(zip(upload.images, dets, strict=True))],
        timings={"decode_ms": upload.decode_ms, "compute_ms": (time.perf_counter() - t0) * 1000})
    return Response(answer.model_dump_json(), media_type="application/json")
