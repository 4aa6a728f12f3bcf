"""The Open Inference Protocol (V2, KServe's and Triton's): health, model metadata and ``infer``.

``POST /v2/models/{model}/infer`` takes one input: a ``BYTES`` tensor of encoded images (``[N]`` or
``[N,1]``; in JSON each element is base64 text, with the binary tensor extension the image bytes),
or an ``FP32`` tensor ``[N,3,H,W]`` of RGB pixels in [0, 1] (the model's own layout; the service
fits and normalizes it as it does a decoded image). Request ``parameters`` are scalars, as the
protocol wants: ``method`` (absent: a prediction), ``overlay`` (true: the overlay PNG of each map
as a BYTES output), ``params`` (a JSON object as a string, for nested options) and any scalar
field of the native params (``top_k``, ``target``, ``layer``, ``resolution``, a method's own ...).

Outputs: ``probabilities``, ``logits`` (FP32 ``[N,k]``), ``classes`` (INT64) and ``labels``
(BYTES) for a prediction; for an explanation ``maps`` (FP32 ``[N,T,h,w]``, the raw maps),
``classes``, ``labels``, ``scores``, ``probabilities`` (``[N,T]``) and, when asked, ``overlay``
(BYTES ``[N,T]``, PNG). ``outputs`` in the request picks some; each is sent binary where it or
the request's ``binary_data_output`` says so (tritonclient's default). There is no asynchronous
form: an explanation over the inline budget is a 422 ``over-inline-budget`` naming its price.
Errors are ``{"error": "..."}`` with the native status.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import torch
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from PIL import Image

from cnnviz.attribution import METHODS
from core.errors import BadInput, Invalid, TooLarge
from core.imaging import DecodedImage
from core.lookups import known_method
from core.protocols.tensors import HEADER, Tensor, read_inputs, split_body, write_response
from core.schemas.explain import ExplainResponse
from core.schemas.models import PredictParams, PredictResponse
from core.settings import Settings
from core.validation import validate_params
from service.deps import (
    CatalogDep,
    CompiledDep,
    InlineDep,
    LanesDep,
    ModelDep,
    PrincipalDep,
    SettingsDep,
)
from service.serving import PREDICT_DECODE_SIDE, explain_answer, predict_answer
from service.uploads import Upload, decode_upload, parse_json

open_router = APIRouter(tags=["open inference protocol"])  # health: open, as /healthz
router = APIRouter(tags=["open inference protocol"])

SERVER = "cnnviz"
EXTENSIONS = ["binary_tensor_data"]
# Request parameters of the protocol and of tritonclient that are not the service's own.
RESERVED = {"binary_data_output", "sequence_id", "sequence_start", "sequence_end", "priority", "timeout",
            "headers", "triton_enable_empty_final_response"}
PREDICT_OUTPUTS = ("probabilities", "logits", "classes", "labels")
EXPLAIN_OUTPUTS = ("maps", "classes", "labels", "scores", "probabilities", "overlay")
ERROR = {"description": "the protocol's error shape: `{\"error\": \"...\"}`, with the native status",
         "content": {"application/json": {"schema": {"type": "object", "properties": {"error": {"type": "string"}}}}}}
RESPONSES: dict[int | str, dict[str, Any]] = {s: ERROR for s in (400, 401, 404, 413, 422, 503)}


@open_router.get("/v2/health/live", summary="V2 liveness: the process answers")
async def live() -> dict[str, bool]:
    return {"live": True}


@open_router.get("/v2/health/ready", responses={503: {"description": "the default model is not loaded yet"}},
                 summary="V2 readiness: the default model is loaded (V2 needs no job system)")
async def ready(catalog: CatalogDep) -> JSONResponse:
    ok = catalog.is_loaded(catalog.default)
    return JSONResponse({"ready": ok}, status_code=200 if ok else 503)


@router.get("/v2", summary="V2 server metadata")
async def server_metadata(request: Request) -> dict[str, Any]:
    return {"name": SERVER, "version": request.app.version, "extensions": EXTENSIONS}


@router.get("/v2/models/{model}/ready", responses=RESPONSES, summary="V2 model readiness (loads it on first ask)")
async def model_ready(model: ModelDep) -> dict[str, Any]:
    return {"name": model.name, "ready": True}


@router.get("/v2/models/{model}", responses=RESPONSES, summary="V2 model metadata: inputs, outputs, platform")
async def model_metadata(model: ModelDep) -> dict[str, Any]:
    n_cls = model.spec.num_classes
    methods = sorted(n for n, m in METHODS.items() if m.unavailable(model) is None)
    return {
        "name": model.name, "versions": ["1"],
        "platform": "onnxruntime_onnx" if model.spec.arch == "onnx" else "pytorch",
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [-1]},
                   {"name": "input", "datatype": "FP32", "shape": [-1, 3, -1, -1]}],
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, -1]},
                    {"name": "logits", "datatype": "FP32", "shape": [-1, -1]},
                    {"name": "classes", "datatype": "INT64", "shape": [-1, -1]},
                    {"name": "labels", "datatype": "BYTES", "shape": [-1, -1]},
                    {"name": "maps", "datatype": "FP32", "shape": [-1, -1, -1, -1]},
                    {"name": "scores", "datatype": "FP32", "shape": [-1, -1]},
                    {"name": "overlay", "datatype": "BYTES", "shape": [-1, -1]}],
        "parameters": {"input_size": model.preprocessing.input_size, "num_classes": n_cls,
                       "methods": ",".join(methods)},
    }


def _scalar_params(header: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """(the native params, binary_data_output) from the request's parameters."""
    params = header.get("parameters") or {}
    if not isinstance(params, dict):
        raise Invalid("invalid-infer-request", "parameters must be an object")
    binary = bool(params.get("binary_data_output", False))
    native: dict[str, Any] = {}
    nested = params.get("params")
    if nested is not None:
        if not isinstance(nested, str):
            raise Invalid("invalid-params-json", "parameters.params is a JSON object written as a string")
        try:
            native = parse_json(nested)
        except ValueError as exc:
            raise Invalid("invalid-params-json", "parameters.params is not valid JSON", str(exc)) from exc
        if not isinstance(native, dict):
            raise Invalid("invalid-params-json", "parameters.params must be a JSON object")
    for k, v in params.items():
        if k in RESERVED or k == "params":
            continue
        if isinstance(v, (dict, list)):
            raise Invalid("invalid-parameter", f"parameter {k!r}: V2 parameters are scalars; put nested options "
                          "in parameters.params (a JSON string)")
        native[k] = v
    return native, binary


