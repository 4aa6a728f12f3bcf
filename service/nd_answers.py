"""HTTP answers of signal and volume models: explain and predict (the routes hand over here by input kind).

JSON by default; ``Accept: image/png`` gives the first map's picture (a signal plot, or a volume's
three slices), ``Accept: application/x-nifti`` a volume's first map as ``.nii.gz`` in the input's own
affine (the file 3D Slicer or ITK-SNAP lays over the scan). The torch work runs on a compute lane.
"""

from __future__ import annotations

import json
import time

from fastapi import Request, Response

from cnnviz.models import LoadedModel
from core.errors import NotAcceptable
from core.explaining import check_explain
from core.lanes import ComputeLanes
from core.nd_explaining import NIFTI_MEDIA_TYPE, decoded_summary, predict_arrays, run_nd_explanation
from core.schemas.models import PredictParams
from core.settings import Settings
from core.validation import validate_params
from service.nd_uploads import read_array_upload


async def explain_arrays(request: Request, model: LoadedModel, settings: Settings, method: str,
                         lanes: ComputeLanes) -> Response:
    upload = await read_array_upload(request, settings, model)
    checked = check_explain(model, method, upload.params, len(upload.inputs))
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
    preds = await lanes.arun(lambda: predict_arrays(model, upload.inputs, params.top_k))
    body = {"model": model.name, "input_kind": model.input_kind, "input_shape": list(model.spec.input_shape),
            "inputs": [{"index": i, **decoded_summary(d), "predictions": [p.model_dump() for p in ps]}
                       for i, (d, ps) in enumerate(zip(upload.inputs, preds, strict=True))],
            "timings": {"decode_ms": upload.decode_ms, "compute_ms": (time.perf_counter() - t0) * 1000}}
    return Response(json.dumps(body), media_type="application/json")
