"""Regularizers that make optimized images look like images.

Two kinds, because they act at different moments:

- *penalties* are differentiable functions of the image subtracted from the objective (L2 decay,
  Simonyan et al. 2013; total variation, Mahendran & Vedaldi 2015). They work with any
  parameterization and any optimizer; :func:`penalized` folds them into an objective.
- *pixel operations* change the pixels after a step (Yosinski et al. 2015: periodic Gaussian blur,
  clipping pixels of small norm and of small contribution). They are not gradients of anything,
  so :class:`PixelPostSteps` wraps the step rule and applies them right after it; they only make
  sense when the optimized tensor *is* the pixel image.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch

from ..blur import gaussian_blur
from .loop import Objective, Parameterization

log = logging.getLogger(__name__)

Penalty = Callable[[torch.Tensor], torch.Tensor]
StepRule = Callable[[list[torch.Tensor], Sequence[torch.Tensor]], None]


def l2_penalty(normalize: Callable[[torch.Tensor], torch.Tensor]) -> Penalty:
    """Mean squared value of the *network input* (mean-subtracted, as in Simonyan et al.).

    A mean rather than a sum, so one weight means the same at every image size.
    """

    def penalty(x: torch.Tensor) -> torch.Tensor:
        return normalize(x).pow(2).mean()

    return penalty


def total_variation(x: torch.Tensor, beta: float = 2.0) -> torch.Tensor:
    """Mahendran & Vedaldi's TV^beta: mean over pixels of ((dx^2 + dy^2) ^ (beta / 2)).

    beta = 2 is smooth; beta near 1 preserves edges. A tiny epsilon keeps the gradient finite at 0.
    """
    dx = x[..., :-1, 1:] - x[..., :-1, :-1]
    dy = x[..., 1:, :-1] - x[..., :-1, :-1]
    sq = dx * dx + dy * dy
    if beta == 2.0:
        return sq.mean()
    return (sq + 1e-8).pow(beta / 2).mean()


def tv_penalty(beta: float = 2.0) -> Penalty:
    return lambda x: total_variation(x, beta)


def penalized(objective: Objective, param: Parameterization, penalties: Sequence[tuple[float, Penalty]]) -> Objective:
    """``objective(acts) - sum(weight * penalty(image))`` with the image rebuilt from ``param``.

    The loop's objective sees only layer outputs; rebuilding the (cheap) image here keeps the
    penalty on the untransformed image and needs no change to the loop.
    """
    active = [(float(w), p) for w, p in penalties if w]
    if not active:
        return objective

    def combined(acts: dict[str, torch.Tensor]) -> torch.Tensor:
        x = param.image()
        value = objective(acts)
        for w, p in active:
            value = value - w * p(x)
        return value

    return combined


class PixelPostSteps:
    """A step rule that runs ``inner`` and then Yosinski et al.'s pixel operations on ``[1,3,H,W]``.

    - ``blur_every`` / ``blur_sigma``: Gaussian blur every N steps (suppresses high frequencies
      cheaply, without a frequency-space parameterization);
    - ``clip_norm_pct``: pixels whose colour deviation from the dataset mean has a norm below this
      percentile are set to the mean (only the strongest pixels survive);
    - ``clip_contrib_pct``: the same for the pixel's *contribution* ``|sum_c (x - mean)_c * grad_c|``,
      the first-order estimate of how much the objective would lose if the pixel were set to the mean.

    ``mean`` is the model's mean colour in [0, 1] pixel units ("zero" of the network input).
    """

    def __init__(self, inner: StepRule, mean: Sequence[float], *, blur_every: int = 0, blur_sigma: float = 0.5,
                 clip_norm_pct: float = 0.0, clip_contrib_pct: float = 0.0) -> None:
        self.inner = inner
        self.mean = torch.tensor([float(m) for m in mean]).view(1, 3, 1, 1)
        self.blur_every = int(blur_every)
        self.blur_sigma = float(blur_sigma)
        self.clip_norm_pct = float(clip_norm_pct)
        self.clip_contrib_pct = float(clip_contrib_pct)
        self.steps = 0

    @property
    def active(self) -> bool:
        return bool((self.blur_every > 0 and self.blur_sigma > 0) or self.clip_norm_pct > 0
                    or self.clip_contrib_pct > 0)

    @staticmethod
    def _clip_below(x: torch.Tensor, score: torch.Tensor, pct: float, mean: torch.Tensor) -> None:
        thr = torch.quantile(score.flatten().float(), pct / 100.0)
        x.copy_(torch.where(score < thr, mean.expand_as(x), x))

    def __call__(self, params: list[torch.Tensor], grads: Sequence[torch.Tensor]) -> None:
        self.inner(params, grads)
        self.steps += 1
        x, g = params[0], grads[0]
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError("pixel operations need a [N, 3, H, W] pixel parameterization")
        mean = self.mean.to(x)
        with torch.no_grad():
            if self.blur_every > 0 and self.blur_sigma > 0 and self.steps % self.blur_every == 0:
                x.copy_(gaussian_blur(x, self.blur_sigma))
            if self.clip_norm_pct > 0:
                self._clip_below(x, (x - mean).norm(dim=1, keepdim=True), self.clip_norm_pct, mean)
            if self.clip_contrib_pct > 0:
                contrib = ((x - mean) * g).sum(dim=1, keepdim=True).abs()
                self._clip_below(x, contrib, self.clip_contrib_pct, mean)
