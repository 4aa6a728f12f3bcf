"""One explanation request, start to finish, without HTTP types: images + params -> answer.

The walk reads straight down: preprocess -> engine call (tensors in, tensors out) -> render each
map at the client's image size -> optional localization and faithfulness. Routes call
:func:`run_explanation`; explain jobs on workers call the same function.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from cnnviz.attribution import METHODS, REGION_LOGITS, ClassTargets, EngineError, Explanation, Method, Targets
from cnnviz.attribution.cam import CamMethod
from cnnviz.attribution.fast.folded import folded_module
from cnnviz.attribution.fast.incremental import supports_incremental
from cnnviz.attribution.fast.layer_forward import LayerForward, using_layer_forward
from cnnviz.localization import dense_crf_refine, mask_to_regions, scale_regions, threshold_mask
from cnnviz.metrics import deletion_insertion, energy_in_mask, mask_pointing_game, pointing_game
from cnnviz.models import LoadedModel
from cnnviz.models.blocks import main_blocks
from cnnviz.precision import offered
from cnnviz.render import (
    IMAGE_FORMATS,
    OFFERED_KINDS,
    MapKind,
    default_kind,
    encode_image,
    figure_title,
    normalize_map,
    render_map,
    resize_map,
)
from cnnviz.trust import SanityCheck, sanity_check
from core.box_answers import box_faithfulness, box_info, box_label
from core.errors import Invalid, from_engine, inline_needs_store
from core.explain_pictures import output_hw, render_pictures, sweep_row
from core.imaging import DecodedImage, image_to_tensor
from core.lanes import DIRECT
from core.lookups import check_layers, known_method
from core.regions import image_mask, predicted_mask, region_info, target_mask
from core.schemas.explain import (
    MAX_SWEEP_LAYERS,
    Completeness,
    ExplainParams,
    ExplainResponse,
    Faithfulness,
    ImageExplanation,
    LayerExplanation,
    RawMap,
    Region,
    SanityAnswer,
    TargetExplanation,
    TargetInfo,
    Timings,
    params_model,
)
from core.targets import target_kind
from core.validation import validate_params

LOCALIZE_SIDE = 512  # maps are thresholded at most at this size, then boxes scale to the original


def targets_from(model: LoadedModel, params: ExplainParams, n_images: int) -> Targets:
    """The engine's targets for a checked request, as its target kind declares them (core/targets.py)."""
    return target_kind(params).engine(model, params, n_images)


def sweep_layers(model: LoadedModel, params: ExplainParams) -> list[str] | None:
    """The layers of a layer sweep (``layers``), ``"blocks"`` resolved (cnnviz.models.blocks); None for one layer.

    An unknown name is a 422 with the closest ones; more than the bound is a 422 naming it.
    """
    asked = params.sweep
    if asked is None:
        return None
    names = main_blocks(model) if asked == "blocks" else list(dict.fromkeys(asked))
    check_layers(model, names)
    if len(names) > MAX_SWEEP_LAYERS:
        raise Invalid("too-many-layers", f"A sweep takes at most {MAX_SWEEP_LAYERS} layers; {len(names)} asked",
                      limit=MAX_SWEEP_LAYERS)
    return names


def estimate_cost(model: LoadedModel, method: str, params: ExplainParams, n_images: int) -> float:
    """Forward-pass equivalents, scaled by pixels when a larger resolution is requested."""
    m = known_method(method)
    n_targets = target_kind(params).per_image(params)
    layers = sweep_layers(model, params)
    if layers is not None and isinstance(m, CamMethod):
        cost = m.sweep_cost(model, n_images, n_targets, params.engine_params(m), layers)
    else:
        cost = m.estimate_cost(model, n_images, n_targets, params.engine_params(m), params.layer)
    if params.resolution:
        cost *= (params.resolution / model.preprocessing.input_size) ** 2
    if params.faithfulness and params.faithfulness.deletion_insertion:
        cost += n_images * n_targets * 2 * (params.faithfulness.steps + 1)
    if params.sanity:
        cost *= 2  # the method once more, on the randomized copy
    return float(cost)


