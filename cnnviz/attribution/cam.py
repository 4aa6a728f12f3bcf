"""The CAM family on one base.

:class:`CamMethod` runs the forward pass once, captures the target layer's activations ``A``
``[N,K,h,w]`` as a gradient leaf (so backprop stops there), resolves the targets from the same
logits, and takes one gradient ``dY/dA`` per target. A variant only says how channels are
weighted (:meth:`CamMethod.weights`) or, where the map is not a weighted channel sum, how a map
is formed (:meth:`CamMethod.combine`). Maps stay at layer resolution; positive part only, as in
the papers.

Transformers work the same way: a layer whose output is a token sequence ``[N,P+h*w,C]`` (ViT,
DeiT; ``P`` class/register tokens) or channels-last ``[N,h,w,C]`` (Swin) is seen through its grid
``[N,C,h,w]`` (:func:`cnnviz.models.layers.to_grid`). The captured output stays the gradient
leaf; its gradient is mapped onto the grid the same way, so every variant, Score-CAM and
Eigen-CAM included, reads ordinary ``[N,C,h,w]`` activations and gradients.

At a reduced precision (:mod:`cnnviz.precision`) the forward passes run under autocast; the
captured activations and their gradients are taken back to float32 before any variant combines
them, so only the network's own arithmetic is lowered.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from ..hooks import LayerCapture, capture
from ..models import LayerInfo, LoadedModel, validate_layer
from ..models.layers import from_grid, to_grid
from ..models.preprocess_nd import INTERP
from ..params import Params, param
from ..precision import forward_precision
from .base import (
    CLASSIFIER_TASKS,
    REGION_LOGITS,
    SEGMENTER_TASKS,
    BoxTargets,
    ClassTargets,
    EngineError,
    Explanation,
    MapKind,
    Method,
    Objective,
    RegionTargets,
    Targets,
    checkpoint_rows,
    class_scores,
    default_batch,
    region_scores,
    register,
    segmentation_logits,
    target_scores,
)
from .fast.layer_forward import served_forward
from .fast.tail import tail_runner

EPS = 1e-7


def grid_dims(t: torch.Tensor) -> tuple[int, ...]:
    """The grid axes of ``[N,K,*grid]``: ``(2, 3)`` for an image's map, ``(2,)`` for a signal's, ``(2, 3, 4)`` for
    a volume's. Every variant reduces over these, so one class serves 1-D, 2-D and 3-D feature grids."""
    return tuple(range(2, t.dim()))


@dataclass
class CamContext:
    """Everything a variant may read: computed once per call, shared by all targets."""

    model: LoadedModel
    x: torch.Tensor
    layer: str
    acts: torch.Tensor  # [N,C,h,w], the layer's grid
    logits: torch.Tensor
    params: Any
    state: dict[str, Any] = field(default_factory=dict)
    info: LayerInfo | None = None
    output: torch.Tensor | None = None  # the layer's output in its own layout (tokens, channels last)

    def to_layer(self, grid: torch.Tensor, image: int) -> torch.Tensor:
        """Grid variants ``[B,C,h,w]`` of image ``image`` back in the layer's own layout."""
        if self.info is None or self.output is None:
            return grid
        return from_grid(grid, self.output[image:image + 1], self.info)


