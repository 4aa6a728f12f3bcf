"""torch.fx tracing that a concurrent eager forward cannot break.

``fx.Tracer.trace`` patches ``nn.Module.__call__`` and ``nn.Module.__getattr__`` on the class, for the
whole process, while it runs. The service traces lazily (the background compile's split, Ablation-CAM's
tail, incremental occlusion's graph) while other threads run eager forwards of the same or other
models; those forwards then went through the tracer's wrappers and failed (a ``NameError`` or a
proxy where a tensor was expected: a 500 on a predict racing the first compile).

:func:`trace` makes those two class patches apply to the tracing thread only (any other thread
falls through to what was there before) and serializes traces, so that one trace's revert cannot
remove another's patch. The module functions fx also wraps check for proxies in their arguments
and already pass real tensors through.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any

from torch import fx, nn
from torch.fx import _symbolic_trace

_TRACE = threading.Lock()
_installed = False


def _thread_aware_patch_method(original: Callable[..., None]) -> Callable[..., None]:
    @functools.wraps(original)
    def patch_method(self: Any, cls: type, name: str, new_fn: Callable[..., Any], deduplicate: bool = True) -> None:
        before = getattr(cls, name)
        owner = threading.get_ident()

        @functools.wraps(new_fn)
        def only_in_tracing_thread(*args: Any, **kwargs: Any) -> Any:
            if threading.get_ident() == owner:
                return new_fn(*args, **kwargs)
            return before(*args, **kwargs)

        original(self, cls, name, only_in_tracing_thread, deduplicate)

    patch_method.__cnnviz_thread_aware = True  # type: ignore[attr-defined]
    return patch_method


def _install() -> None:
    global _installed
    if not _installed:
        current = _symbolic_trace._Patcher.patch_method
        if not getattr(current, "__cnnviz_thread_aware", False):
            _symbolic_trace._Patcher.patch_method = _thread_aware_patch_method(current)  # type: ignore[method-assign]
        _installed = True


def trace(tracer: fx.Tracer, module: nn.Module) -> fx.Graph:
    """``tracer.trace(module)``, safe beside eager forwards in other threads (see the module's docstring)."""
    with _TRACE:
        _install()
        return tracer.trace(module)
