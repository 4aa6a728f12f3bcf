"""HTTP answers of signal and volume models: explain and predict (the routes hand over here by input kind).

JSON by default; ``Accept: image/png`` gives the first map's picture (a signal plot, or a volume's
three slices), ``Accept: application/x-nifti`` a volume's first map as ``.nii.gz`` in the input's own
affine (the file 3D Slicer or ITK-SNAP lays over the scan). The torch work runs on a compute lane.
"""

from __future__ import annotations

import base64
import json
import time

from fastapi import Request, Response

from cnnviz.models import LoadedModel
from core.errors import Invalid, NotAcceptable, TooLarge
from core.explaining import check_explain
from core.lanes import ComputeLanes
from core.nd_explaining import NIFTI_MEDIA_TYPE, decoded_summary, predict_arrays, run_nd_explanation
from core.nd_inspecting import ND_VIEWS, nd_activations, nd_filters
from core.schemas.inspect import ActivationsParams, FiltersParams
from core.schemas.models import PredictParams
from core.settings import Settings
from core.validation import validate_params
from service.nd_uploads import read_array_upload


async def explain_arrays(request: Request, model: LoadedModel, settings: Settings, method: str,
                         lanes: ComputeLanes) -> Response:
    upload = await read_array_upload(request, settings, model)
    checked = check_explain(model, method, upload.params, len(upload.inputs))
    if checked.cost > settings.inline_budget:  # no job hand-off for signals and volumes yet: refuse, never unbounded
        raise TooLarge("over-inline-budget", f"This request costs about {checked.cost:.0f} forward passes; signal and"
                       f" volume explanations answer inline only, up to {settings.inline_budget:.0f}",
                       "lower masks, samples or steps, or raise the window and stride", cost=round(checked.cost, 1),
                       budget=settings.inline_budget)
    accept = request.headers.get("accept", "")
    nifti = NIFTI_MEDIA_TYPE in accept
    if nifti and model.input_kind != "volume":
        raise NotAcceptable("not-acceptable", f"{NIFTI_MEDIA_TYPE} is a volume's map; model {model.name} takes"
                            f" {model.input_kind}s", "ask application/json or image/png")
    answer = await lanes.arun(lambda: run_nd_explanation(model, checked, upload.inputs, decode_ms=upload.decode_ms,
                                                         nifti=nifti))
    if nifti and answer.first_nifti is not None:
        return Response(answer.first_nifti, media_type=NIFTI_MEDIA_TYPE,
                        headers={"Content-Disposition": f'attachment; filename="{model.name}-{method}.nii.gz"'})
    if "image/png" in accept and answer.first_png is not None:
        return Response(answer.first_png, media_type="image/png")
    return Response(answer.response.model_dump_json(), media_type="application/json")


async def predict_for_arrays(request: Request, model: LoadedModel, settings: Settings, lanes: ComputeLanes) -> Response:
    upload = await read_array_upload(request, settings, model)
    params = validate_params(PredictParams, upload.params)
    t0 = time.perf_counter()
    preds = await lanes.arun(lambda: predict_arrays(model, upload.inputs, params.top_k or 5))
    body = {"model": model.name, "input_kind": model.input_kind, "input_shape": list(model.spec.input_shape),
            "inputs": [{"index": i, **decoded_summary(d), "predictions": [p.model_dump() for p in ps]}
                       for i, (d, ps) in enumerate(zip(upload.inputs, preds, strict=True))],
            "timings": {"decode_ms": upload.decode_ms, "compute_ms": (time.perf_counter() - t0) * 1000}}
    return Response(json.dumps(body), media_type="application/json")


async def inspect_for_arrays(request: Request, model: LoadedModel, settings: Settings, view: str,
                             lanes: ComputeLanes) -> Response:
    """The filters and activations views of a signal or volume model (other views take images)."""
    if view not in ND_VIEWS:
        raise Invalid("view-unavailable", f"view {view!r} takes images; model {model.name} takes {model.input_kind}s",
                      f"views of {model.input_kind} models: {', '.join(ND_VIEWS)}", choices=list(ND_VIEWS))
    if view == "filters":
        params = validate_params(FiltersParams, await _params_only(request))
        body = await lanes.arun(lambda: nd_filters(model, params))
    else:
        upload = await read_array_upload(request, settings, model)
        if len(upload.inputs) != 1:
            raise Invalid("wrong-image-count", "activations take one input", limit=1)
        aparams = validate_params(ActivationsParams, upload.params)
        body = await lanes.arun(lambda: nd_activations(model, upload.inputs, aparams))
    if "image/png" in request.headers.get("accept", ""):
        return Response(base64.b64decode(body["plot_png"]), media_type="image/png")
    return Response(json.dumps(body), media_type="application/json")


async def _params_only(request: Request) -> dict:
    """The params of a request without files (JSON body, or a multipart params field)."""
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/form-data"):
        form = await request.form(max_files=1, max_fields=4)
        text = form.get("params")
        return json.loads(text) if isinstance(text, str) and text.strip() else {}
    raw = (await request.body()).decode("utf-8", "replace").strip()
    body = json.loads(raw) if raw else {}
    if not isinstance(body, dict):
        raise Invalid("invalid-json", "The JSON body must be an object with params")
    return body.get("params") or {}
