"""Running only the part of a network *after* a layer, for many variants of that layer's output.

Ablation-CAM zeroes one channel at a time and needs the class score each time. Re-running the
whole network per channel repeats the (expensive) part before the layer. Here the network is
traced once with torch.fx (the target layer kept as one node), the values the tail needs from
the head (the layer output, plus skip connections that jump over it) are computed once, and only
the tail runs on the batch of variants. Networks fx cannot trace fall back to a full forward
with the layer's output replaced, which gives the same numbers more slowly.
"""

from __future__ import annotations

import logging
import threading
import weakref
from typing import Any

import torch
from torch import fx, nn

from ...hooks import LayerCapture, capture
from .fxtrace import trace

log = logging.getLogger(__name__)


class _Tracer(fx.Tracer):
    def __init__(self, leaf: str) -> None:
        super().__init__()
        self.leaf = leaf

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if qualname == self.leaf or isinstance(m, nn.modules.conv._ConvNd):
            return True
        return super().is_leaf_module(m, qualname)


class TailRunner:
    """Evaluates ``model`` from ``layer`` onwards for a batch of replacement layer outputs."""

    def __init__(self, module: nn.Module, layer: str) -> None:
        self.module = module
        self.layer = layer
        self.gm: fx.GraphModule | None = None
        try:
            graph = trace(_Tracer(layer), module)
            gm = fx.GraphModule(module, graph)
            nodes = list(gm.graph.nodes)
            hits = [i for i, n in enumerate(nodes) if n.op == "call_module" and n.target == layer]
            if len(hits) != 1:
                raise RuntimeError(f"layer {layer} is called {len(hits)} times")
            cut = hits[0]
            self.target_node = nodes[cut]
            self.tail = nodes[cut + 1:]
            head = set(nodes[:cut + 1])
            needed = {a for n in self.tail for a in n.all_input_nodes if a in head}
            self.needed = needed
            self.head = nodes[:cut + 1]
            self.gm = gm
        except Exception as exc:  # noqa: BLE001 - any tracing failure means: use the slow path
            log.info("fx trace of %s failed (%s); ablation falls back to full forwards", type(module).__name__, exc)

    @property
    def traced(self) -> bool:
        return self.gm is not None

    def head_values(self, x: torch.Tensor) -> dict[fx.Node, Any]:
        """Run the head once on ``x``; keep only what the tail reads."""
        if self.gm is None:
            return {"x": x}
        interp = fx.Interpreter(self.gm)
        args = iter([x])
        env: dict[fx.Node, Any] = {}
        interp.env = env
        interp.args_iter = args
        for node in self.head:
            env[node] = interp.run_node(node)
        return {n: env[n] for n in self.needed}

    def run_batch(self, values: dict[Any, Any], output: torch.Tensor) -> torch.Tensor:
        """Outputs of the tail for a whole batch whose layer output is ``output`` (values from the same batch)."""
        if self.gm is None:
            raise RuntimeError("run_batch needs a traced network")
        interp = fx.Interpreter(self.gm)
        env: dict[fx.Node, Any] = {node: output if node is self.target_node else val for node, val in values.items()}
        interp.env = env
        for node in self.tail:
            if node.op == "output":
                return interp.run_node(node)
            env[node] = interp.run_node(node)
        raise RuntimeError("the tail has no output")  # pragma: no cover - fx graphs end in an output node

    def run(self, values: dict[Any, Any], image: int, variants: torch.Tensor) -> torch.Tensor:
        """Outputs of the tail for ``variants`` ``[B,...]`` of image ``image``'s layer output."""
        b = variants.shape[0]
        if self.gm is None:
            x = values["x"][image:image + 1].expand(b, *values["x"].shape[1:])
            cap = LayerCapture(replace=lambda _out: variants)
            with capture(self.module, {self.layer: cap}):
                return self.module(x)
        interp = fx.Interpreter(self.gm)
        env: dict[fx.Node, Any] = {}
        for node, val in values.items():
            if node is self.target_node:
                env[node] = variants
            elif isinstance(val, torch.Tensor) and val.dim() > 0:
                env[node] = val[image:image + 1].expand(b, *val.shape[1:])
            else:
                env[node] = val
        interp.env = env
        out = None
        for node in self.tail:
            if node.op == "output":
                out = interp.run_node(node)
                break
            env[node] = interp.run_node(node)
        return out


_cache: weakref.WeakKeyDictionary[nn.Module, dict[str, TailRunner]] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def tail_runner(module: nn.Module, layer: str) -> TailRunner:
    """A cached :class:`TailRunner` per model and layer (tracing costs tens of milliseconds)."""
    with _lock:
        per = _cache.setdefault(module, {})
        if layer not in per:
            per[layer] = TailRunner(module, layer)
        return per[layer]
