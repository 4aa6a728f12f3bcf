"""A faster road to a layer for the CAM family, installed for one engine call by whoever serves it.

Every CAM variant needs the same two things from its forward pass: the logits, and the target
layer's output as a gradient leaf that the logits depend on. By default :class:`CamMethod` hooks
the eager module. A server may install a :data:`LayerForward` around an engine call
(:func:`using_layer_forward`) that answers from a compiled copy of the network instead
(core/compiled.py: the part before the layer compiled, the short tail after it run eagerly from
the leaf, so the gradient is the eager one). It returns None wherever it cannot serve (another
layer, batch size or dtype), and the hooked eager forward runs; it is never used at a reduced
precision, whose forwards run under autocast.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

from ...hooks import thread_value
from ...models import LoadedModel
from ...precision import active

LayerForward = Callable[[LoadedModel, torch.Tensor, str], "tuple[torch.Tensor, torch.Tensor, str] | None"]
"""(model, batch, layer) -> (logits, the layer's output as a gradient leaf, what ran), or None."""

_local = threading.local()


@contextmanager
def using_layer_forward(fn: LayerForward | None) -> Iterator[None]:
    """Offer ``fn`` to the CAM family for the engine calls made on this thread inside the block."""
    with thread_value(_local, "fn", fn):
        yield


def served_forward(model: LoadedModel, x: torch.Tensor, layer: str) -> tuple[torch.Tensor, torch.Tensor, str] | None:
    """The installed forward's answer for ``x`` at ``layer``, or None (none installed, reduced precision, declined)."""
    fn: LayerForward | None = getattr(_local, "fn", None)
    run = active()
    if fn is None or (run is not None and run.running != "fp32"):
        return None
    return fn(model, x, layer)
