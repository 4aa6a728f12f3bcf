"""The model catalog and top-k predictions."""

from __future__ import annotations

import time

import torch
from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from cnnviz.models import Catalog, LoadedModel

from ..deps import get_catalog, get_model, get_settings
from ..imaging import image_to_tensor
from ..schemas.models import (
    ImagePredictions,
    LayerOut,
    ModelDetail,
    ModelList,
    ModelSummary,
    Prediction,
    PredictParams,
    PredictResponse,
)
from ..settings import Settings
from ..uploads import read_upload, validate_params
from .common import PROBLEM_RESPONSES, upload_body

router = APIRouter(prefix="/v1/models", tags=["models"])


def _summary(catalog: Catalog, name: str) -> ModelSummary:
    spec = catalog.specs[name]
    return ModelSummary(name=name, arch=spec.arch, description=spec.description, input_size=spec.input_size,
                        num_labels=spec.num_classes, default=name == catalog.default, loaded=catalog.is_loaded(name))


@router.get("", response_model=ModelList, summary="The model catalog")
def list_models(catalog: Catalog = Depends(get_catalog)) -> ModelList:
    return ModelList(models=[_summary(catalog, n) for n in catalog.names()], default=catalog.default)


@router.get("/{model}", response_model=ModelDetail, responses=PROBLEM_RESPONSES,
            summary="Input size, labels, layers with output shapes, default target layer")
def model_detail(model: LoadedModel = Depends(get_model), catalog: Catalog = Depends(get_catalog)) -> ModelDetail:
    s = _summary(catalog, model.name)
    return ModelDetail(
        **s.model_dump(), mean=model.spec.mean, std=model.spec.std, default_layer=model.default_layer,
        layers=[LayerOut(name=li.name, kind=li.kind, output_shape=list(li.output_shape) if li.output_shape else None,
                         spatial=li.spatial) for li in model.layers],
        labels=list(model.labels))


def predict_images(model: LoadedModel, tensors: list[torch.Tensor], params: PredictParams) -> list[list[Prediction]]:
    """Top-k classes per image from one batched forward pass."""
    size = params.resolution or model.preprocessing.input_size
    x = model.preprocessing.batch(tensors, size, params.resize, model.device)
    with torch.inference_mode():
        logits = model.module(x).float()
    probs = logits.softmax(1)
    k = min(params.top_k, probs.shape[1])
    top = probs.topk(k, dim=1)
    return [[Prediction(index=int(j), label=model.labels[int(j)], probability=float(p), logit=float(logits[i, j]))
             for p, j in zip(top.values[i], top.indices[i], strict=True)] for i in range(len(tensors))]


@router.post("/{model}/predict", response_model=PredictResponse, responses=PROBLEM_RESPONSES,
             openapi_extra=upload_body("#/components/schemas/PredictParams"), summary="Top-k classes per image")
async def predict(request: Request, model: LoadedModel = Depends(get_model),
                  settings: Settings = Depends(get_settings)) -> PredictResponse:
    upload = await read_upload(request, settings)
    params = validate_params(PredictParams, upload.params)
    t0 = time.perf_counter()
    tensors = [image_to_tensor(d.image) for d in upload.images]
    preds = await run_in_threadpool(predict_images, model, tensors, params)
    size = params.resolution or model.preprocessing.input_size
    return PredictResponse(
        model=model.name, input_size=(size, size),
        images=[ImagePredictions(index=i, width=d.width, height=d.height, predictions=p)
                for i, (d, p) in enumerate(zip(upload.images, preds, strict=True))],
        timings={"decode_ms": upload.decode_ms, "compute_ms": (time.perf_counter() - t0) * 1000})
