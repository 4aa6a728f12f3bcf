"""Step rules beyond the loop's own: Adam and L-BFGS by name, and the signed step of FGSM / PGD.

All have the loop's ``(params, grads) -> None`` signature and *maximize* (the loop's convention).

L-BFGS needs a closure. Here one loop step is one L-BFGS iteration (``max_iter=1``): torch's
L-BFGS first calls the closure at the current point, which is where the loop has just computed the
objective and gradient, so that call only hands them over (:class:`Recorded` keeps the value). The
curvature history lives in the optimizer's state across steps, so this is the same algorithm as
the PyTorch tutorial's ``max_iter=20`` call, with cancel and progress between iterations.

Without a line search (the tutorial's setting) each iteration costs nothing beyond the loop's
own pass, but the first quasi-Newton steps can overshoot badly. With ``evaluate`` (a function
that recomputes objective and gradient at the current parameters) the strong-Wolfe line search is
used: robust, at about one extra forward+backward per iteration. Do not combine L-BFGS with random
transforms: it assumes a fixed objective.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch

from cnnviz.models import LoadedModel

from .loop import Objective, OptimizerStep, Parameterization, forward_layers
from .regularizers import StepRule

MAX_LINE_SEARCH = 10  # trial points per iteration; torch derives max_eval from max_iter=1 as 1, i.e. none
Evaluate = Callable[[], tuple[torch.Tensor, Sequence[torch.Tensor]]]

OptimizerName = Literal["adam", "lbfgs"]


class SignGradientStep:
    """``x += alpha * sign(grad)``: the L-inf steepest ascent of FGSM (one step) and PGD."""

    def __init__(self, alpha: float) -> None:
        self.alpha = float(alpha)

    def __call__(self, params: list[torch.Tensor], grads: Sequence[torch.Tensor]) -> None:
        with torch.no_grad():
            for p, g in zip(params, grads, strict=True):
                p.add_(g.sign(), alpha=self.alpha)


class Recorded:
    """An objective that remembers its last value, so a step rule can see what the loop computed."""

    def __init__(self, objective: Objective) -> None:
        self.objective = objective
        self.last: torch.Tensor | None = None

    def __call__(self, acts: dict[str, torch.Tensor]) -> torch.Tensor:
        value = self.objective(acts)
        self.last = value.detach()
        return value


def evaluator(model: LoadedModel, param: Parameterization, objective: Objective, layers: Sequence[str]) -> Evaluate:
    """Objective and gradient at ``param``'s current value, without transforms (for line searches)."""

    def evaluate() -> tuple[torch.Tensor, Sequence[torch.Tensor]]:
        with torch.enable_grad():
            obj = objective(forward_layers(model, param.image(), layers))
            grads = torch.autograd.grad(obj, param.tensors())
        return obj.detach(), grads

    return evaluate


class LBFGSStep:
    """One L-BFGS iteration per loop step, fed with the loop's gradient (see the module docstring).

    With ``evaluate`` and ``recorded`` (the objective the loop runs, wrapped in :class:`Recorded`)
    a strong-Wolfe line search picks each step length.
    """

    def __init__(self, lr: float = 1.0, history_size: int = 50, *, evaluate: Evaluate | None = None,
                 recorded: Recorded | None = None) -> None:
        self.lr = float(lr)
        self.history_size = int(history_size)
        self.evaluate = evaluate if recorded is not None else None
        self.recorded = recorded
        self._opt: torch.optim.LBFGS | None = None

    def __call__(self, params: list[torch.Tensor], grads: Sequence[torch.Tensor]) -> None:
        if self._opt is None:
            self._opt = torch.optim.LBFGS(params, lr=self.lr, max_iter=1, max_eval=MAX_LINE_SEARCH + 1,
                                          history_size=self.history_size,
                                          line_search_fn="strong_wolfe" if self.evaluate else None,
                                          tolerance_grad=0.0, tolerance_change=0.0)
        calls = 0

        def closure() -> torch.Tensor:
            nonlocal calls
            calls += 1
            if calls == 1:  # the current point: the loop has just evaluated it
                value, gs = (self.recorded.last if self.recorded is not None else None), grads
                value = value if value is not None else torch.zeros(())
            else:  # a line-search trial point
                assert self.evaluate is not None
                value, gs = self.evaluate()
            for p, g in zip(params, gs, strict=True):
                # The model runs channels_last, so gradients may come back in that layout; torch's
                # L-BFGS flattens them with view() and needs them laid out like the parameter.
                p.grad = -g.contiguous(memory_format=torch.contiguous_format) if not g.is_contiguous() else -g
            return -value

        self._opt.step(closure)
        self._opt.zero_grad(set_to_none=True)


def make_step_rule(name: OptimizerName, lr: float, *, evaluate: Evaluate | None = None,
                   recorded: Recorded | None = None) -> StepRule:
    """The loop step rule for an optimizer name (``adam`` or ``lbfgs``) and learning rate; L-BFGS
    gets a line search when ``evaluate`` and ``recorded`` are given."""
    if name == "adam":
        return OptimizerStep(lambda ps: torch.optim.Adam(ps, lr=lr))
    if name == "lbfgs":
        return LBFGSStep(lr=lr, evaluate=evaluate, recorded=recorded)
    raise ValueError(f"unknown optimizer {name!r}")


def optimizer_step(name: OptimizerName, lr: float, model: LoadedModel, param: Parameterization, objective: Objective,
                   layers: Sequence[str], *, line_search: bool = True,
                   quiet: Objective | None = None) -> tuple[Objective, StepRule]:
    """The objective to hand the loop and the step rule, wired for an L-BFGS line search if asked.

    ``quiet`` is the same objective without side effects (e.g. history recording), used for the
    line search's extra evaluations.
    """
    if name == "lbfgs" and line_search:
        recorded = Recorded(objective)
        evaluate = evaluator(model, param, quiet or objective, layers)
        return recorded, make_step_rule(name, lr, evaluate=evaluate, recorded=recorded)
    return objective, make_step_rule(name, lr)