class CamMethod(Method):
    """Base: activations and gradients once; variants weight channels or combine them."""

    family: ClassVar[str] = "cam"
    uses_layer: ClassVar[bool] = True
    needs_gradients: ClassVar[bool] = True
    map_kinds: ClassVar[tuple[MapKind, ...]] = ("positive",)  # non-negative, smooth, coarse
    # A segmenter's region score (Seg-Grad-CAM) is a sum of its logits, read like a class score, and a
    # detector's box score a sum of matching detections' scores (.boxes); the variants that read the
    # classifier head itself (CAM) or score masked copies by class probability (Score-CAM,
    # Ablation-CAM) keep to classifiers.
    tasks: ClassVar[frozenset[str]] = SEGMENTER_TASKS | {"detection"}

    sweeps_layers: ClassVar[bool] = True
    sweep_shares: ClassVar[str] = "one forward pass and one backward pass per target for every layer"
    """What a layer sweep shares between its layers (the answer's ``details.sweep`` says it)."""

    def run(self, model: LoadedModel, x: torch.Tensor, targets: Targets, layer: str | None,
            params: Params) -> Explanation:
        if not isinstance(targets, ClassTargets | RegionTargets | BoxTargets):
            raise EngineError("unsupported-target", f"{self.name} explains class scores, not units")
        layer = validate_layer(model, layer, family="cam")
        # The compiled road assumes one row of class logits: a segmenter's or detector's output goes plain.
        served = served_forward(model, x, layer) if model.classifier else None
        if served is not None:  # a compiled road to the layer (layer_forward.py), same numbers
            logits, leaf, ran = served
            leaves = {layer: leaf}
        else:
            logits, leaves = self._capture(model, x, [layer])
            ran = "eager"
        return self._explain(model, x, targets, logits, leaves, params, ran)

    def run_layers(self, model: LoadedModel, x: torch.Tensor, targets: Targets, layers: list[str],
                   params: Params) -> Explanation:
        """Every layer of ``layers`` from one forward pass and, per target, one backward pass.

        The earliest layer's output is the gradient leaf, so backprop stops there; the later
        layers' outputs stay in the graph, and one ``autograd.grad`` per target returns the
        gradient at all of them. Each layer's map is then the one its lone request gives (the same
        activations, the same gradient). Gradient-free variants are exact the same way: Eigen-CAM
        and CAM read the one forward's activations; Score-CAM and Ablation-CAM run their own sweep
        of masked inputs or ablated channels per layer (their cost adds up layer by layer).
        """
        if not isinstance(targets, ClassTargets):
            raise EngineError("unsupported-target", f"{self.name} explains class scores, not units")
        names = list(dict.fromkeys(validate_layer(model, n, family="cam") for n in layers))
        logits, leaves = self._capture(model, x, names)
        return self._explain(model, x, targets, logits, leaves, params, "eager", sweep=True)

    def _capture(self, model: LoadedModel, x: torch.Tensor,
                 names: list[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Logits and each named layer's output from one hooked eager forward pass.

        The first layer to run becomes the gradient leaf (:class:`LayerCapture` with ``grad``); the
        others are recorded as they are and passed on as a copy, so an in-place operation after
        them cannot change the recorded values or their place in the graph.
        """
        first = min(names, key=lambda n: model.layer(n).order)
        caps: dict[str, LayerCapture] = {n: LayerCapture(grad=self.needs_gradients) if n == first
                                         else _GraphCapture() for n in names}
        with capture(model.module, caps), torch.set_grad_enabled(self.needs_gradients), forward_precision():
            logits = model.module(x)
        leaves = {}
        for n in names:
            out = caps[n].output
            if out is None or out.shape[0] != x.shape[0]:
                raise EngineError("layer-unusable", f"layer {n!r} did not produce one output per image in the"
                                  " forward pass (a fixed-batch archive takes one image at a time)",
                                  model=model.name)
            leaves[n] = out
        return logits, leaves

    def _explain(self, model: LoadedModel, x: torch.Tensor, targets: Targets, logits: torch.Tensor,
                 leaves: dict[str, torch.Tensor], params: Params, ran: str, sweep: bool = False) -> Explanation:
        """Maps of every captured layer from the logits and the layers' outputs (the family's common part)."""
        checkpoint_rows(model, x.shape[0], x)
        objective = Objective(model, targets) if isinstance(targets, BoxTargets) else None
        scorer = None
        extras: dict[str, Any] = {"forward": ran}
        if isinstance(targets, RegionTargets):  # Seg-Grad-CAM: each class's logit summed over its region
            scorer = targets.scorer(logits)
            extras[REGION_LOGITS] = segmentation_logits(logits).detach().float().cpu()
            logits, rows = scorer(logits), scorer.rows
        elif objective is not None:  # a detector's output, scored against each box: [N, boxes]
            logits = objective.head(logits, x.shape[0])
            rows = objective.resolve(logits)
        else:
            rows = targets.resolve(logits)
        n_t = max(len(r) for r in rows)
        names = list(leaves)
        infos = {n: model.layer(n) for n in names}
        # float32 from here on: at bf16/fp16 the layer output and logits come out of autocast reduced.
        ctxs = {n: CamContext(model, x, n, to_grid(leaves[n].detach(), infos[n]).float(), logits.detach(), params,
                              info=infos[n], output=leaves[n].detach().float()) for n in names}
        warnings = []
        for n in names:
            if self.needs_gradients and infos[n].feeds_head is False:
                warnings.append(f"layer {n!r} does not reach the logits (its gradient is zero); choose an earlier"
                                f" layer such as {model.default_layer!r}")
            with torch.no_grad():
                self.prepare(ctxs[n])
        per_layer: dict[str, list[torch.Tensor]] = {n: [] for n in names}
        for t in range(n_t):
            grads: dict[str, torch.Tensor | None] = dict.fromkeys(names)
            if self.needs_gradients:
                got = torch.autograd.grad(target_scores(logits, rows, t), [leaves[n] for n in names],
                                          retain_graph=t < n_t - 1, allow_unused=True)
                grads = {n: to_grid(g if g is not None else torch.zeros_like(leaves[n]), infos[n]).float()
                         for n, g in zip(names, got, strict=True)}
            idx = torch.tensor([r[t] if len(r) > t else r[0] for r in rows], device=x.device)
            with torch.no_grad():
                for n in names:
                    per_layer[n].append(self.combine(ctxs[n], ctxs[n].acts, grads[n], idx))
        if scorer is not None:
            scores, probs = region_scores(logits, rows)
        elif objective is not None:
            scores, probs = objective.scores(logits)
        else:
            scores, probs = class_scores(logits, rows, model.head)
        maps = {n: [[per_layer[n][t][i].float().cpu() for t in range(len(r))] for i, r in enumerate(rows)]
                for n in names}
        last = names[-1]
        if sweep:
            extras["sweep"] = f"{len(names)} layers: {self.sweep_shares}"
        return Explanation(self.name, maps[last], rows, scores, probs, layer=last, warnings=warnings,
                           extras=extras, sweep=maps if sweep else None)

    def prepare(self, ctx: CamContext) -> None:
        """Work shared by all targets (a sweep of masked or ablated inputs); nothing by default."""

    def combine(self, ctx: CamContext, acts: torch.Tensor, grads: torch.Tensor | None,
                idx: torch.Tensor) -> torch.Tensor:
        """One map per image ``[N,h,w]``: by default ReLU of the channel sum weighted by :meth:`weights`."""
        w = self.weights(ctx, acts, grads, idx)
        if acts.dim() != 4:  # a 1-D or 3-D grid; the image path below keeps its own contraction
            return F.relu(torch.einsum("nk,nk...->n...", w.to(acts.dtype), acts))
        return F.relu(torch.einsum("nk,nkhw->nhw", w.to(acts.dtype), acts))

    def weights(self, ctx: CamContext, acts: torch.Tensor, grads: torch.Tensor | None,
                idx: torch.Tensor) -> torch.Tensor:
        """Channel weights ``[N,K]`` for targets ``idx`` ``[N]``."""
        raise NotImplementedError

    def cost(self, model: LoadedModel, n_images: int, n_targets: int, params: Any, layer: str | None) -> float:
        # One forward plus, per target, a backward through the head only (cheap): count it as 0.5.
        return n_images * (1 + 0.5 * n_targets * self.needs_gradients)

    def sweep_cost(self, model: LoadedModel, n_images: int, n_targets: int, params: Params | None,
                   layers: list[str]) -> float:
        """A sweep's estimate: one forward; per target one backward down to the earliest layer (a
        backward ~ 2 forwards over the share of the network after it, at least the lone layer's 0.5);
        plus each layer's own extra work (Score-CAM's masked inputs, Ablation-CAM's ablations)."""
        typed = self.Params.build(params)
        ordered = sorted(model.layers, key=lambda li: li.order)
        first = min(model.layer(n).order for n in layers)
        share = sum(li.order >= first for li in ordered) / max(1, len(ordered))
        grad_t = n_images * n_targets * self.needs_gradients
        # What a lone layer costs beyond its forward and its backward through the head: the layer's own work.
        own = sum(self.cost(model, n_images, n_targets, typed, n) - n_images - 0.5 * grad_t for n in layers)
        return float(n_images + grad_t * max(0.5, 2.0 * share) + own)


class _GraphCapture(LayerCapture):
    """Records a layer's output inside the graph (not a leaf) and passes a copy on (see ``_capture``)."""

    def __call__(self, _mod: torch.nn.Module, inp: tuple[Any, ...], out: Any) -> Any:
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"layer output is {type(out).__name__}, not a tensor; choose another layer")
        self.output = out
        return out.clone()


