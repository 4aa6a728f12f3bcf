"""Forward hooks that are safe under concurrency and always removed.

The same frozen module serves many requests at once (threads in the API, one job at a time in a
worker). A plain forward hook would see every thread's forward pass, so each hook here acts only
for the thread that installed it: forward hooks always run in the thread that calls the model,
also on CUDA. Backward rules are never hooks; they are built into the graph by the forward hook
(see :mod:`cnnviz.attribution.rules`), so autograd's own threads need no filtering.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

ForwardFn = Callable[[nn.Module, tuple[Any, ...], Any], Any]


@contextmanager
def thread_value(local: threading.local, name: str, value: Any) -> Iterator[None]:
    """Set ``local.<name>`` to ``value`` for this thread inside the block; the outer value is back on any exit.

    How the engine offers something to the calls a thread makes (a progress callback, a compiled
    road to a layer) without a parameter through every method: other threads never see it, and
    nested blocks restore what was there before.
    """
    outer = getattr(local, name, None)
    setattr(local, name, value)
    try:
        yield
    finally:
        setattr(local, name, outer)


@contextmanager
def thread_hooks(pairs: list[tuple[nn.Module, ForwardFn]]) -> Iterator[None]:
    """Install forward hooks that fire only in the current thread; remove them on any exit."""
    owner = threading.get_ident()
    handles = []

    def wrap(fn: ForwardFn) -> ForwardFn:
        def hook(mod: nn.Module, inp: tuple[Any, ...], out: Any) -> Any:
            if threading.get_ident() != owner:
                return None
            return fn(mod, inp, out)
        return hook

    try:
        for module, fn in pairs:
            handles.append(module.register_forward_hook(wrap(fn)))
        yield
    finally:
        for h in handles:
            h.remove()


class LayerCapture:
    """Records a layer's output (optionally as a gradient leaf) during a forward pass.

    With ``grad=True`` the output is detached and made to require grad, so a later
    ``torch.autograd.grad(score, capture.output)`` walks only the graph *after* the layer: with
    frozen weights nothing before it is recorded, so backprop stops at the target layer.
    ``replace`` lets a caller substitute the output (ablation, masking) in the same pass.
    """

    def __init__(self, grad: bool = False, replace: Callable[[torch.Tensor], torch.Tensor] | None = None):
        self.grad = grad
        self.replace = replace
        self.output: torch.Tensor | None = None
        self.input: torch.Tensor | None = None

    def __call__(self, _mod: nn.Module, inp: tuple[Any, ...], out: Any) -> Any:
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"layer output is {type(out).__name__}, not a tensor; choose another layer")
        if inp and isinstance(inp[0], torch.Tensor):
            self.input = inp[0]
        if self.replace is not None:
            out = self.replace(out)
        if self.grad:
            out = out.detach().requires_grad_(True)
        self.output = out  # a module called several times (ResNet's shared ReLU): the last call wins
        return out if (self.grad or self.replace is not None) else None


@contextmanager
def capture(module: nn.Module, layers: dict[str, LayerCapture]) -> Iterator[dict[str, LayerCapture]]:
    """Capture several named layers of ``module`` for one forward pass in this thread."""
    pairs = [(module.get_submodule(name), cap) for name, cap in layers.items()]
    with thread_hooks(pairs):
        yield layers