def _images(t: Tensor) -> list[bytes | str]:
    if t.datatype != "BYTES":
        raise Invalid("invalid-tensor", f"input {t.name!r}: images come as BYTES or FP32 [N,3,H,W]", input=t.name)
    if len(t.shape) not in (1, 2) or (len(t.shape) == 2 and t.shape[1] != 1):
        raise Invalid("invalid-tensor", f"input {t.name!r}: a BYTES image input has shape [N] or [N,1], not {t.shape}",
                      input=t.name)
    binary = "binary_data_size" in t.parameters
    assert isinstance(t.data, list)
    # In JSON a BYTES element is text: an image there is its base64.
    return [b if binary else b.decode("utf-8") for b in t.data]


def _pixels(t: Tensor, settings: Settings, side: int) -> tuple[list[DecodedImage], list[torch.Tensor]]:
    """An FP32 ``[N,3,H,W]`` input as images (8-bit, for pictures) and exact tensors, under the same limits."""
    if len(t.shape) != 4 or t.shape[1] != 3:
        raise Invalid("invalid-tensor", f"input {t.name!r}: FP32 pixels have shape [N,3,H,W], not {t.shape}",
                      input=t.name)
    n, _, h, w = t.shape
    if n < 1:
        raise Invalid("missing-image", "At least 1 image required")
    if n > settings.max_images:
        raise TooLarge("too-many-images", f"At most {settings.max_images} images per request",
                       limit=settings.max_images)
    if min(h, w) < 8 or max(h, w) > side:
        raise TooLarge("image-too-large" if max(h, w) > side else "image-too-small",
                       f"input {t.name!r}: each side must be 8..{side} px, got {h}x{w}", limit=side)
    if n * h * w > settings.max_request_pixels:
        raise TooLarge("request-too-many-pixels", "Too many pixels in one request",
                       f"{n} images of {w}x{h} are {n * h * w} pixels; the budget is {settings.max_request_pixels} "
                       "pixels per request.", budget=settings.max_request_pixels, total=n * h * w)
    arr = np.asarray(t.data, dtype=np.float32)
    if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1:
        raise Invalid("invalid-tensor", f"input {t.name!r}: FP32 pixels are finite RGB values in [0, 1]", input=t.name)
    tensors = [torch.from_numpy(arr[i].copy()) for i in range(n)]
    images = [DecodedImage(Image.fromarray((arr[i].transpose(1, 2, 0) * 255).round().astype(np.uint8), "RGB"),
                           "tensor", "RGB", w, h) for i in range(n)]
    return images, tensors


def _predict_outputs(answer: PredictResponse) -> list[Tensor]:
    n, k = len(answer.images), len(answer.images[0].predictions)
    preds = [p for img in answer.images for p in img.predictions]
    out = [Tensor("probabilities", "FP32", [n, k], np.array([p.probability for p in preds], np.float32).reshape(n, k)),
           Tensor("logits", "FP32", [n, k], np.array([p.logit for p in preds], np.float32).reshape(n, k)),
           Tensor("classes", "INT64", [n, k], np.array([p.index for p in preds], np.int64).reshape(n, k)),
           Tensor("labels", "BYTES", [n, k], [p.label.encode("utf-8") for p in preds])]
    if answer.images[0].maps is not None:
        out.append(_maps([[m.map.values for m in img.maps or []] for img in answer.images]))
    return out