def _channels(model: LoadedModel, layer: str | None) -> int:
    name = layer or model.default_layer
    if name is None or not model.has_layer(name):
        return 1
    return int(model.layer(name).channels or 1)


@register
class GradCAM(CamMethod):
    """Selvaraju et al. 2017: channel weight = spatial mean of the gradient."""

    name = "gradcam"
    title = "Grad-CAM"

    def weights(self, ctx, acts, grads, idx):
        return grads.mean(dim=grid_dims(grads))


@register
class GradCAMPlusPlus(CamMethod):
    """Chattopadhay et al. 2018: pixel-wise alphas from 2nd/3rd-order terms (exponential score)."""

    name = "gradcampp"
    title = "Grad-CAM++"

    def weights(self, ctx, acts, grads, idx):
        g2, g3 = grads.pow(2), grads.pow(3)
        dims = grid_dims(acts)
        sum_a = acts.sum(dim=dims, keepdim=True)
        alpha = g2 / (2 * g2 + sum_a * g3 + EPS)
        alpha = torch.where(grads != 0, alpha, torch.zeros_like(alpha))
        return (alpha * F.relu(grads)).sum(dim=dims)


@register
class XGradCAM(CamMethod):
    """Fu et al. 2020: gradients weighted by normalized activations (axiom-based)."""

    name = "xgradcam"
    title = "XGrad-CAM"

    def weights(self, ctx, acts, grads, idx):
        dims = grid_dims(acts)
        return (grads * acts).sum(dim=dims) / (acts.sum(dim=dims) + EPS)


