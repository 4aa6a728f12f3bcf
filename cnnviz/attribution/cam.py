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

    def run(self, model: LoadedModel, x: torch.Tensor, targets: Targets, layer: str | None,
            params: Params) -> Explanation:
        boxes = isinstance(targets, BoxTargets)
        if not isinstance(targets, ClassTargets | RegionTargets | BoxTargets):
            raise EngineError("unsupported-target", f"{self.name} explains class scores, not units")
        objective = Objective(model, targets) if boxes else None
        layer = validate_layer(model, layer, family="cam")
        info = model.layer(layer)
        # The compiled road assumes one row of class logits: a segmenter's or detector's output goes plain.
        served = served_forward(model, x, layer) if model.classifier else None
        if served is not None:  # a compiled road to the layer (layer_forward.py), same numbers
            logits, leaf, ran = served
        else:
            cap = LayerCapture(grad=self.needs_gradients)
            with capture(model.module, {layer: cap}), torch.set_grad_enabled(self.needs_gradients), \
                    forward_precision():
                logits = model.module(x)
            leaf, ran = cap.output, "eager"
        if leaf is None or leaf.shape[0] != x.shape[0]:
            raise EngineError("layer-unusable", f"layer {layer!r} did not produce one output per image in the"
                              " forward pass (a fixed-batch archive takes one image at a time)", model=model.name)
        checkpoint_rows(model, x.shape[0], x)
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
        # float32 from here on: at bf16/fp16 the layer output and logits come out of autocast reduced.
        ctx = CamContext(model, x, layer, to_grid(leaf.detach(), info).float(), logits.detach(), params, info=info,
                         output=leaf.detach().float())
        warnings = []
        if self.needs_gradients and info.feeds_head is False:
            warnings.append(f"layer {layer!r} does not reach the logits (its gradient is zero); choose an earlier"
                            f" layer such as {model.default_layer!r}")
        with torch.no_grad():
            self.prepare(ctx)
        per_t: list[torch.Tensor] = []
        for t in range(n_t):
            grads = None
            if self.needs_gradients:
                (g,) = torch.autograd.grad(target_scores(logits, rows, t), leaf, retain_graph=t < n_t - 1)
                grads = to_grid(g, info).float()
            idx = torch.tensor([r[t] if len(r) > t else r[0] for r in rows], device=x.device)
            with torch.no_grad():
                per_t.append(self.combine(ctx, ctx.acts, grads, idx))
        if scorer is not None:
            scores, probs = region_scores(logits, rows)
        elif objective is not None:
            scores, probs = objective.scores(logits)
        else:
            scores, probs = class_scores(logits, rows, model.head)
        maps = [[per_t[t][i].float().cpu() for t in range(len(r))] for i, r in enumerate(rows)]
        return Explanation(self.name, maps, rows, scores, probs, layer=layer, warnings=warnings, extras=extras)

    def prepare(self, ctx: CamContext) -> None:
        """Work shared by all targets (a sweep of masked or ablated inputs); nothing by default."""

    def combine(self, ctx: CamContext, acts: torch.Tensor, grads: torch.Tensor | None,
                idx: torch.Tensor) -> torch.Tensor:
        """One map per image ``[N,h,w]``: by default ReLU of the channel sum weighted by :meth:`weights`."""
        w = self.weights(ctx, acts, grads, idx)
        return F.relu(torch.einsum("nk,nkhw->nhw", w.to(acts.dtype), acts))

    def weights(self, ctx: CamContext, acts: torch.Tensor, grads: torch.Tensor | None,
                idx: torch.Tensor) -> torch.Tensor:
        """Channel weights ``[N,K]`` for targets ``idx`` ``[N]``."""
        raise NotImplementedError

    def cost(self, model: LoadedModel, n_images: int, n_targets: int, params: Any, layer: str | None) -> float:
        # One forward plus, per target, a backward through the head only (cheap): count it as 0.5.
        return n_images * (1 + 0.5 * n_targets * self.needs_gradients)


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
        return grads.mean(dim=(2, 3))