def _maps(rows: list[list[Any]]) -> Tensor:
    arr = np.asarray(rows, dtype=np.float32)
    if arr.ndim != 4:
        raise Invalid("maps-not-uniform", "The maps of this request differ in size; ask one image at a time")
    return Tensor("maps", "FP32", list(arr.shape), arr)


def _explain_outputs(answer: ExplainResponse) -> list[Tensor]:
    n, t = len(answer.images), len(answer.images[0].explanations)
    if any(len(img.explanations) != t for img in answer.images):
        raise Invalid("maps-not-uniform", "The images of this request have different numbers of targets")
    exps = [e for img in answer.images for e in img.explanations]
    out = [_maps([[e.map.values for e in img.explanations] for img in answer.images]),
           Tensor("classes", "INT64", [n, t], np.array([e.target.index for e in exps], np.int64).reshape(n, t)),
           Tensor("labels", "BYTES", [n, t], [(e.target.label or "").encode("utf-8") for e in exps]),
           Tensor("scores", "FP32", [n, t], np.array([e.target.score for e in exps], np.float32).reshape(n, t)),
           Tensor("probabilities", "FP32", [n, t], np.array(
               [e.target.probability if e.target.probability is not None else np.nan for e in exps],
               np.float32).reshape(n, t))]
    if all(e.overlay_png for e in exps):
        out.append(Tensor("overlay", "BYTES", [n, t], [base64.b64decode(e.overlay_png or "") for e in exps],
                          text=False))
    return out


def _chosen(header: dict[str, Any], outputs: list[Tensor], binary_default: bool) -> tuple[list[Tensor], set[str]]:
    asked = header.get("outputs")
    if asked is None:
        return outputs, {t.name for t in outputs} if binary_default else set()
    if not isinstance(asked, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str) for o in asked):
        raise Invalid("invalid-infer-request", "outputs must be a list of objects with a name")
    by_name = {t.name: t for t in outputs}
    unknown = [o["name"] for o in asked if o["name"] not in by_name]
    if unknown:
        raise Invalid("unknown-output", f"No output {unknown[0]!r} in this answer", choices=list(by_name))
    binary = {o["name"] for o in asked if (o.get("parameters") or {}).get("binary_data", binary_default)}
    return [by_name[o["name"]] for o in asked], binary


@router.post("/v2/models/{model}/infer", responses=RESPONSES, summary="V2 infer: a prediction, or with "
             "parameters.method an explanation, as tensors",
             openapi_extra={"requestBody": {"required": True, "description": "an inference request; with the "
                            f"binary tensor extension its JSON header is the first `{HEADER}` bytes and the tensors' "
                            "bytes follow", "content": {
                 "application/json": {"schema": {"type": "object", "required": ["inputs"]}}}}})
async def infer(request: Request, model: ModelDep, settings: SettingsDep, lanes: LanesDep, compiled: CompiledDep,
                inline: InlineDep, principal: PrincipalDep) -> Response:
    head, tail = split_body(await request.body(), request.headers.get(HEADER))
    try:
        header = parse_json(head.decode("utf-8"))
    except ValueError as exc:
        raise BadInput("invalid-json", "The inference request header is not valid JSON", str(exc)) from exc
    if not isinstance(header, dict):
        raise Invalid("invalid-infer-request", "The inference request must be a JSON object")
    inputs = read_inputs(header, tail)
    if len(inputs) != 1:
        raise Invalid("invalid-infer-request", f"one input tensor (images), not {len(inputs)}")
    params, binary_default = _scalar_params(header)
    method = params.pop("method", None)
    overlay = params.pop("overlay", False)
    if method is not None and not isinstance(method, str):
        raise Invalid("invalid-parameter", "parameter method is a method name (GET /v1/methods)")
    side = settings.max_decode_side if method else min(settings.max_decode_side, PREDICT_DECODE_SIDE)
    t = inputs[0]
    tensors = None
    if t.datatype == "FP32":
        images, tensors = _pixels(t, settings, side)
        upload = Upload(images, params)
    else:
        raw = _images(t)
        upload = await decode_upload(raw, [None] * len(raw), params, settings, max_side=side)
    if method is None:
        p = validate_params(PredictParams, params)
        answer = await predict_answer(model, upload, p, settings, lanes, compiled, inline, principal.owner,
                                      tensors=tensors)
        outputs = _predict_outputs(answer)
    else:
        known_method(method)
        out = params.setdefault("output", {})
        if not isinstance(out, dict):
            raise Invalid("invalid-parameter", "output must be an object")
        for k, v in {"heatmap": False, "overlay": bool(overlay), "raw": True, "format": "png"}.items():
            out.setdefault(k, v)
        result = await explain_answer(model, method, upload, settings, inline, principal, None, can_hand_off=False)
        assert isinstance(result, ExplainResponse)
        outputs = _explain_outputs(result)
    chosen, binary = _chosen(header, outputs, binary_default)
    body, header_len = write_response(model.name, chosen, binary, header.get("id") if isinstance(
        header.get("id"), str) else None)
    if header_len is None:
        return Response(body, media_type="application/json")
    return Response(body, media_type="application/octet-stream", headers={HEADER: str(header_len)})
