"""Progress and cancellation of a long engine call, for whoever runs it, without the engine knowing who.

Every loop of the engine that can run long (a chunk of Score-CAM's masked inputs, of Ablation-CAM's
ablated copies, of integrated gradients' path points, of SmoothGrad's noisy copies, of occlusion
windows on either engine, of RISE masks, of deletion/insertion steps) calls :func:`checkpoint` with
the work it just finished. The unit is the cost estimates' (``Method.estimate_cost``): forward
passes of one image at the model's input size, a backward about two, so a caller can hold the
running sum against the estimate. Nobody listening costs one thread-local lookup per chunk.

A caller (the explain job of a worker) installs a callback with :func:`reporting` around the engine
calls it makes on its thread. The callback may raise (a cancelled job raises ``Cancelled``): the
exception leaves the sweep at that chunk boundary and every context on the way out cleans up.

Counting at the sweep loops rather than with a forward hook on the model is what makes this hold
for every network a method really runs: the batch-norm-folded copy of the gradient family
(:mod:`cnnviz.attribution.fast.folded`), the incremental occlusion engine's own graph, the tail after a
layer that Ablation-CAM runs. A hook on the served module sees none of those.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from .hooks import thread_value

ProgressCallback = Callable[[float], None]
"""Called with the work one chunk finished (forward passes of one image at the model's input size)."""

_state = threading.local()


@contextmanager
def reporting(callback: ProgressCallback) -> Iterator[None]:
    """Send the :func:`checkpoint` calls of this thread's engine calls inside the block to ``callback``.

    Thread-local, so concurrent requests on other threads are not counted; nesting restores the
    outer callback on exit, also after an error.
    """
    with thread_value(_state, "callback", callback):
        yield


def checkpoint(work: float) -> None:
    """Report ``work`` done since the last call; the installed callback may raise to stop the call."""
    callback = getattr(_state, "callback", None)
    if callback is not None:
        callback(work)
