"""One explanation or prediction on signals or volumes, start to finish, without HTTP types.

The walk is the image path's (:mod:`core.explaining`): the same checked request (method, params,
targets, price), the same engine call (:func:`core.explaining.compute`, every method on N-D grids)
and the same target kinds. What differs is declared by the input kind (:mod:`core.inputkinds`):
the inputs are decoded arrays, fitted by resampling onto the model's grid
(:class:`cnnviz.models.preprocess_nd.ArrayPreprocessing`), each map is resampled back onto the
caller's own samples or voxels, and drawn as a signal plot or slices and a montage
(:mod:`cnnviz.render.nd_plots`); a volume's map can also come back as NIfTI in the input's affine.
"""

from __future__ import annotations

import base64
import gzip
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from cnnviz.metrics.faithfulness_grid import grid_deletion_insertion
from cnnviz.models import LoadedModel
from cnnviz.models.preprocess_nd import resample
from cnnviz.render.figure import figure_title
from cnnviz.render.nd_plots import signal_plot, volume_montage, volume_slices
from core.array_decoding import DecodedArray
from core.errors import Invalid
from core.explaining import CheckedExplain, compute, map_kind
from core.lanes import DIRECT
from core.schemas.explain import ExplainParams, Faithfulness, TargetInfo, Timings
from core.schemas.models import Prediction
from core.schemas.nd import GridMap, NdExplainResponse, NdInputExplanation, NdTargetExplanation
from core.targets import target_kind

NIFTI_MEDIA_TYPE = "application/x-nifti"
"""``Accept: application/x-nifti``: the answer is the first map as a gzipped NIfTI-1 file (.nii.gz)."""
RAW_VOXELS = 2_000_000  # a volume's map values in the JSON answer (output.raw) at most


def refuse_image_only(params: ExplainParams, kind: str) -> None:
    """Refuse, by name, the parameters that mean something for photos only."""
    asked = [name for name, on in (
        ("resolution", params.resolution is not None), ("resize", params.resize is not None),
        ("localization", params.localization is not None), ("output.size", params.output.size is not None),
        ("output.inline", not params.output.inline),
        ("faithfulness.box", params.faithfulness is not None and params.faithfulness.box is not None),
    ) if on]
    if asked:
        raise Invalid("not-for-this-input", f"{', '.join(asked)} do(es) not apply to a {kind} model",
                      f"these parameters fit photos; a {kind} is resampled onto the model's own grid and its"
                      " pictures come at the input's own samples or voxels", parameters=asked, input_kind=kind)


def check_inputs(model: LoadedModel, inputs: list[DecodedArray]) -> None:
    """Each input has the model's kind and channel count (a 422 naming both)."""
    want = model.spec.channels
    for i, d in enumerate(inputs):
        if d.kind != model.input_kind:
            raise Invalid("input-kind-mismatch", f"model {model.name} takes {model.input_kind}s; input {i} is a"
                          f" {d.kind}", input_kind=model.input_kind, index=i)
        if d.channels != want:
            raise Invalid("wrong-channel-count", f"model {model.name} takes {want} channel(s); input {i} has"
                          f" {d.channels}", f"input {i} decoded as {d.format} of shape {list(d.values.shape)};"
                          f" the model's input is {list(model.spec.input_shape)} (channels first)",
                          expected=want, got=d.channels, index=i)


def fitted_batch(model: LoadedModel, inputs: list[DecodedArray]) -> torch.Tensor:
    """The inputs resampled onto the model's grid and normalized: ``[N,C,*grid]`` on its device."""
    return model.preprocessing.batch((torch.from_numpy(d.values) for d in inputs), model.device)


def on_input_grid(raw: torch.Tensor, grid: tuple[int, ...]) -> np.ndarray:
    """A raw map (a CAM's layer grid, or the model's grid) resampled onto the input's own grid."""
    return resample(raw.float()[None, None], grid)[0, 0].numpy()


