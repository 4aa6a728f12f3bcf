"""Perturbation methods on one base: occlusion sensitivity and RISE.

Both change the input and watch a score; no gradient is taken. :class:`PerturbationMethod` runs
the original images once (targets and reference scores), and a variant sweeps batches of
perturbed copies. Each sweep evaluates *all* classes at once, so every target of an image is read
from the same forwards. Targets may be class logits or a unit of a layer (the forward pass then
stops at that layer).

Precision: the sweeps' forwards run under autocast at bf16/fp16 (maps agree with fp32 at r > 0.99
on Lite0), the unperturbed forward too, so a drop is a difference of two scores of one precision.
Occlusion on the incremental engine stays fp32: the engine stitches patches into cached fp32
activations and checks each new plan against the module at 1e-3, which a bf16 forward misses
(and a plan that fails its check is disabled for every later request); ``engine: full`` runs
its batched forwards at the precision asked.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F

from ..models import LoadedModel
from ..models.preprocess_nd import INTERP
from ..params import Params, param
from .base import (
    REGION_LOGITS,
    SEGMENTER_TASKS,
    EngineError,
    Explanation,
    Method,
    Objective,
    Targets,
    UnitTarget,
    checkpoint_rows,
    default_batch,
    reference_input,
    register,
)
from .boxes import BoxScore, BoxTargets
from .fast.incremental import default_chunk, occlusion_drops, supports_incremental
from .fast.windows import window_starts

log = logging.getLogger(__name__)

Fill = Literal["mean", "zero", "blur"]

# A window on the incremental engine, in batched full forwards (bench/bench_occlusion.py on Lite0 at
# 224 px: 0.21-0.23; rounded up, since a unit target or an unplannable size falls back to 1).
INCREMENTAL_COST = 0.3


@dataclass(frozen=True)
class OcclusionParams(Params):
    window: int = param(32, ge=1, le=224, description="square window side at network input, px")
    stride: int = param(16, ge=1, le=224, description="at most the window")
    fill: Fill = param("mean", description="what covers the window: the dataset mean, black, or a blurred copy")
    sigma: float = param(10.0, ge=0.1, le=200.0, description="blur of the blurred fill, px")
    batch_size: int | None = param(None, ge=1, le=512, description="occluded inputs per forward batch; default 4 "
                                   "on CPU, 64 on CUDA (12 and 64 windows per chunk on the incremental engine)")
    engine: Literal["auto", "full"] = param("auto", description="auto: recompute only each window's cone of "
                                            "influence in the early layers where the model allows it (exact, "
                                            "several times faster); full: one whole forward per window")


@dataclass(frozen=True)
class RiseParams(Params):
    masks: int = param(2000, ge=1, le=8000, description="random masks")
    cell: int = param(7, ge=2, le=32, description="grid cells per side before upsampling")
    p: float = param(0.5, ge=0.05, le=0.95, description="probability a cell is kept")
    seed: int = param(0, ge=0, le=2**31 - 1, description="seed of the masks")
    score: Literal["probability", "logit"] = param("probability", description="the score each mask is weighted by")
    fill: Fill = param("zero", description="zero multiplies pixels by the mask, as in the paper")
    sigma: float = param(10.0, ge=0.1, le=200.0, description="blur of the blurred fill, px")
    batch_size: int | None = param(None, ge=1, le=512, description="masked inputs per forward batch; default 4 "
                                   "on CPU, 64 on CUDA")


class PerturbationMethod(Method):
    """Base: one forward on the originals; a variant returns maps ``[N,T,H,W]`` from its sweep."""

    family: ClassVar[str] = "perturbation"
    supports_units: ClassVar[bool] = True
    tasks: ClassVar[frozenset[str]] = SEGMENTER_TASKS
    box_score: ClassVar[BoxScore] = "similarity"

    def run(self, model: LoadedModel, x: torch.Tensor, targets: Targets, layer: str | None,
            params: Any) -> Explanation:
        objective = Objective(model, targets, blackbox=True, box_score=self.box_score)
        warnings: list[str] = []
        extras: dict[str, Any] = {}
        with torch.no_grad():
            out = objective.outputs(x)
            checkpoint_rows(model, x.shape[0], x)
            rows = objective.resolve(out)
            maps = self.sweep(model, objective, x, out, params, warnings, extras)
        scores, probs = objective.scores(out)
        result = [[maps[i, t].float().cpu() for t in range(len(r))] for i, r in enumerate(rows)]
        if objective.is_region:
            extras[REGION_LOGITS] = out.detach().float().cpu()
        unit_layer = targets.layer if isinstance(targets, UnitTarget) else None
        return Explanation(self.name, result, rows, scores, probs, layer=unit_layer, warnings=warnings,
                           extras=extras)

    def sweep(self, model: LoadedModel, objective: Objective, x: torch.Tensor, out: torch.Tensor,
              params: Any, warnings: list[str], extras: dict[str, Any]) -> torch.Tensor:
        """Maps ``[N,T,H,W]`` for images ``x`` whose unperturbed outputs are ``out``."""
        raise NotImplementedError


def _incremental(model: LoadedModel) -> bool:
    """Whether occlusion may run on the incremental engine: a traceable torch network that is what predicts
    (an ONNX graph's sweeps run on onnxruntime, whole forwards)."""
    return model.runtime is None and supports_incremental(model.module)


def _fill(model: LoadedModel, x: torch.Tensor, params: OcclusionParams | RiseParams) -> torch.Tensor:
    return reference_input(model, x, params.fill, params.sigma)


@register
class Occlusion(PerturbationMethod):
    """Zeiler & Fergus 2014: the score drop when a square window of the input is covered.

    Params: ``window`` 1..224 px and ``stride`` 1..224 px at network input resolution (32, 16;
    stride <= window), ``fill`` mean (dataset mean, zeros after normalization; default) | zero
    (black pixels) | blur (a Gaussian-blurred copy, ``sigma`` px), ``batch_size`` (64). A pixel's
    value is the mean, over the windows covering it, of ``score(x) - score(occluded)``: the same
    numbers as captum's ``Occlusion(sliding_window_shapes=(3,w,w), strides=(3,s,s))`` on one channel.
    By default (``engine`` auto) the sweep runs on the incremental engine
    (:mod:`.fast.incremental`, Krypton-style): only each window's cone of influence is recomputed in the
    early layers, exactly, and the answer's ``extras.engine`` says ``incremental``. Where the
    model cannot take it (unit targets, untraceable or gradient-free models, unknown first layers)
    or ``engine`` is ``full``, every (image, window) pair is one row of a batched full forward. The
    windows' drops are spread back onto pixels with one transposed convolution.
    """

    name = "occlusion"
    title = "Occlusion sensitivity"
    tasks = SEGMENTER_TASKS | {"detection"}
    map_kinds = ("signed", "positive")  # the score's drop can go either way
    Params = OcclusionParams

    def full_precision_reason(self, model: LoadedModel, targets: Targets, params: OcclusionParams) -> str | None:
        if params.engine == "auto" and not isinstance(targets, UnitTarget) and model.classifier and _incremental(model):
            return ("the incremental engine (engine auto) computes in fp32, exactly; engine full runs its "
                    "forwards at a reduced precision")
        return None

    def _geometry(self, params: OcclusionParams, h: int, w: int) -> tuple[int, int]:
        stride = params.stride
        window = min(params.window, h, w)
        if stride > window:
            raise EngineError("bad-parameter", f"stride {stride} is larger than the window {window}:"
                                   " pixels between windows would get no value")
        return window, stride

    def sweep(self, model, objective, x, out, params, warnings, extras):
        if x.dim() != 4:
            return self._sweep_grid(model, objective, x, out, params, extras)
        n, _, h, w = x.shape
        window, stride = self._geometry(params, h, w)
        fill = _fill(model, x, params)
        ys, xs = window_starts(h, window, stride).to(x.device), window_starts(w, window, stride).to(x.device)
        n_win = len(ys) * len(xs)
        img_all = torch.arange(n, device=x.device)
        base = objective.pick(out, img_all)  # [N,T]
        extras.update(window=window, stride=stride, windows=n_win)
        if params.engine == "auto" and not objective.is_unit and model.classifier and _incremental(model):
            # Unit targets stop the forward at a layer; the patch engine only follows whole-network outputs.
            drops = occlusion_drops(model.module, x, fill, window, stride, objective.pick, base,
                                    params.batch_size or default_chunk(x),
                                    window_work=INCREMENTAL_COST * h * w / model.preprocessing.input_size ** 2)
            if drops is not None:
                extras["engine"] = "incremental"
                return self._spread(drops, len(ys), len(xs), window, stride, h, w)
        extras["engine"] = "full"
        batch = params.batch_size or default_batch(x)
        drops = torch.empty(n, n_win, base.shape[1], device=x.device, dtype=torch.float32)
        rr, cc = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
        total = n * n_win
        for s in range(0, total, batch):
            r = torch.arange(s, min(total, s + batch), device=x.device)
            i, k = r // n_win, r % n_win
            y0, x0 = ys[k // len(xs)], xs[k % len(xs)]
            in_y = (rr[None] >= y0[:, None]) & (rr[None] < y0[:, None] + window)  # [B,H]
            in_x = (cc[None] >= x0[:, None]) & (cc[None] < x0[:, None] + window)  # [B,W]
            mask = (in_y[:, :, None] & in_x[:, None, :])[:, None]  # [B,1,H,W]
            occluded = torch.where(mask, fill[i], x[i])
            drops[i, k] = (base[i] - objective.pick(objective.outputs(occluded), i)).float()
            checkpoint_rows(model, len(r), x)
        return self._spread(drops, len(ys), len(xs), window, stride, h, w)

    def _sweep_grid(self, model: LoadedModel, objective: Objective, x: torch.Tensor, out: torch.Tensor,
                    params: OcclusionParams, extras: dict[str, Any]) -> torch.Tensor:
        """Occlusion of a signal ``[N,C,L]`` (1-D windows) or a volume ``[N,C,D,H,W]`` (cubic windows).

        Always full forwards (the incremental engine plans 2-D convolutions only; ``extras.engine``
        says ``full``): every (input, window) pair is one row of a batched forward, and the drops are
        spread back with a transposed 1-D or 3-D convolution, the same mean-over-covering-windows rule.
        """
        n, grid = x.shape[0], tuple(int(v) for v in x.shape[2:])
        window, stride = self._geometry(params, min(grid), min(grid))
        fill = _fill(model, x, params)
        starts = [window_starts(side, window, stride).to(x.device) for side in grid]
        counts = [len(st) for st in starts]
        n_win = math.prod(counts)
        base = objective.pick(out, torch.arange(n, device=x.device))
        extras.update(window=window, stride=stride, windows=n_win, engine="full")
        batch = params.batch_size or default_batch(x)
        drops = torch.empty(n, n_win, base.shape[1], device=x.device, dtype=torch.float32)
        axes = [torch.arange(side, device=x.device) for side in grid]
        total = n * n_win
        for s in range(0, total, batch):
            r = torch.arange(s, min(total, s + batch), device=x.device)
            i, k = r // n_win, r % n_win
            mask = torch.ones(len(r), *grid, dtype=torch.bool, device=x.device)
            rest = k
            for a in reversed(range(len(grid))):  # window index -> its start along each axis, last axis fastest
                start = starts[a][rest % counts[a]]
                rest = rest // counts[a]
                inside = (axes[a][None] >= start[:, None]) & (axes[a][None] < start[:, None] + window)  # [B,side]
                mask &= inside.view(len(r), *[grid[a] if b == a else 1 for b in range(len(grid))])
            occluded = torch.where(mask[:, None], fill[i], x[i])
            drops[i, k] = (base[i] - objective.pick(objective.outputs(occluded), i)).float()
            checkpoint_rows(model, len(r), x)
        t = base.shape[1]
        spread = {1: F.conv_transpose1d, 3: F.conv_transpose3d}[len(grid)]
        g = drops.permute(0, 2, 1).reshape(n * t, 1, *counts)
        ones = torch.ones(1, 1, *(window,) * len(grid), device=x.device, dtype=drops.dtype)
        crop = (...,) + tuple(slice(0, side) for side in grid)
        total_map = spread(g, ones, stride=stride)[crop]
        count = spread(torch.ones_like(g[:1]), ones, stride=stride)[crop]
        return (total_map / count).reshape(n, t, *grid)

    @staticmethod
    def _spread(drops: torch.Tensor, ny: int, nx: int, window: int, stride: int, h: int, w: int) -> torch.Tensor:
        """Mean drop of the windows covering each pixel: ``[N,T,H,W]`` from ``[N,K,T]``."""
        n, _, t = drops.shape
        grid = drops.permute(0, 2, 1).reshape(n * t, 1, ny, nx)
        ones = torch.ones(1, 1, window, window, device=drops.device, dtype=drops.dtype)
        total = F.conv_transpose2d(grid, ones, stride=stride)[..., :h, :w]
        count = F.conv_transpose2d(torch.ones_like(grid[:1]), ones, stride=stride)[..., :h, :w]
        return (total / count).reshape(n, t, h, w)

    def cost(self, model, n_images, n_targets, params, layer):
        if model.spec.input != "image":  # full forwards, one per window along each axis of the grid
            side = min(model.spec.grid)
            window = min(params.window, side)
            return float(n_images * (1 + math.prod(math.ceil(max(0, g - window) / params.stride) + 1
                                                   for g in model.spec.grid)))
        size = model.spec.input_size
        window = min(params.window, size)
        stride = params.stride
        per_axis = math.ceil(max(0, size - window) / stride) + 1
        per_window = 1.0
        if params.engine == "auto" and model.classifier and _incremental(model):
            per_window = INCREMENTAL_COST
        return float(n_images * (1 + per_axis * per_axis * per_window))


def rise_masks(count: int, cell: int, p: float, h: int, w: int, gen: torch.Generator,
               device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``count`` RISE masks ``[count,H,W]`` in [0,1] (Petsiuk et al. 2018, as their code does).

    A ``cell x cell`` grid of Bernoulli(p) cells is upsampled bilinearly to ``(cell+1)`` cells of
    ``ceil(H/cell)`` px, then an ``H x W`` crop is taken at a random shift within one cell, so
    the smooth cell borders fall anywhere. Only the tiny grids and shifts come from the CPU
    generator (reproducible on any device); the upsampling runs on ``device``.
    """
    ch, cw = math.ceil(h / cell), math.ceil(w / cell)
    grid = (torch.rand(count, 1, cell, cell, generator=gen) < p).to(device, dtype)
    dy = torch.randint(0, ch, (count,), generator=gen).to(device)
    dx = torch.randint(0, cw, (count,), generator=gen).to(device)
    up = F.interpolate(grid, size=((cell + 1) * ch, (cell + 1) * cw), mode="bilinear", align_corners=False)
    rows = dy[:, None] + torch.arange(h, device=device)[None]  # [M,H]
    cols = dx[:, None] + torch.arange(w, device=device)[None]  # [M,W]
    b = torch.arange(count, device=device)[:, None, None]
    return up[b, 0, rows[:, :, None], cols[:, None, :]].clamp_(0, 1)  # rounding can pass 1 by an ulp


def rise_masks_grid(count: int, cell: int, p: float, grid: tuple[int, ...], gen: torch.Generator,
                    device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """RISE masks ``[count,*grid]`` for a signal (``grid`` = ``(L,)``) or a volume (``(D, H, W)``).

    :func:`rise_masks` along one or three axes: ``cell`` Bernoulli(p) cells per axis, upsampled
    (linear, trilinear) to ``cell + 1`` cells of ``ceil(side / cell)``, cropped at a random shift
    within one cell per axis. The 2-D case keeps :func:`rise_masks` (same stream as before).
    """
    dims = len(grid)
    cells = [math.ceil(side / cell) for side in grid]
    cube = (torch.rand(count, 1, *(cell,) * dims, generator=gen) < p).to(device, dtype)
    shifts = [torch.randint(0, c, (count,), generator=gen).to(device) for c in cells]
    up = F.interpolate(cube, size=tuple((cell + 1) * c for c in cells), mode=INTERP[dims], align_corners=False)[:, 0]
    out = up
    for a, side in enumerate(grid):  # crop each axis at its own shift: gather along axis a+1
        idx = shifts[a][:, None] + torch.arange(side, device=device)[None]  # [M,side]
        shape = [count] + [1] * dims
        shape[a + 1] = side
        full = list(out.shape)
        full[a + 1] = side
        out = out.gather(a + 1, idx.view(shape).expand(full))
    return out.clamp_(0, 1)


@register
class RISE(PerturbationMethod):
    """Petsiuk et al. 2018: saliency = sum_i score(x * M_i) * M_i / (N * p) over random masks M_i.

    Params: ``masks`` 1..8000 (2000), ``cell`` 2..32 grid size s (7), ``p`` 0.05..0.95 keep
    probability (0.5), ``seed`` (0), ``score`` probability (the paper's class confidence; default)
    | logit, ``fill`` zero (the paper multiplies pixels by the mask; default) | mean | blur,
    ``batch_size`` (64). The same masks serve every image; all targets come from the same sweep.
    """

    name = "rise"
    title = "RISE"
    map_kinds = ("positive",)  # a mask-weighted mean of scores: non-negative, smooth
    Params = RiseParams

    def independent_images(self, params: RiseParams) -> bool:
        return False  # masks are drawn per chunk of batch_size // N, so the stream depends on N

    def sweep(self, model, objective, x, out, params, warnings, extras):
        if x.dim() != 4:
            return self._sweep_grid(model, objective, x, params, extras)
        n, _, h, w = x.shape
        count, cell, p, seed, kind = params.masks, params.cell, params.p, params.seed, params.score
        batch = params.batch_size or default_batch(x)
        fill = _fill(model, x, params)
        probs = kind == "probability" and not objective.is_unit and not objective.is_region
        gen = torch.Generator(device="cpu").manual_seed(seed)
        per = max(1, batch // n)  # masks per chunk; each mask is applied to every image
        sal = torch.zeros(n, objective.n_targets, h, w, device=x.device, dtype=torch.float32)
        img = torch.arange(n, device=x.device).repeat(per)
        for s in range(0, count, per):
            m = rise_masks(min(per, count - s), cell, p, h, w, gen, x.device, x.dtype)  # [M,H,W]
            k = m.shape[0]
            mm = m.repeat_interleave(n, 0)[:, None]  # rows: mask-major, image-minor
            ii = img[: k * n]
            masked = fill[ii] + mm * (x[ii] - fill[ii])
            scores = objective.outputs(masked).float()
            if probs:
                scores = model.probabilities(scores)
            picked = objective.pick(scores, ii).view(k, n, -1)  # [M,N,T]
            sal += torch.einsum("mnt,mhw->nthw", picked, m.float())
            checkpoint_rows(model, k * n, x)
        score = "probability" if probs else "region logit sum" if objective.is_region else kind
        extras.update(masks=count, cell=cell, p=p, score=score)
        return sal / (count * p)

    def _sweep_grid(self, model: LoadedModel, objective: Objective, x: torch.Tensor, params: RiseParams,
                    extras: dict[str, Any]) -> torch.Tensor:
        """RISE on a signal or a volume: :func:`rise_masks_grid` masks, the same weighted mean as on images."""
        n, grid = x.shape[0], tuple(int(v) for v in x.shape[2:])
        count, p = params.masks, params.p
        batch = params.batch_size or default_batch(x)
        fill = _fill(model, x, params)
        probs = params.score == "probability" and not objective.is_unit
        gen = torch.Generator(device="cpu").manual_seed(params.seed)
        per = max(1, batch // n)
        sal = torch.zeros(n, objective.n_targets, *grid, device=x.device, dtype=torch.float32)
        img = torch.arange(n, device=x.device).repeat(per)
        for s in range(0, count, per):
            m = rise_masks_grid(min(per, count - s), params.cell, p, grid, gen, x.device, x.dtype)
            k = m.shape[0]
            mm = m.repeat_interleave(n, 0)[:, None]
            ii = img[: k * n]
            scores = objective.outputs(fill[ii] + mm * (x[ii] - fill[ii])).float()
            if probs:
                scores = model.probabilities(scores)
            picked = objective.pick(scores, ii).view(k, n, -1)  # [M,N,T]
            sal += torch.einsum("mnt,m...->nt...", picked, m.float())
            checkpoint_rows(model, k * n, x)
        extras.update(masks=count, cell=params.cell, p=p, score="probability" if probs else params.score)
        return sal / (count * p)

    def cost(self, model, n_images, n_targets, params, layer):
        return float(n_images * (1 + params.masks))


@dataclass(frozen=True)
class DriseParams(Params):
    masks: int = param(1000, ge=1, le=8000, description="random masks, shared by every box of an image")
    cell: int = param(16, ge=2, le=32, description="grid cells per side before upsampling (the paper: 16)")
    p: float = param(0.5, ge=0.05, le=0.95, description="probability a cell is kept")
    seed: int = param(0, ge=0, le=2**31 - 1, description="seed of the masks")
    batch_size: int | None = param(None, ge=1, le=512, description="masked inputs per forward batch; default 4 "
                                   "on CPU, 64 on CUDA")


@register
class DRISE(PerturbationMethod):
    """Petsiuk et al., CVPR 2021: saliency of a box = sum_i (s_i - mean s) * M_i / N over random masks M_i,
    where s_i is the best D-RISE similarity (IoU x cosine of class-score vectors x objectness) of the
    detections of ``x * M_i`` to the box (:mod:`.boxes`). The mean similarity is taken off, as
    vision-explanation-methods does (``normalize``): most masks leave a detector sure of its box, and
    without it every pixel carries that common level and the box's own evidence is a faint bump on it.

    Params: ``masks`` 1..8000 (1000), ``cell`` 2..32 (16), ``p`` (0.5), ``seed`` (0), ``batch_size``.
    The masks are RISE's (:func:`rise_masks`, the same stream for a seed); one sweep scores every box of
    an image at once, a batch of masked copies per forward, and gives the same maps as one mask at a
    time (tests/unit/test_detection.py).
    """

    name = "drise"
    title = "D-RISE"
    map_kinds = ("positive", "signed")  # evidence for the box; below the mean where masking a pixel helps
    Params = DriseParams
    tasks = frozenset({"detection"})

    def independent_images(self, params: DriseParams) -> bool:
        return False  # as RISE: masks are drawn per chunk, so the stream depends on the batch

    def run(self, model, x, targets, layer, params):
        if not isinstance(targets, BoxTargets):
            raise EngineError("unsupported-target", "drise explains a detector's boxes: give a box target")
        return super().run(model, x, targets, layer, params)

    def sweep(self, model, objective, x, out, params, warnings, extras):
        n, _, h, w = x.shape
        batch = params.batch_size or default_batch(x)
        gen = torch.Generator(device="cpu").manual_seed(params.seed)
        per = max(1, batch // n)  # masks per chunk; each mask is applied to every image
        sal = torch.zeros(n, objective.n_targets, h, w, device=x.device, dtype=torch.float32)
        mask_sum = torch.zeros(h, w, device=x.device, dtype=torch.float32)
        sim_sum = torch.zeros(n, objective.n_targets, device=x.device, dtype=torch.float32)
        img = torch.arange(n, device=x.device).repeat(per)
        for s in range(0, params.masks, per):
            m = rise_masks(min(per, params.masks - s), params.cell, params.p, h, w, gen, x.device, x.dtype)
            k = m.shape[0]
            ii = img[: k * n]
            masked = x[ii] * m.repeat_interleave(n, 0)[:, None]  # rows: mask-major, image-minor
            sim = objective.outputs(masked).float()  # [k*n, boxes of all images]
            picked = objective.pick(sim, ii).view(k, n, -1)  # [M,N,T]
            sal += torch.einsum("mnt,mhw->nthw", picked, m.float())
            mask_sum += m.float().sum(0)
            sim_sum += picked.sum(0)
            checkpoint_rows(model, k * n, x)
        extras.update(masks=params.masks, cell=params.cell, p=params.p)
        mean = sim_sum / params.masks
        return (sal - mean[:, :, None, None] * mask_sum) / params.masks

    def cost(self, model, n_images, n_targets, params, layer):
        return float(n_images * (1 + params.masks))