@register
class HiResCAM(CamMethod):
    """Draelos & Carin 2020: element-wise gradient x activation, summed over channels."""

    name = "hirescam"
    title = "HiResCAM"

    def combine(self, ctx, acts, grads, idx):
        return F.relu((grads * acts).sum(dim=1))


@register
class LayerCAM(CamMethod):
    """Jiang et al. 2021: positive gradients as per-location weights."""

    name = "layercam"
    title = "LayerCAM"

    def combine(self, ctx, acts, grads, idx):
        return F.relu((F.relu(grads) * acts).sum(dim=1))


@register
class EigenCAM(CamMethod):
    """Muhammad & Yeasin 2020: projection on the first principal component; class-agnostic, no backward."""

    name = "eigencam"
    title = "Eigen-CAM"
    needs_gradients = False
    sweep_shares = "one forward pass for every layer (no backward)"

    def combine(self, ctx, acts, grads, idx):
        n, k = acts.shape[:2]
        flat = acts.flatten(2).transpose(1, 2).double()  # [N, hw, K] (hw: every grid position)
        flat = flat - flat.mean(dim=1, keepdim=True)
        # The projection on the first right singular vector v is sigma * u, with u the top
        # eigenvector of the small [hw, hw] Gram matrix: no SVD of the [hw, K] matrix needed.
        evals, evecs = torch.linalg.eigh(flat @ flat.transpose(1, 2))
        proj = (evecs[:, :, -1] * evals[:, -1:].clamp_min(0).sqrt()).float()
        # The singular vector's sign is arbitrary: orient it with the total activation.
        sign = torch.sign((proj * acts.sum(1).reshape(n, -1)).sum(1, keepdim=True))
        sign[sign == 0] = 1
        return F.relu(proj * sign).reshape(n, *acts.shape[2:])


