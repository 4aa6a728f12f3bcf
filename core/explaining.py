"""One explanation request, start to finish, without HTTP types: images + params -> answer.

The walk reads straight down: preprocess -> engine call (tensors in, tensors out) -> render each
map at the client's image size -> optional localization and faithfulness. Routes call
:func:`run_explanation`; explain jobs on workers call the same function.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from cnnviz.attribution import ClassTargets, EngineError, Explanation, Targets, UnitTarget, get_method
from cnnviz.localization import dense_crf_refine, mask_to_regions, scale_regions, threshold_mask
from cnnviz.metrics import deletion_insertion, pointing_game
from cnnviz.models import LoadedModel
from cnnviz.render import apply_colormap, draw_boxes, encode_png, normalize_map, overlay, resize_map
from core.errors import Invalid, from_engine
from core.imaging import DecodedImage, image_to_tensor
from core.schemas.explain import (
    ExplainParams,
    ExplainResponse,
    Faithfulness,
    ImageExplanation,
    RawMap,
    Region,
    TargetExplanation,
    TargetInfo,
    Timings,
)

LOCALIZE_SIDE = 512  # maps are thresholded at most at this size, then boxes scale to the original
MAX_OUTPUT_SIDE = 2048  # heatmaps/overlays of larger originals are scaled down to this long side


def output_hw(out_size: tuple[int, int] | None, h: int, w: int, max_side: int = MAX_OUTPUT_SIDE) -> tuple[int, int]:
    """(height, width) of rendered pictures: the client's size, else the original's, capped."""
    if out_size is not None:
        if max(out_size) > max_side:
            raise Invalid("output-too-large", f"output.size may not exceed {max_side} px per side",
                               limit=max_side)
        return out_size[1], out_size[0]
    scale = min(1.0, max_side / max(h, w))
    return max(1, round(h * scale)), max(1, round(w * scale))


def targets_from(params: ExplainParams, n_images: int) -> Targets:
    if params.unit is not None:
        u = params.unit
        return UnitTarget(u.layer, u.channel, u.y, u.x)
    if params.targets is not None:
        if len(params.targets) != n_images:
            raise Invalid("bad-targets", f"targets has {len(params.targets)} rows for {n_images} images")
        return ClassTargets(indices=tuple(tuple(r) for r in params.targets))
    if params.target is not None:
        return ClassTargets(indices=((params.target,),))
    return ClassTargets(top_k=params.top_k)


def estimate_cost(model: LoadedModel, method: str, params: ExplainParams, n_images: int) -> float:
    """Forward-pass equivalents, scaled by pixels when a larger resolution is requested."""
    try:
        m = get_method(method)
    except EngineError as exc:
        raise from_engine(exc) from exc
    n_targets = 1 if params.unit or params.target is not None else (
        max(len(r) for r in params.targets) if params.targets else params.top_k)
    cost = m.estimate_cost(model, n_images, n_targets, params.engine_params(m), params.layer)
    if params.resolution:
        cost *= (params.resolution / model.preprocessing.input_size) ** 2
    if params.faithfulness and params.faithfulness.deletion_insertion:
        cost += n_images * n_targets * 2 * (params.faithfulness.steps + 1)
    return float(cost)


@dataclass
class _Rendered:
    heatmap: torch.Tensor | None
    overlay: torch.Tensor | None


def _render(raw: torch.Tensor, image_u8: torch.Tensor, params: ExplainParams,
            regions: list[Region] | None) -> _Rendered:
    out = params.output
    h, w = image_u8.shape[:2]
    size = output_hw(out.size, h, w)
    norm = normalize_map(raw, out.normalize)
    heat = apply_colormap(resize_map(norm, size), out.colormap)
    ov = None
    if out.overlay:
        base = image_u8 if (h, w) == size else _resize_image(image_u8, size)
        ov = overlay(base, heat, out.alpha)
        if regions:
            sx, sy = size[1] / w, size[0] / h
            boxes = [(round(r.box[0] * sx), round(r.box[1] * sy), round(r.box[2] * sx), round(r.box[3] * sy))
                     for r in regions]
            ov = draw_boxes(ov, boxes)
    return _Rendered(heat if out.heatmap else None, ov)


def _resize_image(img: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    x = img.permute(2, 0, 1)[None].float()
    x = torch.nn.functional.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    return x[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8)


def _localize(raw: torch.Tensor, image: torch.Tensor, params: ExplainParams) -> list[Region]:
    loc = params.localization
    assert loc is not None
    h, w = image.shape[-2:]
    scale = min(1.0, LOCALIZE_SIDE / max(h, w))
    lh, lw = max(1, round(h * scale)), max(1, round(w * scale))
    m = normalize_map(resize_map(raw, (lh, lw)), "minmax")
    if loc.crf:
        small = torch.nn.functional.interpolate(image[None], size=(lh, lw), mode="bilinear",
                                                antialias=True, align_corners=False)[0]
        m = dense_crf_refine(small, m, iterations=loc.crf_iterations)
        mask = m >= 0.5
    else:
        mask = threshold_mask(m, loc.method, loc.fraction)
    regions = mask_to_regions(mask, m, min_area=max(1, int(loc.min_area_fraction * lh * lw)),
                              max_regions=loc.max_regions)
    regions = scale_regions(regions, w / lw, h / lh)
    return [Region(box=r.box, area=r.area, score=r.score, peak=r.peak, contour=r.contour) for r in regions]


def _faithfulness(model: LoadedModel, x_pix: torch.Tensor, raw: torch.Tensor, target: int, unit: bool,
                  params: ExplainParams, orig_hw: tuple[int, int]) -> Faithfulness:
    fp = params.faithfulness
    assert fp is not None
    out = Faithfulness()
    if fp.deletion_insertion and not unit:
        res = deletion_insertion(_probability(model, target), x_pix, raw.to(x_pix.device), steps=fp.steps)
        out.deletion_auc, out.insertion_auc = res.deletion_auc, res.insertion_auc
        out.deletion_curve, out.insertion_curve = res.deletion_curve, res.insertion_curve
    if fp.box is not None:
        out.pointing_hit = bool(pointing_game(raw, fp.box, orig_hw, tolerance=fp.tolerance))
    return out


def _probability(model: LoadedModel, target: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """Deletion/insertion score: the target's softmax probability, as in RISE (Petsiuk et al.)."""
    prep = model.preprocessing

    def score_fn(batch: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model.module(prep.normalize(batch)).float().softmax(1)[:, target]

    return score_fn


def run_explanation(model: LoadedModel, method: str, images: list[DecodedImage], params: ExplainParams,
                    decode_ms: float = 0.0) -> ExplainResponse:
    """Compute, render and shape one explanation answer."""
    t0 = time.perf_counter()
    for d in images:
        output_hw(params.output.size, d.height, d.width)  # refuse an oversized output before computing
    prep = model.preprocessing
    size = params.resolution or prep.input_size
    tensors = [image_to_tensor(d.image) for d in images]
    x_pix = torch.stack([prep.fit(t, size, params.resize) for t in tensors]).to(model.device)
    x = prep.normalize(x_pix)
    t1 = time.perf_counter()
    try:
        m = get_method(method)
        result: Explanation = m.attribute(model, x, targets_from(params, len(images)), params.layer,
                                          params.engine_params(m))
    except EngineError as exc:
        raise from_engine(exc) from exc
    if model.device.type == "cuda":
        torch.cuda.synchronize(model.device)
    t2 = time.perf_counter()
    unit = params.unit is not None
    out_images = []
    for i, d in enumerate(images):
        img_u8 = (tensors[i].permute(1, 2, 0) * 255).round().to(torch.uint8)
        exps = []
        for t, raw in enumerate(result.maps[i]):
            idx = result.targets[i][t]
            info = TargetInfo(
                kind=("neuron" if params.unit.y is not None else "channel") if unit else "class",
                index=idx,
                label=(f"{params.unit.layer}[{idx}]" if unit else
                       model.labels[idx] if idx < len(model.labels) else None),
                score=result.scores[i][t], probability=result.probabilities[i][t])
            regions = _localize(raw, tensors[i], params) if params.localization else None
            rendered = _render(raw, img_u8, params, regions)
            vals = normalize_map(raw, "minmax") if params.output.raw_normalized else raw
            rawmap = RawMap(shape=tuple(raw.shape), min=float(raw.min()), max=float(raw.max()),
                            values=[[round(float(v), 6) for v in row] for row in vals.tolist()]
                            if params.output.raw else None)
            faith = (_faithfulness(model, x_pix[i], raw, idx, unit, params, (d.height, d.width))
                     if params.faithfulness else None)
            exps.append(TargetExplanation(
                target=info, map=rawmap,
                heatmap_png=_b64(rendered.heatmap), overlay_png=_b64(rendered.overlay),
                regions=regions, faithfulness=faith))
        out_images.append(ImageExplanation(index=i, width=d.width, height=d.height, explanations=exps))
    t3 = time.perf_counter()
    return ExplainResponse(
        model=model.name, method=method, layer=result.layer, input_size=(size, size), images=out_images,
        warnings=result.warnings,
        timings=Timings(decode_ms=decode_ms, preprocess_ms=(t1 - t0) * 1000, compute_ms=(t2 - t1) * 1000,
                        render_ms=(t3 - t2) * 1000, total_ms=decode_ms + (t3 - t0) * 1000))


def _b64(img: torch.Tensor | None) -> str | None:
    return None if img is None else base64.b64encode(encode_png(img.cpu())).decode("ascii")


def first_overlay_png(model: LoadedModel, method: str, images: list[DecodedImage], params: ExplainParams) -> bytes:
    """For ``Accept: image/png``: the overlay of the first image's first target, as PNG bytes."""
    # Only the overlay is sent: skip the heatmap PNG and the raw values the JSON answer would carry.
    output = params.output.model_copy(update={"overlay": True, "heatmap": False, "raw": False})
    params = params.model_copy(update={"output": output})
    resp = run_explanation(model, method, images[:1], params)
    return base64.b64decode(resp.images[0].explanations[0].overlay_png or "")
