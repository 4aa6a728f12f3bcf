"""KServe's V1 data plane: ``POST /v1/models/{model}:predict`` and ``:explain`` with ``{"instances": [...]}``.

An instance is an image: ``{"b64": "..."}`` (KServe's and TF Serving's convention), the same under
``image`` or ``image_bytes``, or a bare base64 string. ``parameters`` holds what the native routes'
``params`` hold: predict's (``top_k``, ``resolution``, ``resize``, ``explain``) or, for ``:explain``,
``method`` plus that method's explain parameters. The answers are ``{"predictions": [...]}`` (one
entry per instance, as the native predict's ``images``) and ``{"explanations": [...]}`` (as the
native explain's ``images``); an explanation over the inline budget is the native 202 with the
explain job. Errors are ``{"error": "..."}`` with the native status (``service.errors``). The
readiness of a model is ``GET /v1/models/{model}`` (its ``name`` and ``ready`` fields).
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request, Response

from core.errors import Invalid
from core.lookups import known_method
from core.schemas.models import PredictParams
from core.validation import validate_params
from service.deps import CompiledDep, InlineDep, LanesDep, ModelDep, OptionalJobsDep, PrincipalDep, SettingsDep
from service.serving import PREDICT_DECODE_SIDE, explain_answer, predict_answer
from service.uploads import Upload, decode_upload, parse_json

router = APIRouter(tags=["kserve"])

ERROR = {"description": "KServe's error shape: `{\"error\": \"...\"}`, with the native route's status",
         "content": {"application/json": {"schema": {"type": "object", "properties": {"error": {"type": "string"}}}}}}
RESPONSES: dict[int | str, dict[str, Any]] = {s: ERROR for s in (400, 401, 404, 413, 415, 422, 503)}
V1_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "required": ["instances"],
    "properties": {"instances": {"type": "array", "items": {"oneOf": [
        {"type": "object", "properties": {"b64": {"type": "string"}}}, {"type": "string"}]}},
        "parameters": {"type": "object"}}}}}}}


def _instance(i: int, item: Any) -> str:
    """The base64 text of instance ``i``."""
    if isinstance(item, str):
        return item
    if isinstance(item, dict):
        for key in ("image", "image_bytes"):
            if isinstance(item.get(key), dict):
                item = item[key]
        if isinstance(item.get("b64"), str) and set(item) == {"b64"}:
            return item["b64"]
    raise Invalid("invalid-instance", f"instances[{i}] is not an image: send {{\"b64\": \"<base64>\"}} or a base64 "
                  "string", index=i)


async def _read(request: Request, settings: Any, max_side: int | None = None) -> Upload:
    raw = await request.body()
    # The body is JSON whatever its Content-Type says (KServe reads it so; `curl -d` sends a form type).
    try:
        body = parse_json(raw.decode("utf-8")) if raw.strip() else {}
    except ValueError as exc:
        raise Invalid("invalid-json", "The request body is not valid JSON", str(exc)) from exc
    if not isinstance(body, dict) or not isinstance(body.get("instances"), list):
        raise Invalid("invalid-instances", "The body must be an object with an instances list")
    unknown = set(body) - {"instances", "parameters"}
    if unknown:
        raise Invalid("unknown-body-field", f"Unknown body fields: {sorted(unknown)}",
                      valid=["instances", "parameters"])
    params = body.get("parameters") or {}
    if not isinstance(params, dict):
        raise Invalid("invalid-params-json", "parameters must be a JSON object")
    images: list[bytes | str] = [_instance(i, x) for i, x in enumerate(body["instances"])]
    return await decode_upload(images, [None] * len(images), params, settings, max_side=max_side)


@router.post("/v1/models/{model}:predict", responses=RESPONSES, openapi_extra=V1_BODY,
             summary="KServe V1 predict: top-k classes per instance (and their CAM maps with explain)")
async def v1_predict(request: Request, model: ModelDep, settings: SettingsDep, lanes: LanesDep,
                     compiled: CompiledDep, inline: InlineDep, principal: PrincipalDep) -> Response:
    upload = await _read(request, settings, max_side=min(settings.max_decode_side, PREDICT_DECODE_SIDE))
    params = validate_params(PredictParams, upload.params)
    answer = await predict_answer(model, upload, params, settings, lanes, compiled, inline, principal.owner)
    out = answer.model_dump(mode="json", exclude_none=True)
    return _json({"predictions": out.pop("images"), **out})


@router.post("/v1/models/{model}:explain", responses={**RESPONSES, 202: {
                 "description": "over the inline budget (or `Prefer: respond-async`): the explain job, as the native "
                                "explain route answers it; follow Location"}},
             openapi_extra=V1_BODY, summary="KServe V1 explain: maps per instance; parameters.method names the method")
async def v1_explain(request: Request, model: ModelDep, settings: SettingsDep, principal: PrincipalDep,
                     jobs: OptionalJobsDep, inline: InlineDep) -> Response:
    upload = await _read(request, settings)
    method = upload.params.pop("method", None)
    if not isinstance(method, str):
        raise Invalid("missing-method", "parameters.method names the explanation method (GET /v1/methods)")
    known_method(method)
    answer = await explain_answer(model, method, upload, settings, inline, principal, jobs,
                                  prefer=request.headers.get("prefer", ""),
                                  idempotency_key=request.headers.get("idempotency-key"))
    if isinstance(answer, Response):
        return answer  # the 202 of the explain job
    out = answer.model_dump(mode="json", exclude_none=True)
    return _json({"explanations": out.pop("images"), **out})


def _json(body: dict[str, Any]) -> Response:
    return Response(json.dumps(body, separators=(",", ":")), media_type="application/json")