def _gap_linear_head(model: LoadedModel, acts: torch.Tensor, logits: torch.Tensor) -> torch.nn.Linear:
    """The final Linear layer, if and only if logits == Linear(GAP(acts)) numerically.

    Logits from a bf16/fp16 forward carry that precision's rounding (bf16: 8 bits of mantissa), so
    they are compared with a tolerance to match; a head that is not GAP + linear misses by far more.
    """
    linears = [li.name for li in model.layers if li.kind == "Linear" and li.output_shape is not None]
    if linears:
        fc = model.submodule(linears[-1])
        if fc.in_features == acts.shape[1]:
            pred = fc(acts.mean(dim=grid_dims(acts)))
            tol = 1e-3 if logits.dtype == torch.float32 else 3e-2
            if pred.shape == logits.shape and torch.allclose(pred, logits.float(), rtol=tol, atol=tol):
                return fc
    raise EngineError("cam-undefined", "CAM needs the layer to feed global average pooling and a single"
                           " linear classifier directly; use gradcam for this layer or model")


@register
class CAM(CamMethod):
    """Zhou et al. 2016: classifier weights on a GAP head; no backward pass at all."""

    name = "cam"
    title = "CAM"
    needs_gradients = False
    sweep_shares = "one forward pass for every layer (no backward; a layer must feed the GAP + linear head)"
    tasks = CLASSIFIER_TASKS  # it reads class logits (of masked inputs, or the classifier head)

    def weights(self, ctx, acts, grads, idx):
        fc = _gap_linear_head(ctx.model, acts, ctx.logits)
        return fc.weight[idx]

    def cost(self, model, n_images, n_targets, params, layer):
        return float(n_images)