@register
class GradCAMPlusPlus(CamMethod):
    """Chattopadhay et al. 2018: pixel-wise alphas from 2nd/3rd-order terms (exponential score)."""

    name = "gradcampp"
    title = "Grad-CAM++"

    def weights(self, ctx, acts, grads, idx):
        g2, g3 = grads.pow(2), grads.pow(3)
        sum_a = acts.sum(dim=(2, 3), keepdim=True)
        alpha = g2 / (2 * g2 + sum_a * g3 + EPS)
        alpha = torch.where(grads != 0, alpha, torch.zeros_like(alpha))
        return (alpha * F.relu(grads)).sum(dim=(2, 3))


@register
class XGradCAM(CamMethod):
    """Fu et al. 2020: gradients weighted by normalized activations (axiom-based)."""

    name = "xgradcam"
    title = "XGrad-CAM"

    def weights(self, ctx, acts, grads, idx):
        return (grads * acts).sum(dim=(2, 3)) / (acts.sum(dim=(2, 3)) + EPS)


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

    def combine(self, ctx, acts, grads, idx):
        n, k, h, w = acts.shape
        flat = acts.reshape(n, k, h * w).transpose(1, 2).double()  # [N, hw, K]
        flat = flat - flat.mean(dim=1, keepdim=True)
        # The projection on the first right singular vector v is sigma * u, with u the top
        # eigenvector of the small [hw, hw] Gram matrix: no SVD of the [hw, K] matrix needed.
        evals, evecs = torch.linalg.eigh(flat @ flat.transpose(1, 2))
        proj = (evecs[:, :, -1] * evals[:, -1:].clamp_min(0).sqrt()).float()
        # The singular vector's sign is arbitrary: orient it with the total activation.
        sign = torch.sign((proj * acts.sum(1).reshape(n, -1)).sum(1, keepdim=True))
        sign[sign == 0] = 1
        return F.relu(proj * sign).reshape(n, h, w)


def _gap_linear_head(model: LoadedModel, acts: torch.Tensor, logits: torch.Tensor) -> torch.nn.Linear:
    """The final Linear layer, if and only if logits == Linear(GAP(acts)) numerically.

    Logits from a bf16/fp16 forward carry that precision's rounding (bf16: 8 bits of mantissa), so
    they are compared with a tolerance to match; a head that is not GAP + linear misses by far more.
    """
    linears = [li.name for li in model.layers if li.kind == "Linear" and li.output_shape is not None]
    if linears:
        fc = model.submodule(linears[-1])
        if fc.in_features == acts.shape[1]:
            pred = fc(acts.mean(dim=(2, 3)))
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
    tasks = CLASSIFIER_TASKS  # it reads class logits (of masked inputs, or the classifier head)

    def weights(self, ctx, acts, grads, idx):
        fc = _gap_linear_head(ctx.model, acts, ctx.logits)
        return fc.weight[idx]

    def cost(self, model, n_images, n_targets, params, layer):
        return float(n_images)


def _upsampled_masks(acts: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Each channel upsampled to the input size and min-max normalized to [0,1]: ``[N,K,H,W]``."""
    up = F.interpolate(acts, size=size, mode="bilinear", align_corners=False)
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
    tasks = CLASSIFIER_TASKS  # it reads class logits (of masked inputs, or the classifier head)
    Params = SweepParams

    def prepare(self, ctx: CamContext) -> None:
        batch = ctx.params.batch_size or default_batch(ctx.x)
        model, x = ctx.model, ctx.x
        sweeps = []
        for i in range(x.shape[0]):
            masks = _upsampled_masks(ctx.acts[i:i + 1], tuple(x.shape[-2:]))[0]  # [K,H,W]
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
                variants = acts[i:i + 1].expand(e - s, *acts.shape[1:]) * keep[s:e, :, None, None]
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