@dataclass(frozen=True)
class CheckedExplain:
    """An explain request checked and priced once: inline, or handed to a job, it is not checked again."""

    method: str
    params: ExplainParams  # validated against the method's parameter model
    raw: dict[str, Any]  # the parameters as the client sent them: what an explain job's spec stores
    cost: float  # forward passes at input size (:func:`estimate_cost`)


def check_explain(model: LoadedModel, method: str, raw: dict[str, Any], n_images: int,
                  sizes: Sequence[tuple[int, int]] | None = None) -> CheckedExplain:
    """The one check of an explain request: a known method (404), valid parameters, layers and targets (422), its
    price.

    Layers are checked here, not by the engine later: a request over the inline budget becomes a job,
    and a typo found on the worker would reach the client as a failed job without the closest names.
    The target kind's own check (core/targets.py) sees the images' ``sizes`` (height, width) where
    given: a polygon outside an image is refused here too.
    """
    m = known_method(method)
    if model.task not in m.tasks:  # before the price: a method that cannot explain this model is no job either
        answering = sorted(n for n, other in METHODS.items() if model.task in other.tasks)
        raise Invalid("task-unsupported", f"{method} does not explain {model.task} models",
                      f"model {model.name} is a {model.task} model; methods that explain it: {', '.join(answering)}")
    params = validate_params(params_model(method), raw)
    if params.sanity and not target_kind(params).probability:
        raise Invalid("sanity-needs-classes", "sanity: true checks maps of class targets; this request explains "
                      f"a {target_kind(params).name}")
    check_layers(model, [n for n in (params.layer, params.unit.layer if params.unit else None) if n])
    sweep_layers(model, params)
    tkind = target_kind(params)
    if tkind.check is not None:
        tkind.check(model, params, sizes)
    return CheckedExplain(method, params, raw, estimate_cost(model, method, params, n_images))


def compute(model: LoadedModel, method: str, x: torch.Tensor, params: ExplainParams,
            targets: Targets | None = None, layer_forward: LayerForward | None = None) -> Explanation:
    """The engine step alone: a normalized batch ``x`` in, raw maps out (targets from ``params`` by default).

    ``params.precision`` goes to the engine, which runs the forwards under autocast where the method
    allows it and records what ran in ``extras["precision"]`` (docs/precision.md). ``layer_forward``
    is offered to the CAM family (a compiled road to the layer, core/compiled.py).
    """
    m = known_method(method)
    try:
        with using_layer_forward(layer_forward):
            return m.attribute(model, x, targets if targets is not None else targets_from(model, params, x.shape[0]),
                               params.layer, params.engine_params(m), precision=params.precision,
                               layers=sweep_layers(model, params))
    except EngineError as exc:
        raise from_engine(exc) from exc


Engine = Callable[[LoadedModel, str, torch.Tensor, ExplainParams], Explanation]
"""Runs the engine step for one request: :func:`compute`, or a batcher's (``core.batching``)."""

Sink = Callable[[str, bytes, str], str]
"""Stores one picture (artifact name, bytes, media type) and returns the link a client follows."""


def warm_model(model: LoadedModel) -> LoadedModel:
    """The per-model work a first request would otherwise do inline, done once at load (on a lane).

    Occlusion's cost estimate, which every occlusion request computes on the event loop before
    it is admitted, asks whether the model traces for the incremental engine; the first ask is a
    torch.fx trace of the whole network (tens of milliseconds on Lite0). After this it is a lookup.
    The gradient methods' copy with batch norms folded (cnnviz.attribution.fast.folded: a copy, a probe
    forward and backward, about 0.3 s on Lite0) is built here too.
    """
    if model.classifier:  # the incremental engine and the folded copy serve class logits only
        supports_incremental(model.module)
        folded_module(model)
    return model


