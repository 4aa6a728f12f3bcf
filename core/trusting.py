"""The ``evaluate`` job without rq: checking a request, running it, and shaping ``result.json``.

``check_evaluate`` runs at submission (``core.jobtypes``), so an unknown method, parameters a
method refuses, a label that names no class or a collection without labels is a 422 before
anything is queued; the worker (``workers.runners.evaluate``) calls :func:`run_evaluation`, which
re-reads the same checked pieces with the same functions.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from cnnviz.attribution import METHODS
from cnnviz.attribution.base import require_gradients
from cnnviz.errors import EngineError, closest
from cnnviz.models import LoadedModel
from cnnviz.render.trust import cascade_grid, curves_picture
from cnnviz.trust import MethodSpec, Stage, evaluate, main_stages, mean_interval, named_stages
from cnnviz.trust.evaluate import SIMILARITIES, Evaluation
from core.errors import Invalid, from_engine
from core.lookups import check_layers
from core.schemas.explain import ExplainParams, params_model
from core.schemas.trust import EVALUATE_FIELDS, EvaluateParams
from core.validation import validate_params

Box = tuple[int, int, int, int]


def check_boxes(boxes: list[list[Box]], sizes: list[tuple[int, int]], names: list[str | None]) -> None:
    """One box list per image, each box inside its image (original pixels): else a 422 naming them."""
    if len(boxes) != len(sizes):
        raise Invalid("bad-boxes", f"{len(boxes)} box lists for {len(sizes)} images: give one list per image "
                      "([] for none)")
    outside = []
    for i, (row, (h, w)) in enumerate(zip(boxes, sizes, strict=True)):
        for box in row:
            x0, y0, x1, y1 = box
            if x1 > w or y1 > h:
                outside.append({"index": i, "filename": names[i] if i < len(names) else None,
                                "box": list(box), "width": w, "height": h})
    if outside:
        first = outside[0]
        raise Invalid("box-outside-image", f"{len(outside)} box(es) reach outside their image",
                      f"image {first['index']} ({first['width']}x{first['height']}) has box {first['box']}; "
                      "boxes are (x0, y0, x1, y1) in the original image's pixels, x1 <= width, y1 <= height",
                      boxes=outside[:20])


def resolve_classes(model: LoadedModel, labels: list[str], classes: dict[str, str | int] | None) -> list[int]:
    """The model's class index for each image's label: through ``classes``, else the label itself."""
    by_label = {lb.lower(): i for i, lb in enumerate(model.labels)}
    out: list[int] = []
    unknown: list[str] = []
    for lb in labels:
        want: str | int = (classes or {}).get(lb, lb)
        if isinstance(want, int) or (isinstance(want, str) and want.isdigit()):
            idx = int(want)
            if idx < len(model.labels):
                out.append(idx)
                continue
        elif want.lower() in by_label:
            out.append(by_label[want.lower()])
            continue
        unknown.append(lb)
        out.append(-1)
    if unknown:
        names = sorted(set(unknown))
        raise Invalid("unknown-class", f"{len(names)} label(s) name no class of model {model.name}: "
                      f"{', '.join(repr(n) for n in names[:10])}",
                      "Map each collection label to a class with params.classes ({label: class label or index})",
                      labels=names[:50], choices={n: closest(str((classes or {}).get(n, n)), list(model.labels))
                                                  for n in names[:10]})
    return out


def method_specs(model: LoadedModel, params: EvaluateParams) -> list[MethodSpec]:
    """Each entry checked as its explain request would be (known method, its own parameters, layer)."""
    shared = set(ExplainParams.model_fields) - set(EVALUATE_FIELDS)
    specs: list[MethodSpec] = []
    keys: set[str] = set()
    for i, entry in enumerate(params.methods):
        if entry.method not in METHODS:
            raise Invalid("unknown-method", f"methods[{i}]: no method named {entry.method!r}",
                          choices=closest(entry.method, sorted(METHODS)), see="/v1/methods")
        refused = sorted(set(entry.params) & shared)
        if refused:
            raise Invalid("not-in-evaluate", f"methods[{i}] ({entry.method}): {', '.join(refused)} cannot be set "
                          "per method in an evaluation", "Targets come from the labels; size, steps and the "
                          "rest are the evaluation's own parameters", fields=refused)
        try:
            checked = validate_params(params_model(entry.method), entry.params)
        except Invalid as exc:
            exc.extra["method"] = entry.method
            exc.extra["index"] = i
            raise
        m = METHODS[entry.method]
        try:
            if m.needs_gradients:
                require_gradients(model, entry.method)
            typed = checked.engine_params(m)
        except EngineError as exc:
            raise from_engine(exc) from exc
        except (TypeError, ValueError) as exc:
            raise Invalid("invalid-parameters", f"methods[{i}] ({entry.method}): {exc}") from exc
        check_layers(model, [checked.layer] if checked.layer else [])
        key = entry.name or entry.method
        if key in keys:
            raise Invalid("duplicate-method", f"methods[{i}]: {key!r} is evaluated twice; give each a name")
        keys.add(key)
        specs.append(MethodSpec(key, entry.method, typed, checked.layer,
                                checked.precision if "precision" in entry.params else None))
    return specs


def stages_of(model: LoadedModel, params: EvaluateParams) -> list[Stage]:
    try:
        return named_stages(model, list(params.stages)) if params.stages else main_stages(model)
    except EngineError as exc:
        raise from_engine(exc) from exc


def randomized_states(params: EvaluateParams, n_stages: int) -> int:
    """Randomized networks the test builds (the top stage alone is shared by both tests)."""
    return {"both": 2 * n_stages - 1, "cascading": n_stages, "independent": n_stages, "none": 0}[
        params.randomization]


@dataclass(frozen=True)
class CheckedEvaluate:
    params: EvaluateParams
    specs: list[MethodSpec]
    classes: list[int]
    stages: list[Stage]
    cost: float


def check_evaluate(model: LoadedModel, params: EvaluateParams, rec: dict[str, Any]) -> CheckedEvaluate:
    """The one check of an evaluation against its model and collection, priced in forward passes."""
    labels = rec.get("labels")
    if not labels:
        raise Invalid("missing-labels", "An evaluation needs a collection uploaded with labels (the classes whose "
                      "probability deletion and insertion follow)")
    n = int(rec["count"])
    if params.grid_image >= n:
        raise Invalid("bad-grid-image", f"grid_image {params.grid_image} is past the collection's {n} images")
    specs = method_specs(model, params)
    classes = resolve_classes(model, labels, params.classes)
    stages = stages_of(model, params)
    scale = ((params.size or model.preprocessing.input_size) / model.preprocessing.input_size) ** 2
    states = randomized_states(params, len(stages))
    per_map = sum(METHODS[s.method].estimate_cost(model, n, 1, s.params, s.layer) for s in specs)
    cost = (per_map * (1 + states) + n * (3 + 2 * (len(specs) + 1) * (params.steps - 1)) + n) * scale
    return CheckedEvaluate(params, specs, classes, stages, float(cost))


# ---- the run and its report --------------------------------------------------------------------------

def _interval(values: list[Any], lo: float = 0.0, hi: float = 1.0) -> dict[str, float] | None:
    """Mean and 95 % t-interval, the interval clipped to the metric's range [lo, hi]."""
    got = mean_interval([float(v) for v in values if v is not None])
    if got is None:
        return None
    return {"mean": round(got.mean, 5), "low": round(max(lo, got.low), 5), "high": round(min(hi, got.high), 5),
            "n": got.n}


