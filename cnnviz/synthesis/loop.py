"""One gradient-ascent loop that every optimization method is built on.

A method is a choice of five small parts, so the next method is a few lines, not a new loop:

- a *parameterization* (:class:`PixelImage` here; frequency-space or decorrelated-colour ones
  plug in with the same ``tensors()`` / ``image()`` / ``project_()`` surface),
- *transforms* applied to the image before each forward pass (jitter, ...), differentiable so the
  gradient flows back through them,
- an *objective* computed from hooked layer outputs (:func:`layer_objective`),
- a *step rule* (:class:`NormalizedGradientStep` for DeepDream, :class:`OptimizerStep` for any
  ``torch.optim`` optimizer),
- *callbacks* for progress, previews every N steps and cancellation.

The engine knows nothing of Redis or HTTP: a job passes plain callables. Cancellation is checked
before every step and raises :class:`Cancelled`, so a cancel takes effect within one step.
Randomness comes from a seeded :class:`torch.Generator`, so a run is reproducible on one device.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import torch
from torch import nn

from cnnviz.errors import EngineError
from cnnviz.hooks import LayerCapture, thread_hooks
from cnnviz.models import LoadedModel

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, int, str, float], None]
PreviewFn = Callable[[int, torch.Tensor], None]
CancelFn = Callable[[], bool]
Transform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
Objective = Callable[[dict[str, torch.Tensor]], torch.Tensor]


class Cancelled(Exception):
    """The cancel callback asked the loop to stop; raised between two steps."""


@dataclass
class Callbacks:
    """What a caller wants to hear about. All optional; the engine never blocks on them.

    ``progress(step, total, stage, objective)`` is called after every step with the global step
    count (across stages such as octaves); throttling writes is the caller's business.
    ``preview(step, image)`` gets a detached ``[3, H, W]`` image in [0, 1] every
    ``preview_every`` steps. ``cancel()`` returning True stops the loop with :class:`Cancelled`.
    """

    progress: ProgressFn | None = None
    preview: PreviewFn | None = None
    preview_every: int = 0
    cancel: CancelFn | None = None


@dataclass
class StepCounter:
    """Global step count shared by several :func:`optimize` calls (one per octave or stage)."""

    total: int
    done: int = 0


class Parameterization(Protocol):
    """How the optimized image is represented; the loop only needs these three things."""

    def tensors(self) -> list[torch.Tensor]: ...

    def image(self) -> torch.Tensor: ...

    def project_(self) -> None: ...


class PixelImage:
    """The plainest parameterization: the pixels themselves, ``[1, 3, H, W]`` in [0, 1]."""

    def __init__(self, init: torch.Tensor) -> None:
        if init.dim() == 3:
            init = init.unsqueeze(0)
        self.tensor = init.detach().clone().float().requires_grad_(True)

    def tensors(self) -> list[torch.Tensor]:
        return [self.tensor]

    def image(self) -> torch.Tensor:
        return self.tensor

    def project_(self) -> None:
        """Keep pixels displayable after each step."""
        with torch.no_grad():
            self.tensor.clamp_(0.0, 1.0)


class Jitter:
    """Roll the image by a random offset of up to ``px`` pixels each step (DeepDream's jitter).

    ``torch.roll`` is differentiable, so the gradient arrives un-rolled at the parameters: no
    manual shift-back is needed, and the same transform works for any parameterization.
    """

    def __init__(self, px: int) -> None:
        self.px = int(px)

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        if self.px <= 0:
            return x
        dy, dx = (int(v) for v in torch.randint(-self.px, self.px + 1, (2,), generator=gen))
        return torch.roll(x, shifts=(dy, dx), dims=(-2, -1))


def layer_objective(layer: str, reduce: Literal["l2", "mean"] = "l2", channel: int | None = None) -> Objective:
    """Maximize one layer's activation: mean of squares ("l2", DeepDream's choice) or plain mean.

    With ``channel`` only that channel counts (channel visualization, single-feature dreams).
    """

    def objective(acts: dict[str, torch.Tensor]) -> torch.Tensor:
        a = acts[layer]
        if channel is not None:
            if a.dim() < 2 or channel >= a.shape[1]:
                raise ValueError(f"layer {layer!r} has {a.shape[1] if a.dim() > 1 else 0} channels, not {channel + 1}")
            a = a[:, channel]
        return a.pow(2).mean() if reduce == "l2" else a.mean()

    return objective


class NormalizedGradientStep:
    """Ascent with the gradient divided by its mean magnitude (DeepDream, Mordvintsev et al. 2015).

    The normalization makes ``step_size`` mean "pixels moved per step" whatever the layer's scale.
    """

    def __init__(self, step_size: float) -> None:
        self.step_size = float(step_size)

    def __call__(self, params: list[torch.Tensor], grads: Sequence[torch.Tensor]) -> None:
        with torch.no_grad():
            for p, g in zip(params, grads, strict=True):
                p.add_(g * (self.step_size / (g.abs().mean() + 1e-8)))


class OptimizerStep:
    """Any ``torch.optim`` optimizer, maximizing (for later methods: Adam on a Fourier basis, ...)."""

    def __init__(self, factory: Callable[[list[torch.Tensor]], torch.optim.Optimizer]) -> None:
        self.factory = factory
        self._opt: torch.optim.Optimizer | None = None

    def __call__(self, params: list[torch.Tensor], grads: Sequence[torch.Tensor]) -> None:
        if self._opt is None:
            self._opt = self.factory(params)
        for p, g in zip(params, grads, strict=True):
            p.grad = (-g).contiguous()  # optimizers minimize; channels_last grads would break L-BFGS views
        self._opt.step()
        self._opt.zero_grad(set_to_none=True)


class _StopForward(Exception):
    """Raised by a hook once every needed layer has run: nothing after them is computed."""


def forward_layers(model: LoadedModel, x_pix: torch.Tensor, layers: Sequence[str]) -> dict[str, torch.Tensor]:
    """Outputs of ``layers`` for a pixel-space batch, stopping the forward pass after the last one.

    The frozen weights need no gradient, so the graph holds only the path from the input to these
    layers; the rest of the network is never run.
    """
    caps = {name: LayerCapture() for name in layers}
    wanted = set(layers)

    def make(name: str, cap: LayerCapture) -> Callable[[nn.Module, tuple[Any, ...], Any], Any]:
        def hook(mod: nn.Module, inp: tuple[Any, ...], out: Any) -> Any:
            cap(mod, inp, out)
            wanted.discard(name)
            if not wanted:
                raise _StopForward
            return None
        return hook

    pairs = [(model.module.get_submodule(n), make(n, c)) for n, c in caps.items()]
    try:
        with thread_hooks(pairs):
            model.module(model.preprocessing.normalize(x_pix))
    except _StopForward:
        pass
    missing = [n for n, c in caps.items() if c.output is None]
    if missing:
        raise ValueError(f"layers {missing} did not run in the forward pass")
    return {n: c.output for n, c in caps.items()}  # type: ignore[misc]


@dataclass
class LoopResult:
    objective: list[float] = field(default_factory=list)


def optimize(
    model: LoadedModel,
    param: Parameterization,
    objective: Objective,
    layers: Sequence[str],
    steps: int,
    step_rule: Callable[[list[torch.Tensor], Sequence[torch.Tensor]], None],
    *,
    transforms: Sequence[Transform] = (),
    callbacks: Callbacks | None = None,
    counter: StepCounter | None = None,
    stage: str = "",
    generator: torch.Generator | None = None,
) -> LoopResult:
    """Run ``steps`` ascent steps on ``param``; report progress and previews; honour cancel."""
    cb = callbacks or Callbacks()
    counter = counter or StepCounter(total=steps)
    gen = generator or torch.Generator().manual_seed(0)
    result = LoopResult()
    for _ in range(steps):
        if cb.cancel is not None and cb.cancel():
            raise Cancelled(f"canceled at step {counter.done} of {counter.total}")
        tensors = param.tensors()
        x = param.image()
        for t in transforms:
            x = t(x, gen)
        with torch.enable_grad():
            acts = forward_layers(model, x, layers)
            obj = objective(acts)
            grads = torch.autograd.grad(obj, tensors)
        value = float(obj.detach())
        if not math.isfinite(value) or not all(bool(torch.isfinite(g).all()) for g in grads):
            raise EngineError("non-finite", f"the optimization diverged at step {counter.done + 1} of "
                              f"{counter.total}: the objective or its gradient is not finite ({value!r})")
        step_rule(tensors, grads)
        param.project_()
        if not all(bool(torch.isfinite(t).all()) for t in param.tensors()):
            raise EngineError("non-finite", f"the optimization diverged at step {counter.done + 1} of "
                              f"{counter.total}: the image is no longer finite")
        counter.done += 1
        result.objective.append(value)
        if cb.progress is not None:
            cb.progress(counter.done, counter.total, stage, value)
        if cb.preview is not None and cb.preview_every > 0 and counter.done % cb.preview_every == 0:
            cb.preview(counter.done, param.image().detach()[0].clamp(0, 1).cpu())
    return result
