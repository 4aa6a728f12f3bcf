"""Cost hints for synthesis jobs, in forward+backward pass equivalents at the model's input size.

One unit is one forward and one backward pass of one image of ``input_size x input_size``. A
step at another size costs in proportion to its pixel count (convolutions are linear in area).
Methods that stop the forward pass early are charged the full pass: the estimate is an upper
bound, meant for queueing and limits, not for billing.
"""

from __future__ import annotations

import functools
import logging

from torch import nn

from cnnviz.hooks import thread_hooks
from cnnviz.models import LoadedModel

log = logging.getLogger(__name__)


def passes(model: LoadedModel, steps: int, height: int, width: int, per_step: float = 1.0) -> float:
    """``steps`` optimization steps on an ``height x width`` image, each ``per_step`` passes."""
    s = model.spec.input_size
    return float(steps) * per_step * (height * width) / (s * s)


def step_passes(optimizer: str, line_search: bool = True) -> float:
    """Passes per step: L-BFGS's strong-Wolfe line search adds about two evaluations per iteration."""
    return 3.0 if optimizer == "lbfgs" and line_search else 1.0


@functools.lru_cache(maxsize=32)
def _macs(module: nn.Module, input_size: int) -> float:
    import torch

    total = 0.0
    def hook(mod: nn.Module, _inp: object, out: object) -> None:
        nonlocal total
        if not isinstance(out, torch.Tensor):
            return
        if isinstance(mod, nn.Conv2d):
            total += out.numel() * (mod.in_channels // mod.groups) * mod.kernel_size[0] * mod.kernel_size[1]
        elif isinstance(mod, nn.Linear):
            total += out.numel() * mod.in_features

    pairs = [(m, hook) for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    p = next(module.parameters())
    with thread_hooks(pairs), torch.no_grad():  # the model is shared: hooks must see only this thread
        module(torch.zeros(1, 3, input_size, input_size, device=p.device, dtype=p.dtype))
    return total


def pass_macs(model: LoadedModel) -> float:
    """Multiply-adds of one forward+backward pass (~3x the forward's) at the model's input size."""
    return 3.0 * max(_macs(model.module, model.spec.input_size), 1.0)
