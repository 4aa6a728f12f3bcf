"""The gradient family on one base: saliency, guided backprop, deconvnet, input x gradient,
integrated gradients, SmoothGrad around any of them, and guided Grad-CAM.

:class:`GradientMethod` owns everything the variants share: resolving the targets (class logits
from the same forward pass that is differentiated, or one channel/neuron of a layer), taking
input gradients with :func:`torch.autograd.grad` (weights stay frozen, only the input is a leaf),
and reducing the signed ``[3,H,W]`` attribution of each image and target to a ``[H,W]`` map.
A variant only says how its signed attribution of a batch is formed (:meth:`GradientMethod.signed`).

Targets are logits, not probabilities, as in Simonyan et al. 2014: the softmax would mix in every
other class's score. Reductions (param ``reduce``):

* ``abs-max`` max over colour channels of ``|a|`` (Simonyan et al.); default of saliency, guided
  backprop, deconvnet and guided Grad-CAM, whose signs carry little meaning.
* ``sum``     signed channel sum; default of input x gradient and integrated gradients, so that a
  map still sums to what the method distributes (IG: ``score(x) - score(baseline)``).
* ``abs-sum`` and ``l2`` over channels.

Precision: input gradients of a bf16 forward do not agree with fp32 (Pearson r of the saliency map
0.75-0.79 on Lite0, input x gradient 0.67-0.83, guided backprop 0.97-0.98, SmoothGrad 0.90-0.92),
and no fault of bf16's: a float32 input moved by noise of 1e-3 (an eighth of one grey level)
already moves the saliency map to r = 0.89. So the family runs fp32 when bf16/fp16 is asked
(:meth:`GradientMethod.full_precision_reason`) and says so, except deconvnet, whose backward does
not depend on the forward's rectifier masks (r > 0.998). docs/precision.md has the numbers.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, get_args

import torch
import torch.nn.functional as F

from ..models import LoadedModel, validate_layer
from ..models.preprocess_nd import INTERP
from ..params import Params, param
from .base import (
    CLASSIFIER_TASKS,
    METHODS,
    REGION_LOGITS,
    SEGMENTER_TASKS,
    Baseline,
    ClassTargets,
    EngineError,
    Explanation,
    MapKind,
    Method,
    Objective,
    Targets,
    UnitTarget,
    checkpoint_rows,
    default_batch,
    get_method,
    reference_input,
    register,
)
from .fast.fastconv import packed_convolutions
from .rules import rectifier_rule

log = logging.getLogger(__name__)

Reduce = Literal["abs-max", "sum", "abs-sum", "l2"]
REDUCTIONS = get_args(Reduce)
Integration = Literal["gauss-legendre", "trapezoid"]
Smoothable = Literal["saliency", "guided_backprop", "deconvnet", "input_x_gradient", "integrated_gradients"]


@dataclass(frozen=True)
class GradientParams(Params):
    reduce: Reduce | None = param(None, description="how the 3 colour channels become one map; default abs-max "
                                  "(saliency, guided, deconvnet) or sum (x-gradient, IG)")


@dataclass(frozen=True)
class IntegratedGradientsParams(GradientParams):
    steps: int = param(32, ge=2, le=512, description="points on the path from the baseline")
    baseline: Baseline = param("black", description="the reference input the path starts from")
    sigma: float = param(10.0, ge=0.1, le=200.0, description="blur of the blurred baseline, px")
    integration: Integration = param("gauss-legendre", description="quadrature rule along the path")
    batch_size: int | None = param(None, ge=1, le=512, description="path points per forward batch; default 4 on "
                                   "CPU, 64 on CUDA")
    adaptive: bool = param(True, description="adaptive Gauss-Kronrod quadrature: split the path where the "
                           "gradient varies most until the attributions sum to score(x) - score(baseline) within "
                           "tolerance, evaluating at most max_steps points; false: steps points of `integration`")
    tolerance: float = param(0.02, ge=0.001, le=0.5, description="adaptive: the relative completeness error "
                             "to reach")
    max_steps: int = param(120, ge=15, le=2040, description="adaptive: path points evaluated in all, at most "
                           "(15 per path segment)")


KRONROD_POINTS = 15  # points of one Gauss-Kronrod (G7, K15) segment


def adaptive_points(steps: int, max_steps: int) -> tuple[int, int]:
    """(initial segments, most points in all) of an adaptive run: ``steps`` points rounded to whole segments."""
    first = max(1, round(steps / KRONROD_POINTS))
    most = max(first, max_steps // KRONROD_POINTS)
    return first, most * KRONROD_POINTS


@dataclass(frozen=True)
class SmoothGradParams(IntegratedGradientsParams):
    """SmoothGrad's own knobs plus the base method's (IG's steps and baseline pass through)."""

    base: Smoothable = param("saliency", description="the method averaged over noisy copies")
    samples: int = param(25, ge=1, le=256, description="noisy copies")
    noise: float = param(0.15, ge=0.0, le=1.0, description="noise std as a fraction of the input range")
    seed: int = param(0, ge=0, le=2**31 - 1, description="seed of the noise")


def input_gradients(objective: Objective, x: torch.Tensor, img: torch.Tensor,
                    rule: str | None = None, out_sink: list[torch.Tensor] | None = None,
                    warnings: list[str] | None = None) -> torch.Tensor:
    """Gradients ``[B,T,3,H,W]`` of each target's score w.r.t. a batch ``x``, from ONE forward pass.

    With ``rule`` ("guided" / "deconvnet") rectifiers pass gradients by that rule. If the
    objective has no targets yet they are resolved from this forward pass (``img`` must then be
    ``arange(N)``), and its outputs are appended to ``out_sink`` for reporting scores.
    """
    xg = x.detach().requires_grad_(True)
    # Without a rule, frozen CPU convolutions still run prepacked (.fastconv; the rule context does it itself).
    ctx = rectifier_rule(objective.module, rule) if rule else _packed_plain()
    with torch.enable_grad():
        with ctx as rule_warnings:
            out = objective.outputs(xg)
        if warnings is not None:
            warnings.extend(w for w in rule_warnings if w not in warnings)
        if objective.rows is None:
            objective.resolve(out)
        if out_sink is not None:
            out_sink.append(out.detach())
        picked = objective.pick(out, img)
        n_t = picked.shape[1]
        grads = []
        for t in range(n_t):
            (g,) = torch.autograd.grad(picked[:, t].sum(), xg, retain_graph=t < n_t - 1)
            grads.append(g)
    # Every sweep of the family (IG's path points, SmoothGrad's noisy copies) passes here once per chunk.
    checkpoint_rows(objective.model, x.shape[0], x, 1 + 2 * n_t)
    return torch.stack(grads, 1)


@contextmanager
def _packed_plain() -> Iterator[list[str]]:
    with packed_convolutions():
        yield []


def reduce_channels(a: torch.Tensor, how: str, dim: int = -3) -> torch.Tensor:
    """``[...,3,H,W]`` -> ``[...,H,W]``; ``dim`` is the channel axis from the end (``-2`` for a signal's
    ``[...,C,L]``, ``-4`` for a volume's ``[...,C,D,H,W]``)."""
    if how == "abs-max":
        return a.abs().amax(dim)
    if how == "sum":
        return a.sum(dim)
    if how == "abs-sum":
        return a.abs().sum(dim)
    if how == "l2":
        return a.pow(2).sum(dim).sqrt()
    raise EngineError("bad-parameter", f"unknown reduce {how!r}", list(REDUCTIONS))


# --------------------------------------------------------------------------------------------
# The base
# --------------------------------------------------------------------------------------------

@dataclass
class GradContext:
    """Per-call state a variant may read or fill (warnings, extras)."""

    model: LoadedModel
    objective: Objective
    params: Any
    warnings: list[str]
    extras: dict[str, Any]
    layer: str | None = None  # the layer a variant uses (guided Grad-CAM), already validated


class GradientMethod(Method):
    """Base: targets, input gradients, channel reduction. A variant forms the signed attribution."""

    family: ClassVar[str] = "gradient"
    supports_units: ClassVar[bool] = True
    needs_gradients: ClassVar[bool] = True
    tasks: ClassVar[frozenset[str]] = SEGMENTER_TASKS | {"detection"}
    # abs-max by default: a magnitude whose sign means little; a signed ``reduce`` = "sum" draws it signed
    map_kinds: ClassVar[tuple[MapKind, ...]] = ("unsigned", "signed")
    default_reduce: ClassVar[str] = "abs-max"
    rule: ClassVar[str | None] = None  # rectifier rule for the backward pass
    batchable: ClassVar[bool] = True  # signed() accepts any batch of inputs (SmoothGrad relies on it)
    # Keep the signed [3,H,W] input gradient in ``extras["gradient"]`` ([image][target], CPU): the
    # methods whose gradient is itself a picture (rendered as ``gradient_rgb``).
    keeps_gradient: ClassVar[bool] = False
    Params = GradientParams

    def run(self, model: LoadedModel, x: torch.Tensor, targets: Targets, layer: str | None,
            params: GradientParams) -> Explanation:
        reduce = params.reduce or self.default_reduce
        objective = Objective(model, targets, fold=True)
        ctx = GradContext(model, objective, params, [], {}, self.layer_used(objective, layer))
        img = torch.arange(x.shape[0], device=x.device)
        sink: list[torch.Tensor] = []
        signed = self.signed(ctx, x, img, out_sink=sink)  # [N,T,3,H,W]
        out = sink[0] if sink else None
        if out is None:  # the variant did not run the original images: one plain forward
            with torch.no_grad():
                out = objective.outputs(x)
            objective.resolve(out)
        maps = self.finish(ctx, x, signed, reduce)  # [N,T,H,W]
        rows = objective.rows
        assert rows is not None
        scores, probs = objective.scores(out)
        result = [[maps[i, t].float().cpu() for t in range(len(r))] for i, r in enumerate(rows)]
        if objective.is_region:
            ctx.extras[REGION_LOGITS] = out.detach().float().cpu()
        if self.keeps_gradient:
            ctx.extras["gradient"] = [[signed[i, t].float().cpu() for t in range(len(r))] for i, r in enumerate(rows)]
        return Explanation(self.name, result, rows, scores, probs, layer=ctx.layer,
                           warnings=ctx.warnings, extras=ctx.extras)

    def signed(self, ctx: GradContext, x: torch.Tensor, img: torch.Tensor,
               out_sink: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Signed attribution ``[B,T,3,H,W]`` of a batch ``x`` whose rows belong to images ``img``.

        When called with ``out_sink`` on the original images, a variant that runs them forward
        should append its outputs so that targets and scores need no extra forward pass.
        """
        return input_gradients(ctx.objective, x, img, self.rule, out_sink, ctx.warnings)

    def finish(self, ctx: GradContext, x: torch.Tensor, signed: torch.Tensor, reduce: str) -> torch.Tensor:
        """Maps ``[N,T,H,W]`` from the signed attribution; a variant may combine further."""
        return reduce_channels(signed, reduce, 1 - x.dim())

    def layer_used(self, objective: Objective, layer: str | None) -> str | None:
        """The layer the answer names: the unit's layer, or the one a variant works on."""
        return objective.targets.layer if isinstance(objective.targets, UnitTarget) else None

    def cost(self, model: LoadedModel, n_images: int, n_targets: int, params: Any, layer: str | None) -> float:
        return float(n_images * (1 + 2 * n_targets))

    def full_precision_reason(self, model: LoadedModel, targets: Targets, params: Any) -> str | None:
        return ("input gradients of a reduced-precision forward do not agree with fp32 (saliency maps at r of "
                "about 0.8); input gradients are that sensitive to any change of the forward")


# --------------------------------------------------------------------------------------------
# Variants
# --------------------------------------------------------------------------------------------

@register
class Saliency(GradientMethod):
    """Simonyan et al. 2014: the gradient of the score w.r.t. the input; map = max_c |grad|."""

    name = "saliency"
    title = "Saliency (vanilla gradient)"


@register
class GuidedBackprop(GradientMethod):
    """Springenberg et al. 2015: rectifiers pass only positive gradients where their input was positive."""

    name = "guided_backprop"
    title = "Guided backpropagation"
    rule = "guided"
    keeps_gradient = True
    map_kinds = ("unsigned", "signed", "gradient_rgb")  # its gradient looks like the object's edges


@register
class Deconvnet(GradientMethod):
    """Zeiler & Fergus 2014: rectifiers pass positive gradients regardless of the forward pass."""

    name = "deconvnet"
    title = "Deconvnet"
    rule = "deconvnet"
    keeps_gradient = True
    map_kinds = ("unsigned", "signed", "gradient_rgb")

    def full_precision_reason(self, model, targets, params):
        return None  # its backward ignores the forward's rectifier masks: bf16 agrees with fp32 (r > 0.998)


@register
class InputXGradient(GradientMethod):
    """Shrikumar et al. 2016: input x gradient, the input measured from the dataset mean.

    ``x`` is normalized, so the factor is the distance from the mean image; this is IG with the
    ``mean`` baseline in the limit of a linear model. Signed channel sum by default.
    """

    name = "input_x_gradient"
    title = "Input x gradient"
    default_reduce = "sum"
    map_kinds = ("signed", "unsigned")  # a signed sum over channels: the sign is the message

    def signed(self, ctx, x, img, out_sink=None):
        return super().signed(ctx, x, img, out_sink) * x[:, None]


def _kronrod_nodes() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gauss-Kronrod G7/K15 on [-1, 1] (QUADPACK's qk15): nodes, Kronrod weights, Gauss weights (0 off-node)."""
    half = [0.991455371120813, 0.949107912342759, 0.864864423359769, 0.741531185599394, 0.586087235467691,
            0.405845151377397, 0.207784955007898]
    wk_half = [0.022935322010529, 0.063092092629979, 0.104790010322250, 0.140653259715525, 0.169004726639267,
               0.190350578064785, 0.204432940075298]
    wg_half = [0.0, 0.129484966168870, 0.0, 0.279705391489277, 0.0, 0.381830050505119, 0.0]
    nodes = torch.tensor([-v for v in half] + [0.0] + half[::-1], dtype=torch.float64)
    wk = torch.tensor(wk_half + [0.209482141084728] + wk_half[::-1], dtype=torch.float64)
    wg = torch.tensor(wg_half + [0.417959183673469] + wg_half[::-1], dtype=torch.float64)
    return nodes, wk, wg


def _relative_error(attr: torch.Tensor, diff: torch.Tensor) -> torch.Tensor:
    """``|sum(attr) - diff| / |diff|`` per image and target: how far IG is from completeness."""
    return (attr.flatten(2).sum(-1).double() - diff).abs() / diff.abs().clamp_min(1e-12)


def _nodes(steps: int, kind: str, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Alphas in [0,1] and quadrature weights summing to 1 for the path integral."""
    if kind == "trapezoid":
        alphas = torch.linspace(0, 1, steps, dtype=torch.float64)
        w = torch.full((steps,), 1.0 / (steps - 1), dtype=torch.float64)
        w[0] = w[-1] = 0.5 / (steps - 1)
    else:
        import numpy as np  # setup only: a handful of nodes, computed once per call

        nodes, weights = np.polynomial.legendre.leggauss(steps)
        alphas = torch.from_numpy((nodes + 1) / 2)
        w = torch.from_numpy(weights / 2)
    return alphas.to(device, dtype), w.to(device, dtype)


@register
class IntegratedGradients(GradientMethod):
    """Sundararajan et al. 2017: (x - x') times the path integral of gradients from a baseline x'.

    Params: ``steps`` 2..512 (32), ``baseline`` black | mean | blurred (``sigma`` px, default 10),
    ``integration`` gauss-legendre (default, as captum) | trapezoid, ``batch_size`` rows per
    forward (default 32). Every (image, alpha) pair is one row; rows run in chunks, one forward
    and one backward per target each. ``extras["completeness"]`` reports, per image and target,
    the attribution sum against ``score(x) - score(baseline)`` and the relative error.
    """

    name = "integrated_gradients"
    title = "Integrated gradients"
    default_reduce = "sum"
    map_kinds = ("signed", "unsigned")  # sums to score(x) - score(baseline): the sign is the message
    Params = IntegratedGradientsParams

    def independent_images(self, params: IntegratedGradientsParams) -> bool:
        return not params.adaptive  # the adaptive rule refines until the worst image of the batch converges

    def full_precision_reason(self, model, targets, params):
        return ("its completeness check (attributions summing to score(x) - score(baseline), which adaptive "
                "quadrature refines towards) needs fp32 scores and gradients")

    def signed(self, ctx, x, img, out_sink=None):
        p: IntegratedGradientsParams = ctx.params
        obj = ctx.objective
        base = reference_input(ctx.model, x, p.baseline, p.sigma)
        n = x.shape[0]
        with torch.no_grad():
            ends = obj.outputs(torch.cat([x, base]))  # score(x) and score(baseline), one forward
        checkpoint_rows(ctx.model, 2 * n, x)
        if obj.rows is None:
            obj.resolve(ends[:n])
        top = out_sink is not None  # inside SmoothGrad the noisy copies' numbers mean little
        if top:
            out_sink.append(ends[:n])
        diff = (obj.pick(ends[:n], img) - obj.pick(ends[n:], img)).double()
        batch = p.batch_size or default_batch(x)
        if p.adaptive:
            attr, steps = self._adaptive(obj, x, base, img, diff, p, batch)
        else:
            attr, steps = self._path_integral(obj, x, base, img, p.steps, p.integration, batch), p.steps
        if top:
            self._completeness(ctx, attr, diff, _relative_error(attr, diff), p, steps)
        return attr

    def _adaptive(self, obj: Objective, x: torch.Tensor, base: torch.Tensor, img: torch.Tensor, diff: torch.Tensor,
                  p: IntegratedGradientsParams, batch: int) -> tuple[torch.Tensor, int]:
        """Adaptive Gauss-Kronrod quadrature of the path integral (QUADPACK's QAG, on the path of images).

        Each segment gets a 15-point Kronrod estimate and, from 7 of the same points, a Gauss
        estimate; their difference says where the gradient changes fastest along the path (a
        rectifier switching, a saturating unit). The worst segment is halved until the sum of
        the attributions is within ``tolerance`` of ``score(x) - score(baseline)`` (which IG
        must equal) or ``max_steps`` points are spent. Returns the attributions and the points
        of the final estimate.
        """
        first, most = adaptive_points(p.steps, p.max_steps)
        edges = torch.linspace(0, 1, first + 1, dtype=torch.float64).tolist()
        segments = [(a, b, *self._kronrod(obj, x, base, img, a, b, batch)) for a, b in itertools.pairwise(edges)]
        while True:
            attr = sum(seg[2] for seg in segments)
            spent = len(segments) * KRONROD_POINTS
            if float(_relative_error(attr, diff).max()) <= p.tolerance or spent + KRONROD_POINTS > most:
                return attr, spent
            worst = max(range(len(segments)), key=lambda k: float(segments[k][3].sum()))
            a, b, _, _ = segments.pop(worst)
            mid = (a + b) / 2
            segments += [(a, mid, *self._kronrod(obj, x, base, img, a, mid, batch)),
                         (mid, b, *self._kronrod(obj, x, base, img, mid, b, batch))]

    def _kronrod(self, obj: Objective, x: torch.Tensor, base: torch.Tensor, img: torch.Tensor, a: float, b: float,
                 batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One segment ``[a, b]`` of the path: its K15 attributions ``[N,T,3,H,W]`` and error estimate ``[N,T]``."""
        nodes, wk, wg = _kronrod_nodes()
        alphas = ((a + b) / 2 + (b - a) / 2 * nodes).to(x.device, x.dtype)
        grads = self._gradients_at(obj, x, base, img, alphas, batch)  # [15,N,T,3,H,W]
        delta = (x - base)[:, None]
        scale = (b - a) / 2
        k_attr = torch.einsum("k,knt...->nt...", (scale * wk).to(x.device, x.dtype), grads) * delta
        g_attr = torch.einsum("k,knt...->nt...", (scale * wg).to(x.device, x.dtype), grads) * delta
        return k_attr, (k_attr.flatten(2).sum(-1) - g_attr.flatten(2).sum(-1)).abs().double()

    def _gradients_at(self, obj: Objective, x: torch.Tensor, base: torch.Tensor, img: torch.Tensor,
                      alphas: torch.Tensor, batch: int) -> torch.Tensor:
        """Input gradients at every path point ``[K,N,T,3,H,W]``, in chunks of ``batch`` rows."""
        n, steps = x.shape[0], len(alphas)
        delta = x - base
        out = torch.empty(steps, n, obj.n_targets, *x.shape[1:], device=x.device, dtype=x.dtype)
        total = n * steps
        for s in range(0, total, batch):
            r = torch.arange(s, min(total, s + batch), device=x.device)
            i, k = r // steps, r % steps
            xb = base[i] + alphas[k].view(-1, *(1,) * (x.dim() - 1)) * delta[i]
            out[k, i] = input_gradients(obj, xb, img[i], self.rule)
        return out

    def _path_integral(self, obj: Objective, x: torch.Tensor, base: torch.Tensor, img: torch.Tensor, steps: int,
                       integration: str, batch: int) -> torch.Tensor:
        """Signed attributions ``[N,T,3,H,W]`` from ``steps`` quadrature points, in chunks of ``batch`` rows."""
        n = x.shape[0]
        alphas, weights = _nodes(steps, integration, x.device, x.dtype)
        delta = x - base
        acc = torch.zeros(n, obj.n_targets, *x.shape[1:], device=x.device, dtype=x.dtype)
        total = n * steps
        for s in range(0, total, batch):
            r = torch.arange(s, min(total, s + batch), device=x.device)
            i, k = r // steps, r % steps
            xb = base[i] + alphas[k].view(-1, *(1,) * (x.dim() - 1)) * delta[i]
            g = input_gradients(obj, xb, img[i], self.rule)
            acc.index_add_(0, i, g * weights[k].view(-1, *(1,) * x.dim()))
        return acc * delta[:, None]

    def _completeness(self, ctx: GradContext, attr: torch.Tensor, diff: torch.Tensor, rel: torch.Tensor,
                      p: IntegratedGradientsParams, steps: int) -> None:
        sums = attr.flatten(2).sum(-1).double()
        rows = ctx.objective.rows or []
        ctx.extras["completeness"] = [
            [{"attribution_sum": float(sums[i, t]), "score_difference": float(diff[i, t]),
              "relative_error": float(rel[i, t]), "steps": steps, "adaptive": p.adaptive}
             for t in range(len(r))]
            for i, r in enumerate(rows)
        ]
        worst = max((float(rel[i, t]) for i, r in enumerate(rows) for t in range(len(r))), default=0.0)
        if worst > p.tolerance:
            advice = "raise max_steps" if p.adaptive else "set adaptive: true or raise steps"
            ctx.warnings.append(f"integrated gradients: attributions miss score(x) - score(baseline) by up to "
                                f"{worst:.1%} after {steps} steps (tolerance {p.tolerance:.1%}); {advice}")

    def cost(self, model, n_images, n_targets, params, layer):
        # Adaptive: the worst case, every point it may spend.
        points = adaptive_points(params.steps, params.max_steps)[1] if params.adaptive else params.steps
        return float(n_images * (2 + points * (1 + 2 * n_targets)))


@register
class SmoothGrad(GradientMethod):
    """Smilkov et al. 2017: the average of a base method's attributions over noisy copies of x.

    Params: ``base`` (one of :data:`Smoothable`, default saliency), ``samples`` 1..256 (25),
    ``noise`` 0..1 (0.15): the noise std as a fraction of each image's value range, ``seed``,
    ``batch_size`` (32). The signed attributions are averaged, then reduced with the base's
    default reduction unless ``reduce`` says otherwise. Base params (IG's steps...) pass through.
    """

    name = "smoothgrad"
    title = "SmoothGrad"
    Params = SmoothGradParams

    def independent_images(self, params: SmoothGradParams) -> bool:
        return False  # one noise stream is drawn for the whole batch of noisy copies

    def full_precision_reason(self, model, targets, params):
        return self._base(params).full_precision_reason(model, targets, params)  # its base's decision

    def _base(self, params: SmoothGradParams) -> GradientMethod:
        method = METHODS[params.base]
        assert isinstance(method, GradientMethod)
        return method

    def run(self, model, x, targets, layer, params):
        if params.reduce is None:
            params = params.replace(reduce=self._base(params).default_reduce)
        return super().run(model, x, targets, layer, params)

    def signed(self, ctx, x, img, out_sink=None):
        p: SmoothGradParams = ctx.params
        base = self._base(p)
        samples, noise, seed = p.samples, p.noise, p.seed
        batch = p.batch_size or default_batch(x)
        obj = ctx.objective
        n = x.shape[0]
        if obj.rows is None:
            with torch.no_grad():
                out = obj.outputs(x)
            checkpoint_rows(ctx.model, n, x)
            obj.resolve(out)
            if out_sink is not None:
                out_sink.append(out)
        span = (x.flatten(1).amax(1) - x.flatten(1).amin(1)).view(-1, *(1,) * (x.dim() - 1))
        gen = torch.Generator(device="cpu").manual_seed(seed)
        acc = torch.zeros(n, obj.n_targets, *x.shape[1:], device=x.device, dtype=x.dtype)
        total = n * samples
        # IG inside: each noisy copy is a batch of steps of its own, so feed it copies one chunk apart.
        chunk = max(1, batch // p.steps) if base.name == "integrated_gradients" else batch
        for s in range(0, total, chunk):
            r = torch.arange(s, min(total, s + chunk), device=x.device)
            i = r // samples
            eps = torch.randn((len(r), *x.shape[1:]), generator=gen, dtype=torch.float32).to(x.device, x.dtype)
            xb = x[i] + eps * (noise * span[i])
            acc.index_add_(0, i, base.signed(ctx, xb, img[i]))
        return acc / samples

    def cost(self, model, n_images, n_targets, params, layer):
        per = METHODS[params.base].cost(model, 1, n_targets, params, layer)
        return float(n_images * (1 + params.samples * per))


@register
class GuidedGradCAM(GradientMethod):
    """Selvaraju et al. 2017: guided backprop x Grad-CAM (bilinearly upsampled to the input).

    The Grad-CAM part comes from the registered ``gradcam`` method on ``layer`` (the model's
    default when None), for the same class indices; class targets only.
    """

    name = "guided_gradcam"
    title = "Guided Grad-CAM"
    rule = "guided"
    uses_layer = True
    supports_units = False
    tasks = CLASSIFIER_TASKS  # its Grad-CAM half is computed for class targets

    def run(self, model, x, targets, layer, params):
        if not isinstance(targets, ClassTargets):
            raise EngineError("unsupported-target", "guided_gradcam explains class scores, not units or regions")
        return super().run(model, x, targets, layer, params)

    def finish(self, ctx, x, signed, reduce):
        rows = ctx.objective.rows
        assert rows is not None
        layer = ctx.layer
        with packed_convolutions():  # frozen CPU convolutions prepacked, as in the guided pass (.fastconv)
            cam = get_method("gradcam").attribute(ctx.model, x, ClassTargets(indices=tuple(tuple(r) for r in rows)),
                                                  layer=layer)
        n, t = signed.shape[:2]
        grid = torch.zeros(n, t, *cam.maps[0][0].shape, device=x.device, dtype=x.dtype)
        for i, maps in enumerate(cam.maps):
            for j, m in enumerate(maps):
                grid[i, j] = m.to(x.device, x.dtype)
        up = F.interpolate(grid, size=x.shape[2:], mode=INTERP[x.dim() - 2], align_corners=False)
        ctx.extras["gradcam_layer"] = layer
        return reduce_channels(signed * up[:, :, None], reduce, 1 - x.dim())

    def layer_used(self, objective, layer):
        return validate_layer(objective.model, layer, family="cam")

    def cost(self, model, n_images, n_targets, params, layer):
        return float(n_images * (1 + 2 * n_targets) + get_method("gradcam").estimate_cost(model, n_images, n_targets,
                                                                                         layer=layer))
