"""Predict and explain answers shared by the native routes and the serving protocols (KServe V1, V2).

A protocol route only translates: its body into an :class:`~service.uploads.Upload` and a params
dict, then one of these, then the answer into its own shape. Limits, prices, admission and the
compute lanes are therefore the native routes' own, whichever protocol a client speaks.
"""

from __future__ import annotations

import time

import torch
from fastapi import Response

from cnnviz.models import LoadedModel
from core.compiled import CompiledForwards
from core.explaining import check_explain
from core.imaging import image_to_tensor
from core.lanes import ComputeLanes
from core.predicting import check_predict_explain, predict_images, predictions_from
from core.schemas.explain import ExplainResponse
from core.schemas.models import ImagePredictions, Prediction, PredictParams, PredictResponse
from core.settings import Settings
from service.auth import Principal
from service.inline_explain import InlineExplainer
from service.job_client import JobClient
from service.submission import hand_off_explain, hands_off
from service.uploads import Upload

PREDICT_DECODE_SIDE = 1024  # the largest network input PredictParams.resolution allows: predict decodes no larger


async def predict_answer(model: LoadedModel, upload: Upload, params: PredictParams, settings: Settings,
                         lanes: ComputeLanes, compiled: CompiledForwards, inline: InlineExplainer, owner: str,
                         tensors: list[torch.Tensor] | None = None) -> PredictResponse:
    """Top-k classes per image; with ``params.explain``, their maps from the same forward pass.

    ``tensors`` (``[3,H,W]`` in [0,1], one per image) are the pixels exactly as a client sent them
    (V2 FP32 inputs); the prediction then uses them rather than the 8-bit ``upload.images``.
    With ``explain`` the request is priced as the explanation it is and admitted like one
    (the inline budget: over it a 422 ``over-inline-budget``, since a prediction has no job form).
    """
    t0 = time.perf_counter()
    if params.explain is not None:
        checked = check_predict_explain(model, params, len(upload.images))
        answer = await inline.answer(model, checked, upload, settings, None, owner)
        ran = answer.details.get("forward")
        return PredictResponse(
            model=model.name, input_size=answer.input_size, forward=ran if ran in ("compiled", "eager") else "eager",
            images=[ImagePredictions(index=i, width=d.width, height=d.height, predictions=p, maps=m)
                    for i, (d, (p, m)) in enumerate(zip(upload.images, predictions_from(answer), strict=True))],
            timings={"decode_ms": upload.decode_ms, "compute_ms": (time.perf_counter() - t0) * 1000},
            method=answer.method, layer=answer.layer)
    size = params.resolution or model.preprocessing.input_size
    compiled.ensure(model)  # the first predict of a model starts its background compile (core/compiled.py)

    def compute() -> tuple[list[list[Prediction]], str]:
        # On a compute lane (core/lanes.py). predict_images fits each image to the network input as the
        # generator hands it over, so only one full-size float tensor exists at a time.
        source = tensors if tensors is not None else (image_to_tensor(d.image) for d in upload.images)
        return predict_images(model, source, params, compiled.forward)

    preds, ran = await lanes.arun(compute)
    return PredictResponse(
        model=model.name, input_size=(size, size), forward=ran,
        images=[ImagePredictions(index=i, width=d.width, height=d.height, predictions=p)
                for i, (d, p) in enumerate(zip(upload.images, preds, strict=True))],
        timings={"decode_ms": upload.decode_ms, "compute_ms": (time.perf_counter() - t0) * 1000})


async def explain_answer(model: LoadedModel, method: str, upload: Upload, settings: Settings,
                         inline: InlineExplainer, principal: Principal, jobs: JobClient | None,
                         *, prefer: str = "", idempotency_key: str | None = None,
                         can_hand_off: bool = True) -> ExplainResponse | Response:
    """An explanation inline, or (``can_hand_off``, over the inline budget) the 202 of the explain job it became.

    Without ``can_hand_off`` (a protocol with no asynchronous form, V2) a request over the budget is
    the native 422 ``over-inline-budget`` naming its price and the budget.
    """
    checked = check_explain(model, method, upload.params, len(upload.images))
    if can_hand_off and jobs is not None and hands_off(checked, settings, prefer):
        return await hand_off_explain(jobs, principal, model, checked, upload.images, settings, idempotency_key)
    return await inline.answer(model, checked, upload, settings, jobs, principal.owner)