def _upsampled_masks(acts: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Each channel upsampled to the input size and min-max normalized to [0,1]: ``[N,K,H,W]``
    (``[N,K,L]`` or ``[N,K,D,H,W]`` on a 1-D or 3-D grid: linear or trilinear, as images bilinear)."""
    up = F.interpolate(acts, size=size, mode=INTERP[len(size)], align_corners=False)
    flat = up.flatten(2)
    lo, hi = flat.min(-1, keepdim=True).values, flat.max(-1, keepdim=True).values
    return ((flat - lo) / (hi - lo).clamp_min(EPS)).view_as(up)


# The tail after a late layer is a small fraction of the network: Ablation-CAM counts a tenth per channel.
ABLATION_SHARE = 0.1


@dataclass(frozen=True)
class SweepParams(Params):
    """Methods that score many masked or ablated copies, a batch at a time."""

    batch_size: int | None = param(None, ge=1, le=512, description="masked, ablated or perturbed inputs per "
                                   "forward batch; default 4 on CPU, 64 on CUDA")


@dataclass(frozen=True)
class AblationParams(Params):
    batch_size: int = param(128, ge=1, le=512, description="ablated copies per batch; only the network after "
                            "the layer runs for them, so batches are cheap")


@register
class ScoreCAM(CamMethod):
    """Wang et al. 2020: channel weight = target probability of the input masked by that channel.

    One sweep over the masked inputs serves every target of an image; channels whose activation
    is constant give an all-zero mask and are scored once, not once each.
    """

    name = "scorecam"
    title = "Score-CAM"
    needs_gradients = False
    sweep_shares = ("one forward pass; each layer's masked inputs are scored on their own (exact, so the cost adds "
                    "up per layer)")
    tasks = CLASSIFIER_TASKS  # it reads class logits (of masked inputs, or the classifier head)
    Params = SweepParams

    def prepare(self, ctx: CamContext) -> None:
        batch = ctx.params.batch_size or default_batch(ctx.x)
        model, x = ctx.model, ctx.x
        sweeps = []
        for i in range(x.shape[0]):
            masks = _upsampled_masks(ctx.acts[i:i + 1], tuple(x.shape[2:]))[0]  # [K,H,W]
            live = masks.flatten(1).amax(1) > 0
            probs = torch.empty(masks.shape[0], model.spec.num_classes, device=x.device)
            live_idx = live.nonzero()[:, 0]
            for s in range(0, live_idx.numel(), batch):
                sel = live_idx[s:s + batch]
                with forward_precision():
                    logits = model.module(x[i:i + 1] * masks[sel, None])
                probs[sel] = model.probabilities(logits)
                checkpoint_rows(model, sel.numel(), x)
            if (~live).any():
                with forward_precision():
                    logits = model.module(torch.zeros_like(x[i:i + 1]))
                probs[~live] = model.probabilities(logits)
                checkpoint_rows(model, 1, x)
            sweeps.append(probs)
        ctx.state["probs"] = torch.stack(sweeps)  # [N,K,C]

    def weights(self, ctx, acts, grads, idx):
        probs = ctx.state["probs"]
        return probs[torch.arange(len(idx)), :, idx]

    def cost(self, model, n_images, n_targets, params, layer):
        return float(n_images * (1 + _channels(model, layer)))


@register
class AblationCAM(CamMethod):
    """Desai & Ramaswamy 2020: channel weight = relative score drop when that channel is zeroed.

    Only the part of the network after the target layer runs for the ablated copies, and one
    sweep over the channels gives every target's scores.
    """

    name = "ablationcam"
    title = "Ablation-CAM"
    needs_gradients = False
    sweep_shares = ("one forward pass; each layer's channels are ablated on their own (exact, so the cost adds up "
                    "per layer)")
    tasks = CLASSIFIER_TASKS  # it reads class logits (of masked inputs, or the classifier head)
    Params = AblationParams

    def prepare(self, ctx: CamContext) -> None:
        batch = ctx.params.batch_size
        acts = ctx.acts
        runner = tail_runner(ctx.model.module, ctx.layer)
        with forward_precision():
            values = runner.head_values(ctx.x)
        n, k = acts.shape[:2]
        keep = 1 - torch.eye(k, device=acts.device, dtype=acts.dtype)
        sweeps = []
        for i in range(n):
            rows = []
            for s in range(0, k, batch):
                e = min(k, s + batch)
                keep_rows = keep[s:e].reshape(e - s, k, *(1,) * (acts.dim() - 2))
                variants = acts[i:i + 1].expand(e - s, *acts.shape[1:]) * keep_rows
                with forward_precision():
                    rows.append(runner.run(values, i, ctx.to_layer(variants, i)).float())
                checkpoint_rows(ctx.model, e - s, ctx.x, ABLATION_SHARE)
            sweeps.append(torch.cat(rows))
        ctx.state["ablated"] = torch.stack(sweeps)  # [N,K,C]

    def weights(self, ctx, acts, grads, idx):
        ar = torch.arange(len(idx), device=idx.device)
        base = ctx.logits[ar, idx].float()[:, None]
        ablated = ctx.state["ablated"][ar, :, idx]
        return (base - ablated) / (base.abs() + EPS)

    def cost(self, model, n_images, n_targets, params, layer):
        return float(n_images * (1 + ABLATION_SHARE * _channels(model, layer)))
