"""Step rules beyond the loop's own: Adam and L-BFGS by name, and the signed step of FGSM / PGD.

All have the loop's ``(params, grads) -> None`` signature and *maximize* (the loop's convention).

L-BFGS needs a closure. Here one loop step is one L-BFGS iteration (``max_iter=1``, no line
search): torch's L-BFGS then calls the closure exactly once, at the current point, which is where
the loop has just computed the gradient, so the closure only hands that gradient over. The
curvature history lives in the optimizer's state across steps, so this is the same algorithm as
the PyTorch tutorial's ``max_iter=20`` call, with cancel and progress between iterations and no
extra forward pass. Do not combine it with random transforms: L-BFGS assumes a fixed objective.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from .loop import OptimizerStep
from .regularizers import StepRule

OptimizerName = Literal["adam", "lbfgs"]


class SignGradientStep:
    """``x += alpha * sign(grad)``: the L-inf steepest ascent of FGSM (one step) and PGD."""

    def __init__(self, alpha: float) -> None:
        self.alpha = float(alpha)

    def __call__(self, params: list[torch.Tensor], grads: Sequence[torch.Tensor]) -> None:
        with torch.no_grad():
            for p, g in zip(params, grads, strict=True):
                p.add_(g.sign(), alpha=self.alpha)


class LBFGSStep:
    """One L-BFGS iteration per loop step, fed with the loop's gradient (see the module docstring)."""

    def __init__(self, lr: float = 1.0, history_size: int = 50) -> None:
        self.lr = float(lr)
        self.history_size = int(history_size)
        self._opt: torch.optim.LBFGS | None = None

    def __call__(self, params: list[torch.Tensor], grads: Sequence[torch.Tensor]) -> None:
        if self._opt is None:
            self._opt = torch.optim.LBFGS(params, lr=self.lr, max_iter=1, history_size=self.history_size,
                                          line_search_fn=None, tolerance_grad=0.0, tolerance_change=0.0)

        def closure() -> torch.Tensor:
            for p, g in zip(params, grads, strict=True):
                p.grad = -g  # optimizers minimize
            return torch.zeros(())  # only used for tolerance checks, which max_iter=1 never reaches

        self._opt.step(closure)
        self._opt.zero_grad(set_to_none=True)


def make_step_rule(name: OptimizerName, lr: float) -> StepRule:
    """The loop step rule for an optimizer name (``adam`` or ``lbfgs``) and learning rate."""
    if name == "adam":
        return OptimizerStep(lambda ps: torch.optim.Adam(ps, lr=lr))
    if name == "lbfgs":
        return LBFGSStep(lr=lr)
    raise ValueError(f"unknown optimizer {name!r}")
