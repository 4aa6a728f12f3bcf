"""Feature inversion (Mahendran & Vedaldi 2015, "Understanding Deep Image Representations by
Inverting Them"): which images does a layer consider the same as this one?

From a flat grey Fourier image (or seeded pixel noise), minimize ``||phi(x) - phi(x0)||^2 / ||phi(x0)||^2
+ lambda_TV * TV^beta(x) + lambda_L2 * ||x||^2`` over the image's parameters. The normalized feature loss
makes one TV weight work at every layer; the target features are computed once, without a graph, and
the forward pass stops at the layer, so each step costs only the network up to it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from cnnviz.models import LoadedModel

from .cost import passes, step_passes
from .loop import Callbacks, StepCounter, forward_layers, optimize
from .objectives import check_layers, feature_loss, loss_callbacks, maximize, relative_distance
from .parameterization import ParamKind, make_parameterization
from .regularizers import l2_penalty, penalized, tv_penalty
from .steps import OptimizerName, optimizer_step
from .transforms import robustness_transforms

log = logging.getLogger(__name__)


@dataclass
class InversionResult:
    image: torch.Tensor  # [3, S, S] reconstruction in [0, 1], CPU
    original: torch.Tensor  # [3, S, S] the input at the size that was inverted
    layer: str
    feature_distance_start: float  # ||phi(x) - phi(x0)||^2 / ||phi(x0)||^2 at the noise start
    feature_distance_end: float  # ... and for the result
    pixel_rmse: float  # RMSE (pixel units 0..1) of the result to the original
    noise_pixel_rmse: float  # RMSE of the starting noise to the original: the result should beat it
    objective: list[float] = field(default_factory=list)  # the full loss per step, minimized
    goal: str = "minimize"


def inversion_layer(model: LoadedModel, layer: str | None) -> str:
    """The chosen layer, or a mid-depth spatial one (invertible enough to show something)."""
    if layer is not None:
        check_layers(model, [layer])
        return layer
    spatial = [li for li in sorted(model.layers, key=lambda li: li.order) if li.spatial]
    return spatial[len(spatial) // 2].name if spatial else model.default_layer


def invert(
    model: LoadedModel,
    image: torch.Tensor,
    *,
    layer: str | None = None,
    steps: int = 200,
    lr: float = 0.05,
    size: int | None = None,
    optimizer: OptimizerName = "adam",
    parameterization: ParamKind = "fourier",
    tv_weight: float = 0.05,
    tv_beta: float = 2.0,
    l2_weight: float = 0.0,
    jitter: int = 2,
    line_search: bool = True,
    callbacks: Callbacks | None = None,
    seed: int = 0,
) -> InversionResult:
    """Reconstruct ``image`` (``[3, H, W]`` in [0, 1], fitted to ``size``) from ``layer``'s features.

    The default start is a flat grey decorrelated-colour Fourier image (as for class visualization)
    with a 2 px jitter: from pixel noise, the colour noise the layer cannot see stays in the picture
    (the features match, the picture is rainbow static); the 1/f spectrum and the jitter leave it out.
    """
    layer = inversion_layer(model, layer)
    size = int(size or model.spec.input_size)
    x0 = model.preprocessing.fit(image.detach().float().cpu(), size).unsqueeze(0).to(model.device)
    with torch.no_grad():
        target = forward_layers(model, x0, [layer])[layer].detach()
    gen = torch.Generator().manual_seed(seed)
    noise = torch.rand((1, 3, size, size), generator=gen).to(model.device)
    param = make_parameterization(parameterization, size, size, generator=gen, device=model.device,
                                  init=noise if parameterization == "pixels" else None)
    loss = feature_loss(layer, target)
    objective = penalized(maximize(loss), param, [(tv_weight, tv_penalty(tv_beta)),
                                                  (l2_weight, l2_penalty(model.preprocessing.normalize))])

    def distance() -> float:
        with torch.no_grad():
            return float(relative_distance(forward_layers(model, param.image(), [layer])[layer], target))

    start = distance()
    loop_objective, step_rule = optimizer_step(optimizer, lr, model, param, objective, [layer],
                                               line_search=line_search and not jitter)
    res = optimize(model, param, loop_objective, [layer], steps, step_rule, transforms=robustness_transforms(jitter),
                   callbacks=loss_callbacks(callbacks),
                   counter=StepCounter(total=steps), stage="inversion", generator=gen)
    end = distance()
    out = param.image().detach()
    rmse = float((out - x0).pow(2).mean().sqrt())
    noise_rmse = float((noise - x0).pow(2).mean().sqrt())  # the pixel start; a Fourier start is flat grey
    log.info("inversion of %s on %s: feature distance %.4f -> %.4f, pixel rmse %.4f (noise %.4f)", layer,
             model.name, start, end, rmse, noise_rmse)
    return InversionResult(image=out[0].clamp(0, 1).cpu(), original=x0[0].cpu(), layer=layer,
                           feature_distance_start=start, feature_distance_end=end, pixel_rmse=rmse,
                           noise_pixel_rmse=noise_rmse, objective=[-v for v in res.objective])


def estimate_cost(model: LoadedModel, *, steps: int = 200, size: int | None = None, optimizer: str = "adam",
                  line_search: bool = True, **_: object) -> float:
    """One forward+backward per step (three with an L-BFGS line search; an upper bound: the pass
    stops at the layer), plus three forwards."""
    s = int(size or model.spec.input_size)
    return passes(model, steps, s, s, per_step=step_passes(optimizer, line_search)) + passes(model, 3, s, s, 1 / 3)