def method_precisions(m: Method, model: LoadedModel) -> list[str]:
    """The precisions ``m``'s forwards really run at on ``model``'s device at its default parameters, fp32 first."""
    reduced = [p for p in offered(model.device) if p != "fp32"]
    if reduced and m.full_precision_reason(model, ClassTargets(top_k=1), m.Params.build(None)) is not None:
        reduced = []
    return ["fp32", *reduced]


def offered_kinds(method: str, reduce: str | None = None) -> tuple[MapKind, ...]:
    """The renderings ``output.kind`` accepts for ``method``, its default (given ``reduce``) first."""
    default = default_kind(method, reduce)
    return (default, *[k for k in OFFERED_KINDS.get(method, ()) if k != default])


def map_kind(method: str, params: ExplainParams) -> MapKind:
    """The kind the map is rendered as: ``output.kind`` if the method offers it, else the method's default."""
    offered = offered_kinds(method, getattr(params, "reduce", None))
    asked = params.output.kind
    if asked is None:
        return offered[0]
    if asked not in offered:
        raise Invalid("unsupported-kind", f"{method} maps cannot be rendered as {asked!r}",
                      f"offered kinds: {', '.join(offered)}", choices=list(offered))
    return asked


def _localize(raw: torch.Tensor, image: torch.Tensor, params: ExplainParams,
              orig_hw: tuple[int, int]) -> list[Region]:
    """Boxes and contours in the original image's pixels (uploads may have been decoded smaller)."""
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
    regions = scale_regions(regions, orig_hw[1] / lw, orig_hw[0] / lh)
    return [Region(box=r.box, area=r.area, score=r.score, peak=r.peak, contour=r.contour) for r in regions]


def _faithfulness(model: LoadedModel, x_pix: torch.Tensor, raw: torch.Tensor, target: int, by_probability: bool,
                  params: ExplainParams, orig_hw: tuple[int, int], region: torch.Tensor | None = None) -> Faithfulness:
    """Deletion/insertion where a probability scores the target; the pointing game in the request's box; for a
    region target, the pointing game and the energy-based pointing game inside the region (``region`` mask)."""
    fp = params.faithfulness
    assert fp is not None
    out = Faithfulness()
    if region is not None:
        out.pointing_hit = mask_pointing_game(raw, region, tolerance=fp.tolerance)
        out.energy_in_region = energy_in_mask(raw, region)
    if fp.deletion_insertion and by_probability:
        res = deletion_insertion(_probability(model, target), x_pix, raw.to(x_pix.device), steps=fp.steps)
        out.deletion_auc, out.insertion_auc = res.deletion_auc, res.insertion_auc
        out.deletion_curve, out.insertion_curve = res.deletion_curve, res.insertion_curve
    if fp.box is not None:
        out.pointing_hit = bool(pointing_game(raw, fp.box, orig_hw, tolerance=fp.tolerance))
    return out


