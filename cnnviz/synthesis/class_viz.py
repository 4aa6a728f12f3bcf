"""Class model visualization (Simonyan, Vedaldi & Zisserman 2013) and channel / neuron visualization.

Gradient ascent on an image for one class logit, or for one channel's mean (or one neuron) of any
layer, with the regularizers that make the result readable: L2 decay and total variation
(penalties), periodic blur and clipping of weak pixels (Yosinski et al. 2015), random jitter /
scale / rotation (Olah et al. 2017), and optionally a decorrelated Fourier parameterization.

The class target is the *logit*, not the softmax probability: raising a probability is cheapest
by suppressing the other classes, which does not show what the class looks like.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from cnnviz.errors import EngineError
from cnnviz.models import LoadedModel

from .cost import passes
from .loop import Callbacks, Objective, StepCounter, forward_layers, optimize
from .objectives import LOGITS, channel_mean, check_layers, class_logit, neuron
from .parameterization import ParamKind, make_parameterization
from .regularizers import PixelPostSteps, l2_penalty, penalized, tv_penalty
from .steps import OptimizerName, optimizer_step
from .transforms import UpsampleTo, robustness_transforms

log = logging.getLogger(__name__)


@dataclass
class ClassVizResult:
    image: torch.Tensor  # [3, H, W] in [0, 1], CPU
    kind: Literal["class", "channel", "neuron"]
    layer: str  # "" for the class logit (the network's output)
    target: int  # class index or channel
    label: str | None  # class label when kind == "class"
    score_start: float  # the raw target score (no penalties, no transforms) before the first step
    score_end: float  # ... and after the last step
    objective: list[float] = field(default_factory=list)  # maximized: score minus penalties, per step
    goal: str = "maximize"


def _target_objective(model: LoadedModel, target: int | None, layer: str | None, channel: int | None,
                      y: int | None, x: int | None, size: int) -> tuple[Objective, str, str, int]:
    """The objective, the hooked layer, the kind and the target index; validates everything first."""
    if layer is None or layer == LOGITS:
        if target is None:
            raise EngineError("bad-target", "give a class (target) or a layer and channel")
        if not 0 <= target < model.spec.num_classes:
            raise EngineError("unknown-class", f"class index {target} is outside 0..{model.spec.num_classes - 1}")
        return class_logit(target), LOGITS, "class", target
    check_layers(model, [layer])
    shape = model.layer(layer).output_shape
    if channel is None or shape is None or not 0 <= channel < shape[0]:
        n = shape[0] if shape else 0
        raise EngineError("unknown-channel", f"channel {channel} is outside 0..{n - 1} of {layer}")
    if y is None and x is None:
        return channel_mean(layer, channel), layer, "channel", channel
    # The neuron's grid is the layer's grid at the visualization size, found by one cheap forward.
    with torch.no_grad():
        probe = torch.full((1, 3, size, size), 0.5, device=model.device)
        a = forward_layers(model, probe, [layer])[layer]
    if a.dim() != 4:
        raise EngineError("bad-position", f"layer {layer!r} has no spatial grid")
    grid = (int(a.shape[-2]), int(a.shape[-1]))
    yy, xx = int(y if y is not None else grid[0] // 2), int(x if x is not None else grid[1] // 2)
    if not (0 <= yy < grid[0] and 0 <= xx < grid[1]):
        raise EngineError("bad-position", f"neuron ({yy},{xx}) is outside {grid[0]}x{grid[1]} of {layer}")
    return neuron(layer, channel, yy, xx, grid), layer, "neuron", channel


def class_visualization(
    model: LoadedModel,
    *,
    target: int | None = None,
    layer: str | None = None,
    channel: int | None = None,
    y: int | None = None,
    x: int | None = None,
    steps: int = 256,
    lr: float = 0.05,
    size: int | None = None,
    parameterization: ParamKind = "fourier",
    optimizer: OptimizerName = "adam",
    l2_weight: float = 0.0,
    tv_weight: float = 0.0,
    blur_every: int = 0,
    blur_sigma: float = 0.5,
    clip_norm_pct: float = 0.0,
    clip_contrib_pct: float = 0.0,
    jitter: int = 8,
    scale: Sequence[float] = (0.9, 1.1),
    rotate: float = 10.0,
    pad: int = 12,
    callbacks: Callbacks | None = None,
    seed: int = 0,
) -> ClassVizResult:
    """Synthesize an image that maximizes a class logit (``target``) or a unit of ``layer``.

    A unit is ``channel`` (its spatial mean) or, with ``y``/``x``, one neuron on the layer's grid
    at this image size (a missing coordinate means the centre). ``size`` is the square side
    (default: the model's input size). Blur and clipping act on pixels, so they need
    ``parameterization="pixels"``.

    The defaults are lucent's (Olah et al. 2017): a decorrelated-colour Fourier image, Adam at
    0.05, and the standard transforms (pad 12, jitter 8, scale 0.9-1.1, rotate +-10, jitter 4),
    which together turn adversarial colour noise into a picture of the class. A class or channel
    picture smaller than the network's input is upsampled to it before each forward pass (as
    lucent does), so its objects come out at the scale the network knows; neurons keep their grid.
    """
    size = int(size or model.spec.input_size)
    if parameterization != "pixels" and (blur_every or clip_norm_pct or clip_contrib_pct):
        raise EngineError("bad-params", "blur and clipping act on pixels; use parameterization='pixels'")
    objective, hooked, kind, index = _target_objective(model, target, layer, channel, y, x, size)
    gen = torch.Generator().manual_seed(seed)
    param = make_parameterization(parameterization, size, size, generator=gen, device=model.device)
    full = penalized(objective, param, [(l2_weight, l2_penalty(model.preprocessing.normalize)),
                                        (tv_weight, tv_penalty())])
    randomized = robustness_transforms(jitter, scale, rotate, pad)
    # A line search needs a fixed objective: not with random transforms or pixel operations.
    plain = not randomized and not (blur_every or clip_norm_pct or clip_contrib_pct)
    upsample = [UpsampleTo(model.spec.input_size)] if kind != "neuron" else []
    transforms = randomized + upsample
    full, step_rule = optimizer_step(optimizer, lr, model, param, full, [hooked], line_search=plain)
    post = PixelPostSteps(step_rule, model.preprocessing.mean, blur_every=blur_every, blur_sigma=blur_sigma,
                          clip_norm_pct=clip_norm_pct, clip_contrib_pct=clip_contrib_pct)
    if post.active:
        step_rule = post

    def score() -> float:
        """The raw objective on the picture as the network sees it (upsampled, untransformed)."""
        with torch.no_grad():
            x = param.image()
            for t in upsample:
                x = t(x, gen)
            return float(objective(forward_layers(model, x, [hooked])))

    start = score()
    res = optimize(model, param, full, [hooked], steps, step_rule, transforms=transforms, callbacks=callbacks,
                   counter=StepCounter(total=steps), stage=kind, generator=gen)
    end = score()
    log.info("%s visualization of %s %d on %s: score %.3f -> %.3f in %d steps", kind, hooked or "logits", index,
             model.name, start, end, steps)
    image = param.image().detach()[0].clamp(0, 1).cpu()
    label = model.labels[index] if kind == "class" and index < len(model.labels) else None
    return ClassVizResult(image=image, kind=kind, layer=hooked, target=index, label=label, score_start=start,
                          score_end=end, objective=res.objective)  # type: ignore[arg-type]


def estimate_cost(model: LoadedModel, *, steps: int = 256, size: int | None = None, pad: int = 12,
                  **_: object) -> float:
    """Forward+backward passes at the model's input size: one per step on the padded picture (or
    the input size it is upsampled to, whichever is larger), plus two scoring forwards."""
    s = int(size or model.spec.input_size)
    net = max(s + 2 * int(pad), model.spec.input_size)
    return passes(model, steps, net, net) + passes(model, 2, s, s, per_step=1 / 3)