def nifti_bytes(values: np.ndarray, affine: np.ndarray | None) -> bytes:
    """A map ``[D,H,W]`` as gzipped NIfTI-1 in the input's affine (voxel i, j, k = W, H, D)."""
    import nibabel as nib  # noqa: PLC0415 - only volume answers need it

    img = nib.Nifti1Image(np.ascontiguousarray(values.transpose(2, 1, 0), dtype=np.float32),
                          affine if affine is not None else np.eye(4))
    img.header.set_xyzt_units("mm")
    img.header["descrip"] = b"cnnviz attribution map"
    return gzip.compress(img.to_bytes(), compresslevel=6, mtime=0)


@dataclass
class NdAnswer:
    """The JSON answer plus the first map's binary forms (``Accept: image/png`` or ``application/x-nifti``)."""

    response: NdExplainResponse
    first_png: bytes | None = None
    first_nifti: bytes | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _b64(data: bytes | None) -> str | None:
    return base64.b64encode(data).decode("ascii") if data is not None else None


def _probability(model: LoadedModel, target: int) -> Callable[[torch.Tensor], torch.Tensor]:
    def score(batch: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model.probabilities(model.module(batch))[:, target]
    return score


def run_nd_explanation(model: LoadedModel, checked: CheckedExplain, inputs: list[DecodedArray], *,
                       decode_ms: float = 0.0, nifti: bool = False, lane: Callable[..., Any] = DIRECT) -> NdAnswer:
    """Compute, resample, draw and shape one explanation of signals or volumes (``lane`` runs the torch work)."""
    params, method = checked.params, checked.method
    refuse_image_only(params, model.input_kind)
    check_inputs(model, inputs)
    kind = map_kind(method, params)
    signed = kind == "signed"
    tkind = target_kind(params)
    out = params.output
    t0 = time.perf_counter()
    x = lane(lambda: fitted_batch(model, inputs))
    t1 = time.perf_counter()
    result = lane(lambda: compute(model, method, x, params))
    t2 = time.perf_counter()
    from cnnviz.attribution import get_method  # noqa: PLC0415 - the registry, for the method's title

    title_of = get_method(method).title or method
    first_png = first_nifti = None
    spent = {"faithfulness": 0.0}

    def shape_all() -> list[NdInputExplanation]:
        nonlocal first_png, first_nifti
        answers = []
        for i, d in enumerate(inputs):
            exps = []
            for t, raw in enumerate(result.maps[i]):
                idx = result.targets[i][t]
                named = tkind.describe(model, params, idx)
                info = TargetInfo(kind=named.kind, index=idx, label=named.label, score=result.scores[i][t],
                                  probability=result.probabilities[i][t])
                full = on_input_grid(raw, d.grid)
                peak = tuple(int(v) for v in np.unravel_index(int(np.argmax(np.abs(full) if signed else full)),
                                                              full.shape))
                gm = GridMap(shape=list(d.grid), native_shape=list(raw.shape), min=float(full.min()),
                             max=float(full.max()), peak=list(peak))
                title = figure_title(title_of, info.label, info.probability, result.layer)
                label = f"{title_of} ({kind})"
                rows = result.extras.get("completeness")  # integrated gradients' check, per image and target
                exp = NdTargetExplanation(target=info, map=gm, map_kind=kind, completeness=rows[i][t] if rows else None)
                if d.kind == "signal":
                    gm.values = [round(float(v), 6) for v in full]
                    # The file's rate (WFDB), else the model's: a bare array is taken as sampled like the model's input.
                    rate = d.sampling_rate or model.spec.sampling_rate or None
                    if rate:
                        gm.peak_seconds = peak[0] / rate
                    if out.heatmap or out.overlay:
                        png = signal_plot(d.values, full, title=title, channel_names=d.channel_names,
                                          sampling_rate=rate, signed=signed, scale_label=label)
                        exp.signal_png = _b64(png)
                        first_png = first_png or png
                else:
                    if d.affine is not None:
                        gm.peak_mm = [round(float(v), 3) for v in (d.affine @ np.array([peak[2], peak[1], peak[0],
                                                                                         1.0]))[:3]]
                    if out.raw:
                        if full.size > RAW_VOXELS:
                            raise Invalid("output-too-large", f"output.raw on a volume of {full.size} voxels;"
                                          f" at most {RAW_VOXELS} (ask Accept: {NIFTI_MEDIA_TYPE} for the map)",
                                          limit=RAW_VOXELS)
                        gm.values = [round(float(v), 6) for v in full.reshape(-1)]
                    scan = d.values[0]
                    if out.heatmap or out.overlay:
                        png = volume_slices(scan, full, title=title, spacing=d.spacing, affine=d.affine,
                                            signed=signed, scale_label=label, peak=peak)
                        exp.slices_png = _b64(png)
                        first_png = first_png or png
                    if out.figure or out.heatmap:
                        exp.montage_png = _b64(volume_montage(scan, full, title=title, spacing=d.spacing,
                                                              signed=signed, scale_label=label))
                    if nifti and first_nifti is None:
                        first_nifti = nifti_bytes(full, d.affine)
                fp = params.faithfulness
                if fp is not None and fp.deletion_insertion and tkind.probability:
                    tf = time.perf_counter()
                    res = grid_deletion_insertion(_probability(model, idx), x[i], raw, steps=fp.steps)
                    exp.faithfulness = Faithfulness(deletion_auc=res.deletion_auc, insertion_auc=res.insertion_auc,
                                                    deletion_curve=res.deletion_curve,
                                                    insertion_curve=res.insertion_curve)
                    spent["faithfulness"] += time.perf_counter() - tf
                exps.append(exp)
            answers.append(NdInputExplanation(
                index=i, kind=d.kind, format=d.format, shape=list(d.values.shape), channel_names=list(d.channel_names),
                sampling_rate=d.sampling_rate, spacing=list(d.spacing) if d.kind == "volume" else None,
                explanations=exps))
        return answers

    shaped = lane(shape_all)
    t3 = time.perf_counter()
    details = {k: v for k, v in result.extras.items() if k != "precision" and isinstance(v, str | int | float | bool)}
    response = NdExplainResponse(
        model=model.name, method=method, layer=result.layer, input_kind=model.input_kind,
        input_shape=list(model.spec.input_shape), inputs=shaped, warnings=result.warnings, details=details,
        timings=Timings(decode_ms=decode_ms, preprocess_ms=(t1 - t0) * 1000, compute_ms=(t2 - t1) * 1000,
                        faithfulness_ms=spent["faithfulness"] * 1000,
                        render_ms=(t3 - t2 - spent["faithfulness"]) * 1000, total_ms=decode_ms + (t3 - t0) * 1000))
    return NdAnswer(response, first_png, first_nifti)


def predict_arrays(model: LoadedModel, inputs: list[DecodedArray], top_k: int) -> list[list[Prediction]]:
    """Top-k classes per signal or volume, from one batched forward on the model's grid."""
    check_inputs(model, inputs)
    x = fitted_batch(model, inputs)
    with torch.inference_mode():
        logits = model.module(x).float()
    probs = model.probabilities(logits)
    top = probs.topk(min(top_k, probs.shape[1]), dim=1)
    return [[Prediction(index=int(j), label=model.labels[int(j)], probability=float(p), logit=float(logits[i, j]))
             for p, j in zip(top.values[i], top.indices[i], strict=True)] for i in range(x.shape[0])]


def decoded_summary(d: DecodedArray) -> dict[str, Any]:
    """What an answer says about one decoded input (its shape as uploaded, channel names, rate or spacing)."""
    out: dict[str, Any] = {"kind": d.kind, "format": d.format, "shape": list(d.values.shape)}
    if d.channel_names:
        out["channel_names"] = list(d.channel_names)
    if d.kind == "signal" and d.sampling_rate:
        out["sampling_rate"] = d.sampling_rate
    if d.kind == "volume":
        out["spacing"] = list(d.spacing)
    return out

