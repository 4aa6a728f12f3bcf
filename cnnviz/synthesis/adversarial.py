"""Targeted adversarial ("fooling") images: FGSM (Goodfellow et al. 2015) and PGD (Madry et al. 2018).

Both work in *pixel space* ([0, 1]) and normalize just before the network, so the budget ``eps``
means what a client expects ("at most 8/255 per pixel"), whatever the model's mean and std.

- FGSM, targeted: one step ``x - eps * sign(grad_x CE(f(x), target))``, then clipped to [0, 1].
- PGD, targeted: from a seeded random start in the eps-ball, ``steps`` signed steps of size
  ``alpha``, each followed by projection onto the eps-ball around the original *and* onto [0, 1].

Both are the loop's signed-gradient ascent on ``-CE = log p(target)`` with a bounded pixel
parameterization; FGSM is the one-step, no-random-start case with ``alpha = eps``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

from cnnviz.errors import EngineError
from cnnviz.models import LoadedModel

from .cost import passes
from .loop import Callbacks, StepCounter, optimize
from .objectives import LOGITS
from .parameterization import BoundedPixels
from .steps import SignGradientStep

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClassScore:
    index: int
    label: str
    probability: float


@dataclass
class AdversarialResult:
    image: torch.Tensor  # [3, S, S] adversarial image in [0, 1], CPU
    original: torch.Tensor  # [3, S, S] the input at the network size, what the perturbation is added to
    difference: torch.Tensor  # [3, S, S] perturbation scaled to fill [0, 1] around 0.5 (0.5 = unchanged)
    method: str
    target: int
    target_label: str
    success: bool  # the adversarial image's top-1 class is the target
    top5_before: list[ClassScore]
    top5_after: list[ClassScore]
    target_prob_before: float
    target_prob_after: float
    target_prob_after_8bit: float  # after rounding to 8-bit pixels, as a PNG would store it
    linf: float  # perturbation norms in pixel units 0..1 ...
    l2: float
    linf_255: float  # ... and in 0..255 units
    l2_255: float
    objective: list[float] = field(default_factory=list)  # log p(target) per step, maximized
    goal: str = "maximize"


def _probs(model: LoadedModel, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.module(model.preprocessing.normalize(x)).float().softmax(-1)[0].cpu()


def _top5(model: LoadedModel, p: torch.Tensor) -> list[ClassScore]:
    vals, idx = p.topk(min(5, p.numel()))
    return [ClassScore(int(i), model.labels[int(i)] if int(i) < len(model.labels) else str(int(i)), float(v))
            for v, i in zip(vals, idx, strict=True)]


def adversarial(
    model: LoadedModel,
    image: torch.Tensor,
    *,
    target: int,
    method: Literal["fgsm", "pgd"] = "pgd",
    eps: float = 8 / 255,
    alpha: float | None = None,
    steps: int = 10,
    random_start: bool = True,
    size: int | None = None,
    callbacks: Callbacks | None = None,
    seed: int = 0,
) -> AdversarialResult:
    """Push ``image`` (``[3, H, W]`` in [0, 1]) toward class ``target`` within an L-inf ``eps``.

    The image is first fitted to ``size`` x ``size`` (default: the model's input size) the way the
    service fits every image. ``alpha`` defaults to ``2.5 * eps / steps`` (Madry et al.); FGSM
    ignores ``alpha``, ``steps`` and ``random_start``.
    """
    if not 0 <= target < model.spec.num_classes:
        raise EngineError("unknown-class", f"class index {target} is outside 0..{model.spec.num_classes - 1}")
    if eps < 0:
        raise EngineError("bad-params", "eps must be >= 0")
    size = int(size or model.spec.input_size)
    x0 = model.preprocessing.fit(image.detach().float().cpu(), size).unsqueeze(0).to(model.device)
    if method == "fgsm":
        steps, step_size, random_start = 1, eps, False
    elif method == "pgd":
        step_size = alpha if alpha is not None else 2.5 * eps / max(steps, 1)
    else:
        raise EngineError("bad-params", f"unknown method {method!r}; use 'fgsm' or 'pgd'")
    gen = torch.Generator().manual_seed(seed)
    param = BoundedPixels(x0, eps, random_start=random_start, generator=gen)
    tgt = torch.tensor([target], device=model.device)

    def objective(acts: dict[str, torch.Tensor]) -> torch.Tensor:
        return -F.cross_entropy(acts[LOGITS].float(), tgt)

    before = _probs(model, x0)
    res = optimize(model, param, objective, [LOGITS], steps, SignGradientStep(step_size), callbacks=callbacks,
                   counter=StepCounter(total=steps), stage=method, generator=gen)
    adv = param.image().detach()
    after = _probs(model, adv)
    after8 = _probs(model, (adv * 255).round() / 255)
    delta = (adv - x0)[0]
    linf, l2 = float(delta.abs().max()), float(delta.norm())
    peak = delta.abs().max().clamp_min(1e-12)
    diff = (0.5 + 0.5 * delta / peak).clamp(0, 1)
    success = int(after.argmax()) == target
    label = model.labels[target] if target < len(model.labels) else str(target)
    log.info("%s toward %s on %s: p %.4f -> %.4f, linf %.4f, success %s", method, label, model.name,
             float(before[target]), float(after[target]), linf, success)
    return AdversarialResult(
        image=adv[0].cpu(), original=x0[0].cpu(), difference=diff.cpu(), method=method, target=target,
        target_label=label, success=success, top5_before=_top5(model, before), top5_after=_top5(model, after),
        target_prob_before=float(before[target]), target_prob_after=float(after[target]),
        target_prob_after_8bit=float(after8[target]), linf=linf, l2=l2, linf_255=linf * 255, l2_255=l2 * 255,
        objective=res.objective)


def estimate_cost(model: LoadedModel, *, method: str = "pgd", steps: int = 10, size: int | None = None,
                  **_: object) -> float:
    """One forward+backward per step, plus three scoring forwards (before, after, after 8-bit)."""
    s = int(size or model.spec.input_size)
    n = 1 if method == "fgsm" else steps
    return passes(model, n, s, s) + passes(model, 3, s, s, per_step=1 / 3)
