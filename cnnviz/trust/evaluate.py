"""One evaluation of explanation methods over labelled images: faithfulness, localization, sanity, cost.

The work is laid out so that nothing is computed twice:

1. each method's maps of all images (image batches of ``image_batch``) on the served network;
2. deletion / insertion curves of every method's map and of one random pixel order per image in
   shared batches (:func:`cnnviz.trust.curves.deletion_insertion_many`: the unperturbed, black
   and blurred inputs are scored once per image for all methods);
3. the pointing and energy games on images with boxes, the centre baseline beside them;
4. the randomization test: for each randomized copy of the network (cascading: the top ``k``
   stages; independent: one stage; the top stage alone is both and is computed once) every
   method's maps of all images, compared with the originals by Spearman (absolute and signed)
   and SSIM.

Costs are wall-clock seconds per image and method: its own maps (original and randomized) plus
its share of the shared deletion / insertion batches.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..attribution import METHODS, ClassTargets
from ..models import LoadedModel
from ..params import Params
from .curves import CurveSet, deletion_insertion_many
from .pointing import Box, centre_map, energy_in_boxes, pointing_hit
from .randomization import Stage, main_stages, randomized_copy, served_copy, with_module
from .similarity import abs_normalized, spearman, ssim

log = logging.getLogger(__name__)

SIMILARITIES = ("spearman_abs", "spearman", "ssim")


@dataclass(frozen=True)
class MethodSpec:
    """One method as the evaluation runs it: ``key`` names it in the report (unique)."""

    key: str
    method: str
    params: Params | None = None
    layer: str | None = None
    precision: str | None = None


@dataclass
class EvaluatedMethod:
    """Per-image numbers of one method (lists in image order; None where a number does not apply)."""

    key: str
    method: str
    layer: str | None
    deletion_auc: list[float]
    insertion_auc: list[float]
    deletion_curves: list[list[float]]
    insertion_curves: list[list[float]]
    pointing: list[bool | None]
    energy: list[float | None]
    # similarity name -> [stage][image], stages in the order of Evaluation.cascade / .independent
    cascading: dict[str, list[list[float]]] = field(default_factory=dict)
    independent: dict[str, list[list[float]]] = field(default_factory=dict)
    seconds_per_image: float = 0.0
    flagged: bool | None = None
    grid_maps: list[Tensor] = field(default_factory=list)  # original, then each cascading stage (grid image)


@dataclass
class Evaluation:
    methods: list[EvaluatedMethod]
    fractions: list[float]
    random_deletion_auc: list[float]
    random_insertion_auc: list[float]
    random_deletion_curves: list[list[float]]
    random_insertion_curves: list[list[float]]
    centre_pointing: list[bool | None]
    centre_energy: list[float | None]
    cascade: list[str]  # stage names, logits first; cascading column k has stages 0..k randomized
    independent: list[str]
    classes: list[int]
    probabilities: list[float]
    grid_image: int
    flag_threshold: float


def _maps(model: LoadedModel, spec: MethodSpec, x: Tensor, classes: list[int], image_batch: int) -> list[Tensor]:
    """One map per image (``[h, w]``, float32 CPU) for its class, ``image_batch`` images per engine call."""
    method = METHODS[spec.method]
    out: list[Tensor] = []
    for s in range(0, x.shape[0], image_batch):
        targets = ClassTargets(indices=tuple((c,) for c in classes[s:s + image_batch]))
        res = method.attribute(model, x[s:s + image_batch], targets, spec.layer, spec.params,
                               precision=spec.precision)
        out += [row[0].float().cpu() for row in res.maps]
    return out


def _score_fn(model: LoadedModel) -> Callable[[Tensor, Tensor], Tensor]:
    prep = model.preprocessing

    def score(batch: Tensor, cls: Tensor) -> Tensor:
        with torch.no_grad():
            probs = model.probabilities(model.module(prep.normalize(batch)))
        return probs.gather(1, cls[:, None])[:, 0]

    return score


def _compare(original: list[Tensor], randomized: list[Tensor]) -> dict[str, list[float]]:
    """Spearman of |maps|, Spearman of signed maps and SSIM of |maps| scaled to [0, 1], per image."""
    a, b = torch.stack(original), torch.stack(randomized)
    return {"spearman_abs": spearman(a.abs(), b.abs()).tolist(), "spearman": spearman(a, b).tolist(),
            "ssim": ssim(abs_normalized(a), abs_normalized(b)).tolist()}


def cascade_mean(table: list[list[float]]) -> float:
    """Mean over images and cascading columns: how much of the map survives randomization on average."""
    return sum(sum(col) for col in table) / max(1, sum(len(col) for col in table))


def evaluate(model: LoadedModel, pixels: Tensor, classes: list[int], methods: list[MethodSpec], *,
             image_hw: list[tuple[int, int]] | None = None, boxes: list[list[Box]] | None = None,
             steps: int = 16, batch_size: int = 32, image_batch: int = 8, tolerance: int = 15,
             randomization: str = "both", stages: list[Stage] | None = None, seed: int = 0,
             flag_threshold: float = 0.5, grid_image: int = 0) -> Evaluation:
    """Evaluate ``methods`` on ``pixels`` ``[N, 3, S, S]`` (in [0, 1], fitted to the network) for ``classes``.

    ``image_hw``: each photo's original (height, width), the frame ``boxes`` (x0, y0, x1, y1, in
    original pixels, per image; [] for none) are given in. ``randomization``: ``both``,
    ``cascading``, ``independent`` or ``none``. A method is *flagged* when the Spearman rank
    correlation of absolute values between its original maps and those of the cascading
    randomized networks, averaged over images and cascading steps (Quantus' "average correlation"
    of MPRT), is at least ``flag_threshold``: its map survives re-initializing the classifier and
    the stages under it, so it cannot be explaining what they learnt.
    """
    n = pixels.shape[0]
    size = tuple(pixels.shape[-2:])
    image_hw = image_hw or [size] * n  # type: ignore[list-item]
    boxes = boxes or [[] for _ in range(n)]
    x = model.preprocessing.normalize(pixels)
    with torch.no_grad():
        probs = model.probabilities(model.module(x))
    probabilities = [float(probs[i, c]) for i, c in enumerate(classes)]
    spent = {s.key: 0.0 for s in methods}

    originals: dict[str, list[Tensor]] = {}
    layers: dict[str, str | None] = {}
    for spec in methods:
        t0 = time.perf_counter()
        originals[spec.key] = _maps(model, spec, x, classes, image_batch)
        spent[spec.key] += time.perf_counter() - t0
        layers[spec.key] = spec.layer

    gen = torch.Generator().manual_seed(seed)
    random_maps = [torch.rand(size, generator=gen) for _ in range(n)]
    t0 = time.perf_counter()
    curves: CurveSet = deletion_insertion_many(
        _score_fn(model), pixels, classes, [[originals[s.key][i] for s in methods] + [random_maps[i]]
                                            for i in range(n)], steps=steps, batch_size=batch_size)
    di_each = (time.perf_counter() - t0) / (len(methods) + 1)

    centre = centre_map(*size)
    results: list[EvaluatedMethod] = []
    for j, spec in enumerate(methods):
        spent[spec.key] += di_each
        maps = originals[spec.key]
        results.append(EvaluatedMethod(
            spec.key, spec.method, spec.layer,
            deletion_auc=curves.deletion_auc[:, j].tolist(), insertion_auc=curves.insertion_auc[:, j].tolist(),
            deletion_curves=curves.deletion[:, j].tolist(), insertion_curves=curves.insertion[:, j].tolist(),
            pointing=[pointing_hit(maps[i], boxes[i], image_hw[i], tolerance) if boxes[i] else None
                      for i in range(n)],
            energy=[energy_in_boxes(maps[i], boxes[i], image_hw[i], size) if boxes[i] else None
                    for i in range(n)],
            grid_maps=[maps[grid_image]]))

    top_down = list(reversed(stages if stages is not None else main_stages(model)))
    cascading = randomization in ("both", "cascading")
    independent = randomization in ("both", "independent")
    states: list[tuple[str, int, list[Stage]]] = []  # (kind, column, stages randomized)
    if cascading:
        states += [("cascading", k, top_down[:k + 1]) for k in range(len(top_down))]
    if independent:
        states += [("independent", k, [st]) for k, st in enumerate(top_down) if not (cascading and k == 0)]
    if states:
        pristine = served_copy(model)
        for r in results:
            if cascading:
                r.cascading = {s: [] for s in SIMILARITIES}
            if independent:
                r.independent = {s: [] for s in SIMILARITIES}
        previous = pristine  # cascading network k is network k - 1 with one more stage re-initialized
        for kind, _col, randomized in states:
            if kind == "cascading":
                network = previous = randomized_copy(previous, randomized[-1:], seed)
            else:
                network = randomized_copy(pristine, randomized, seed)
            rmodel = with_module(model, network)
            for spec, r in zip(methods, results, strict=True):
                t0 = time.perf_counter()
                maps = _maps(rmodel, spec, x, classes, image_batch)
                spent[spec.key] += time.perf_counter() - t0
                sims = _compare(originals[spec.key], maps)
                targets = [r.cascading] if kind == "cascading" else [r.independent]
                if kind == "cascading" and len(randomized) == 1 and independent:
                    targets.append(r.independent)  # the top stage alone: both tests' first column
                for t in targets:
                    for s in SIMILARITIES:
                        t[s].append(sims[s])
                if kind == "cascading":
                    r.grid_maps.append(maps[grid_image])
            del rmodel, network
    for r in results:
        r.seconds_per_image = spent[r.key] / n
        if cascading:
            r.flagged = cascade_mean(r.cascading["spearman_abs"]) >= flag_threshold
    return Evaluation(
        methods=results, fractions=curves.fractions.tolist(),
        random_deletion_auc=curves.deletion_auc[:, -1].tolist(),
        random_insertion_auc=curves.insertion_auc[:, -1].tolist(),
        random_deletion_curves=curves.deletion[:, -1].tolist(),
        random_insertion_curves=curves.insertion[:, -1].tolist(),
        centre_pointing=[pointing_hit(centre, boxes[i], image_hw[i], tolerance) if boxes[i] else None
                         for i in range(n)],
        centre_energy=[energy_in_boxes(centre, boxes[i], image_hw[i], size) if boxes[i] else None for i in range(n)],
        cascade=[s.name for s in top_down] if cascading else [],
        independent=[s.name for s in top_down] if independent else [],
        classes=list(classes), probabilities=probabilities, grid_image=grid_image, flag_threshold=flag_threshold)


@dataclass(frozen=True)
class SanityCheck:
    """A map of the served network beside the same map after the top stage is randomized."""

    stage: str
    randomized: Tensor
    spearman_abs: float
    spearman: float
    ssim: float


def sanity_check(model: LoadedModel, method: str, x: Tensor, targets: list[list[int]], original: list[list[Tensor]],
                 layer: str | None = None, params: Params | None = None, precision: str | None = None,
                 seed: int = 0) -> list[list[SanityCheck]]:
    """Per image and target: the map after re-initializing the network's top stage, and its similarity.

    ``original`` are the maps the served network gave for ``targets`` (an explain answer's); the
    randomized network is a copy, so the served one is never touched.
    """
    top = main_stages(model)[-1]
    rmodel = with_module(model, randomized_copy(served_copy(model), [top], seed))
    res = METHODS[method].attribute(rmodel, x, ClassTargets(indices=tuple(tuple(r) for r in targets)), layer,
                                    params, precision=precision)
    out = []
    for orig_row, rand_row in zip(original, res.maps, strict=True):
        row = []
        for o, r in zip(orig_row, rand_row, strict=True):
            sims = _compare([o.float().cpu()], [r.float().cpu()])
            row.append(SanityCheck(top.name, r.float().cpu(), sims["spearman_abs"][0], sims["spearman"][0],
                                   sims["ssim"][0]))
        out.append(row)
    return out