def _mean_curve(curves: list[list[float]]) -> list[float]:
    return [round(v, 5) for v in torch.tensor(curves, dtype=torch.float64).mean(0).tolist()]


def _per_stage(table: dict[str, list[list[float]]], names: list[str]) -> dict[str, list[dict[str, Any]]]:
    return {s: [{"stage": names[k], **(_interval(col, -1.0) or {})} for k, col in enumerate(table[s])]
            for s in SIMILARITIES if s in table}


def report(model: LoadedModel, checked: CheckedEvaluate, ev: Evaluation, labels: list[str],
           image_hw: list[tuple[int, int]], size: int, seconds: float) -> dict[str, Any]:
    """``result.json``: summaries (mean and 95 % interval over images) per method, then per-image numbers."""
    p = checked.params
    n = len(labels)
    methods = []
    for r in ev.methods:
        images = []
        for i in range(n):
            row: dict[str, Any] = {"index": i, "deletion_auc": round(r.deletion_auc[i], 5),
                                   "insertion_auc": round(r.insertion_auc[i], 5)}
            if r.pointing[i] is not None:
                row.update(pointing=r.pointing[i], energy=round(float(r.energy[i] or 0.0), 5))
            for kind, table in (("cascading", r.cascading), ("independent", r.independent)):
                if table:
                    row[kind] = {s: [round(col[i], 4) for col in table[s]] for s in SIMILARITIES}
            images.append(row)
        cascade_last = ({s: _interval(r.cascading[s][-1], -1.0) for s in SIMILARITIES} if r.cascading else None)
        # per image, the mean over the cascading columns (what flags a method)
        cascade_avg = ({s: _interval([sum(col[i] for col in r.cascading[s]) / len(r.cascading[s])
                                      for i in range(n)], -1.0) for s in SIMILARITIES} if r.cascading else None)
        methods.append({
            "name": r.key, "method": r.method, "layer": r.layer,
            "params": next(e.params for e in p.methods if (e.name or e.method) == r.key),
            "flagged": r.flagged, "seconds_per_image": round(r.seconds_per_image, 4),
            "summary": {"deletion_auc": _interval(r.deletion_auc), "insertion_auc": _interval(r.insertion_auc),
                        "pointing": _interval([float(v) for v in r.pointing if v is not None]),
                        "energy": _interval(r.energy), "fully_randomized": cascade_last,
                        "cascading_mean": cascade_avg,
                        "cascading": _per_stage(r.cascading, ev.cascade),
                        "independent": _per_stage(r.independent, ev.independent)},
            "mean_curves": {"deletion": _mean_curve(r.deletion_curves), "insertion": _mean_curve(r.insertion_curves)},
            "images": images})
    boxed = [i for i in range(n) if ev.centre_pointing[i] is not None]
    return {
        "model": model.name, "collection": p.collection, "count": n, "input_size": size, "steps": p.steps,
        "randomization": p.randomization, "flag_threshold": p.flag_threshold, "seed": p.seed,
        "seconds": round(seconds, 3),
        "images": [{"index": i, "label": labels[i], "class": ev.classes[i], "class_label": model.labels[ev.classes[i]],
                    "probability": round(ev.probabilities[i], 5), "height": image_hw[i][0], "width": image_hw[i][1]}
                   for i in range(n)],
        "stages": {"cascading": ev.cascade, "independent": ev.independent,
                   "modules": {s.name: list(s.modules) for s in checked.stages}},
        "fractions": [round(f, 6) for f in ev.fractions],
        "methods": methods,
        "random": {"summary": {"deletion_auc": _interval(ev.random_deletion_auc),
                               "insertion_auc": _interval(ev.random_insertion_auc)},
                   "mean_curves": {"deletion": _mean_curve(ev.random_deletion_curves),
                                   "insertion": _mean_curve(ev.random_insertion_curves)},
                   "images": [{"index": i, "deletion_auc": round(ev.random_deletion_auc[i], 5),
                               "insertion_auc": round(ev.random_insertion_auc[i], 5)} for i in range(n)]},
        "centre": ({"summary": {"pointing": _interval([float(ev.centre_pointing[i]) for i in boxed]),
                                "energy": _interval([ev.centre_energy[i] for i in boxed])},
                    "images": [{"index": i, "pointing": ev.centre_pointing[i],
                                "energy": round(float(ev.centre_energy[i] or 0.0), 5)} for i in boxed]}
                   if boxed else None),
    }