def _probability(model: LoadedModel, target: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """Deletion/insertion score: the target's probability (softmax, or sigmoid for a sigmoid head), as in RISE."""
    prep = model.preprocessing

    def score_fn(batch: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model.probabilities(model.module(prep.normalize(batch)))[:, target]

    return score_fn


def _completeness(result: Explanation, i: int, t: int) -> Completeness | None:
    """The engine's completeness check of image ``i``, target ``t`` (integrated gradients only)."""
    rows = result.extras.get("completeness")
    return Completeness(**rows[i][t]) if rows else None


LIGHT_PIXELS = 1024 * 1024  # decoded plus rendered pixels of a request whose pre/post-processing stays in its thread


def light_work(images: list[DecodedImage], params: ExplainParams) -> bool:
    """Whether the torch work around the engine (preprocessing, rendering, PNG) stays in the request's thread.

    In a server that thread computes on one torch thread and starts no OpenMP team (core/lanes.py),
    so it runs beside the lane instead of queueing on it: on a 224 px request the lane's hand-offs
    cost more than its width gains, and the lane stays free for the engine calls that batch
    concurrent requests. Forwards (faithfulness), the CRF and megapixel pictures go to the lane.
    """
    if params.sanity or params.faithfulness is not None or (
            params.localization is not None and params.localization.crf):
        return False
    out = params.output
    pixels = 0
    for d in images:
        h, w = output_hw(out.size, d.height, d.width)
        pixels += d.height * d.width + h * w * (1 + out.heatmap + out.overlay + out.figure)
    return pixels <= LIGHT_PIXELS


def run_explanation(model: LoadedModel, method: str, images: list[DecodedImage], params: ExplainParams,
                    decode_ms: float = 0.0, sink: Sink | None = None,
                    keep: list[tuple[int, TargetExplanation, torch.Tensor]] | None = None,
                    engine: Engine = compute, lane: Callable[..., Any] = DIRECT) -> ExplainResponse:
    """Compute, render and shape one explanation answer.

    ``output.inline: false`` needs ``sink``, which stores each picture and returns its link. ``keep``
    (for :func:`core.png_answer.png_answer`) collects (image index, explanation, overlay tensor) instead of encoding.
    ``engine`` runs the engine step (a batcher gathers concurrent requests into one call); ``lane``
    runs the torch work around it, preprocessing and rendering (a compute lane in a server,
    core/lanes.py), where it is heavy (:func:`light_work`); light work stays in the calling thread.
    """
    out = params.output
    if not out.inline and sink is None:
        raise inline_needs_store()
    tkind = target_kind(params)
    if tkind.sized:  # a region's box or polygon, a reference box: in each image's own pixels
        params = params.with_image_sizes([(d.height, d.width) for d in images])
    t0 = time.perf_counter()
    for d in images:
        output_hw(out.size, d.height, d.width)  # refuse an oversized output before computing
    m = known_method(method)
    kind = map_kind(method, params)
    prep = model.preprocessing
    size = params.resolution or prep.input_size

    def prepare() -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        tensors = [image_to_tensor(d.image) for d in images]
        x_pix = torch.stack([prep.fit(t, size, params.resize) for t in tensors]).to(model.device)
        return tensors, x_pix, prep.normalize(x_pix)

    around = DIRECT if light_work(images, params) else lane
    tensors, x_pix, x = around(prepare)
    t1 = time.perf_counter()
    result = engine(model, method, x, params)
    checks = (lane(lambda: sanity_check(model, method, x, result.targets, result.maps, params.layer,
                                        params.engine_params(m), params.precision))
              if params.sanity else None)
    if model.device.type == "cuda":
        torch.cuda.synchronize(model.device)
    t2 = time.perf_counter()
    spent = {"localization": 0.0, "faithfulness": 0.0, "render": 0.0, "encode": 0.0}
    media = IMAGE_FORMATS[out.format]
    ext = "jpg" if out.format == "jpeg" else out.format

    def encode(img: torch.Tensor | None, name: str) -> tuple[str | None, str | None]:
        if img is None or keep is not None:
            return None, None
        t = time.perf_counter()
        data = encode_image(img.cpu(), out.format, out.quality)
        res = (base64.b64encode(data).decode("ascii"), None) if out.inline else (None, sink(name, data, media))
        spent["encode"] += time.perf_counter() - t
        return res

    grads = result.extras.get("gradient")
    seg_logits = result.extras.get(REGION_LOGITS)
    boxes = result.extras.get("boxes")  # box targets: what each resolved to (network-input pixels)

    def render_sweep(i: int, t: int) -> tuple[list[LayerExplanation], torch.Tensor | None]:
        """Each swept layer's map drawn as its lone request's would be, and the captioned row of overlays
        (when a figure or the PNG answer wants it)."""
        assert result.sweep is not None
        d = images[i]
        img_u8 = torch.from_numpy(np.array(d.image, dtype=np.uint8))
        want_row = out.figure or keep is not None
        lone = params.model_copy(update={"output": out.model_copy(update={"figure": False,
                                                                          "overlay": out.overlay or want_row})})
        exps, overlays, captions = [], [], []
        for name, maps in result.sweep.items():
            raw = maps[i][t]
            pics = render_pictures(raw, None, img_u8, lone, kind, None, "", (d.height, d.width))
            vals = normalize_map(raw, "minmax") if out.raw_normalized else raw
            rawmap = RawMap(shape=tuple(raw.shape), min=float(raw.min()), max=float(raw.max()),
                            values=[[round(float(v), 6) for v in row] for row in vals.tolist()] if out.raw else None)
            safe = name.replace("/", "_")
            heat_b64, heat_url = encode(pics.heatmap, f"heatmap-{i}-{t}-{safe}.{ext}")
            ov_b64, ov_url = encode(pics.overlay if out.overlay else None, f"overlay-{i}-{t}-{safe}.{ext}")
            exps.append(LayerExplanation(layer=name, shape=tuple(raw.shape), map=rawmap, rendering=pics.rendering,
                                         heatmap_png=heat_b64, overlay_png=ov_b64, heatmap_url=heat_url,
                                         overlay_url=ov_url))
            if want_row and pics.overlay is not None:
                overlays.append(pics.overlay)
                captions.append(f"{name}\n{raw.shape[0]}x{raw.shape[1]}")
        if not overlays:
            return exps, None
        idx = result.targets[i][t]
        named = tkind.describe(model, params, idx)
        prob = result.probabilities[i][t]
        title = figure_title(m.title or method, named.label, prob, None)
        return exps, sweep_row(overlays, captions, f"{title} · {model.name} · each map scaled to its own maximum")

    def render_all() -> list[ImageExplanation]:
        out_images = []
        for i, d in enumerate(images):
            img_u8 = torch.from_numpy(np.array(d.image, dtype=np.uint8))  # the decoded bytes, as the tensor had them
            exps = []
            for t, raw in enumerate(result.maps[i]):
                idx = result.targets[i][t]
                named = tkind.describe(model, params, idx)
                info = TargetInfo(kind=named.kind, index=idx, label=named.label, score=result.scores[i][t],
                                  probability=result.probabilities[i][t])
                if boxes:
                    info = box_info(model, boxes[i][t], (size, size), (d.height, d.width))
                ta = time.perf_counter()
                regions = _localize(raw, tensors[i], params, (d.height, d.width)) if params.localization else None
                region_mask, target_region, rinfo = None, None, None
                if params.region is not None and seg_logits is not None:
                    predicted = predicted_mask(seg_logits[i], idx, (d.height, d.width))
                    region_mask = image_mask(params.region, (d.height, d.width))
                    region_mask = predicted if region_mask is None else region_mask
                    rinfo = region_info(params.region, region_mask, predicted)
                    if out.overlay or out.figure:  # the outline, drawn at the pictures' own size
                        target_region = (target_mask(params.region, seg_logits[i], idx,
                                                     output_hw(out.size, d.height, d.width), (d.height, d.width)),
                                         named.label)
                tb = time.perf_counter()
                if params.faithfulness is None:
                    faith = None
                elif boxes:
                    faith = box_faithfulness(model, x_pix[i], raw, result.extras["box_targets"], i, t, info,
                                             params, (d.height, d.width))
                else:
                    faith = _faithfulness(model, x_pix[i], raw, idx, tkind.probability, params, (d.height, d.width),
                                          region_mask)
                tc = time.perf_counter()
                title = figure_title(m.title or method, info.label, info.probability, result.layer)
                pics = render_pictures(raw, grads[i][t] if grads else None, img_u8, params, kind, regions, title,
                                       (d.height, d.width), target_region, box=box_label(info) if boxes else None)
                td = time.perf_counter()
                spent["localization"] += tb - ta
                spent["faithfulness"] += tc - tb
                spent["render"] += td - tc
                vals = normalize_map(raw, "minmax") if out.raw_normalized else raw
                rawmap = RawMap(shape=tuple(raw.shape), min=float(raw.min()), max=float(raw.max()),
                                values=[[round(float(v), 6) for v in row] for row in vals.tolist()]
                                if out.raw else None)
                layer_exps, row = None, None
                if result.sweep is not None:
                    tl = time.perf_counter()
                    layer_exps, row = render_sweep(i, t)
                    spent["render"] += time.perf_counter() - tl
                heat_b64, heat_url = encode(pics.heatmap, f"heatmap-{i}-{t}.{ext}")
                ov_b64, ov_url = encode(pics.overlay, f"overlay-{i}-{t}.{ext}")
                fig_b64, fig_url = encode(row if row is not None and out.figure else pics.figure,
                                          f"figure-{i}-{t}.{ext}")
                sanity = (_sanity_answer(checks[i][t], kind, params, encode, f"sanity-{i}-{t}.{ext}",
                                         output_hw(out.size, d.height, d.width)) if checks else None)
                exp = TargetExplanation(
                    target=info, region=rinfo, map=rawmap, rendering=pics.rendering,
                    media_type=media if any(v is not None for v in (pics.heatmap, pics.overlay, pics.figure))
                    else None,
                    heatmap_png=heat_b64, overlay_png=ov_b64, figure_png=fig_b64,
                    heatmap_url=heat_url, overlay_url=ov_url, figure_url=fig_url,
                    regions=regions, faithfulness=faith, completeness=_completeness(result, i, t), sanity=sanity,
                    layers=layer_exps)
                if keep is not None and row is not None:
                    keep.append((i, exp, row))
                elif keep is not None and pics.overlay is not None:
                    keep.append((i, exp, pics.overlay))
                exps.append(exp)
            out_images.append(ImageExplanation(index=i, width=d.width, height=d.height, explanations=exps))
        return out_images

    out_images = around(render_all)
    t3 = time.perf_counter()
    ms = {k: v * 1000 for k, v in spent.items()}
    return ExplainResponse(
        model=model.name, method=method, layer=result.layer, layers=list(result.sweep) if result.sweep else None,
        input_size=(size, size), images=out_images,
        warnings=result.warnings, precision=result.extras.get("precision", "fp32"), details=_details(result),
        timings=Timings(decode_ms=decode_ms, preprocess_ms=(t1 - t0) * 1000, compute_ms=(t2 - t1) * 1000,
                        localization_ms=ms["localization"], faithfulness_ms=ms["faithfulness"],
                        render_ms=ms["render"] + (t3 - t2) * 1000 - sum(ms.values()), encode_ms=ms["encode"],
                        total_ms=decode_ms + (t3 - t0) * 1000))


SIMILAR_ABOVE = 0.5  # spearman_abs at or above which a sanity answer reads "similar"


def _sanity_answer(check: SanityCheck, kind: MapKind, params: ExplainParams,
                   encode: Callable[[torch.Tensor | None, str], tuple[str | None, str | None]],
                   name: str, size: tuple[int, int]) -> SanityAnswer:
    """The randomized map as the answer shows it: raw summary (values when asked) and a heatmap at the
    original's size (a gradient_rgb original's randomized map is drawn as unsigned: it has one channel)."""
    raw = check.randomized
    out = params.output
    heat = render_map(raw, "unsigned" if kind == "gradient_rgb" else kind, clip_percentile=out.clip_percentile,
                      colormap=out.colormap, size=size).rgb if out.heatmap else None
    b64, url = encode(heat, name)
    vals = normalize_map(raw, "minmax") if out.raw_normalized else raw
    return SanityAnswer(stage=check.stage, spearman_abs=round(check.spearman_abs, 5),
                        spearman=round(check.spearman, 5), ssim=round(check.ssim, 5),
                        similar=check.spearman_abs >= SIMILAR_ABOVE,
                        map=RawMap(shape=tuple(raw.shape), min=float(raw.min()), max=float(raw.max()),
                                   values=[[round(float(v), 6) for v in row] for row in vals.tolist()]
                                   if out.raw else None),
                        heatmap_png=b64, heatmap_url=url)


def _details(result: Explanation) -> dict[str, str | int | float | bool]:
    """The engine's scalar extras (per-image lists such as completeness have their own fields)."""
    return {k: v for k, v in result.extras.items()
            if k != "precision" and isinstance(v, (str, int, float, bool))}