@dataclass
class EvaluationRun:
    result: dict[str, Any]
    grid: torch.Tensor | None
    curves: torch.Tensor


def run_evaluation(model: LoadedModel, checked: CheckedEvaluate, photos: list[torch.Tensor],
                   labels: list[str], boxes: list[list[Box]] | None,
                   image_hw: list[tuple[int, int]] | None) -> EvaluationRun:
    """Fit the photos (``[3, H, W]`` in [0, 1]) to the network, evaluate, and draw both pictures."""
    p = checked.params
    size = p.size or model.preprocessing.input_size
    t0 = time.perf_counter()
    pixels = torch.stack([model.preprocessing.fit(t, size, "stretch") for t in photos]).to(model.device)
    hw = image_hw or [(int(t.shape[1]), int(t.shape[2])) for t in photos]
    ev = evaluate(model, pixels, checked.classes, checked.specs, image_hw=hw,
                  boxes=[[tuple(b) for b in row] for row in boxes] if boxes else None,  # type: ignore[misc]
                  steps=p.steps, batch_size=p.batch_size, tolerance=p.tolerance, randomization=p.randomization,
                  stages=checked.stages, seed=p.seed, flag_threshold=p.flag_threshold, grid_image=p.grid_image)
    result = report(model, checked, ev, labels, hw, size, time.perf_counter() - t0)
    photo = (pixels[p.grid_image].cpu().permute(1, 2, 0) * 255).round().clamp(0, 255).to(torch.uint8)
    i = p.grid_image
    grid = None
    if ev.cascade:
        rows = [(r.key, r.method, r.grid_maps, r.cascading["spearman_abs"]) for r in ev.methods]
        grid = cascade_grid(photo, [(k, m, maps, [col[i] for col in sims]) for k, m, maps, sims in rows], ev.cascade,
                            title=f"Cascading randomization, image {i} ({labels[i]}: "
                                  f"{model.labels[ev.classes[i]]}), {model.name}")
    curves = curves_picture(ev.fractions, [(m["name"], m["mean_curves"]["deletion"], m["mean_curves"]["insertion"])
                                           for m in result["methods"]],
                            (result["random"]["mean_curves"]["deletion"], result["random"]["mean_curves"]["insertion"]),
                            title=f"Mean deletion and insertion curves over {len(labels)} images, {model.name}")
    return EvaluationRun(result, grid, curves)
