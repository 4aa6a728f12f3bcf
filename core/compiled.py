"""Compiled forwards for predict and the CAM family: a frozen copy of the model, compiled once per process
in the background.

Why: classification is one forward pass, and on the CPU the eager forward is far from the limit.
``torch.compile`` with Inductor's ``freezing`` folds batch norm into the convolutions, fuses the
elementwise tails (ReLU6, residual adds, padding) into the kernels around them and prepacks the
weights: on EfficientNet-Lite0 at 224 px the compiled forward takes about half the eager one
(bench/bench_speed.py, the ``speed-targets`` block of docs/benchmarks.md), logits within 1e-5.

The CAM family needs more than logits: the default layer's output, and the gradient of a score
with respect to it. A frozen graph cannot differentiate, so the graph is cut at that layer with
torch.fx (:class:`~cnnviz.attribution.fast.tail.TailRunner`). The compiled part returns the logits and
the values the tail reads. The tail (pooling and the classifier on the catalog's CNNs) runs
eagerly from the layer's output as a gradient leaf, so the gradient is the eager one
(:meth:`CompiledForwards.layer_forward`, offered to the engine through
:mod:`cnnviz.attribution.fast.layer_forward`). The Grad-CAM engine call is faster with
equal maps (bench/bench_speed.py; tests/model/test_bench_exactness.py). One compile serves both. A
model that fx cannot trace compiles whole,
for predict only. Every other method, layer, image size and precision runs the hooked eager module.

How, so that no request ever waits for a compiler:

- a model's compile starts on its first predict or explanation (the default model's at start-up
  when models are preloaded) in a background thread, for one image, then four, then two
  (:data:`BATCHES`); each takes a while with a cold cache on 2 cores, less with
  Inductor's cache warm (``TORCHINDUCTOR_CACHE_DIR``; keep it on a volume to keep restarts warm),
  and while it runs it shares the cores with the lanes, whose requests are slower meanwhile;
- until the one-image graph is ready, and for every input it was not compiled for, the eager
  forward runs; the compiled graphs serve images at the model's input size, float32, on the CPU,
  in chunks of the compiled sizes (four, two, one), so nothing ever recompiles on a request;
- the compiled logits (and the layer's output) must agree with the eager ones on a probe input
  (relative 1e-3) before they serve; a model that fails to compile or to agree stays eager, and
  says why;
- the state (``off``, ``compiling``, ``ready``, ``failed``) is in ``GET /v1/models/{model}`` and
  each predict answer names the forward it ran (``forward``: ``compiled`` or ``eager``).

It needs a C++ compiler (``g++``; the Docker image installs one) and is off on CUDA (where the eager
forward is already cheap) and with ``CNNVIZ_COMPILE_PREDICT=false``. The compile thread runs torch
with each lane width's thread count in turn, so the kernels it generates use that OpenMP width; it
resets the process default to one thread after each (core/lanes.py says why that matters).
Elastic lanes compute at two widths (the wide lane's, and one thread), so each width has its own
copy of the graph and its own compiled batches (one image at both widths first), six compiles in all.

A served graph is run-only (``torch._dynamo.run``): it runs what was compiled and never compiles.
Two one-thread lanes call the same graphs at once, and once in a few thousand calls Dynamo saw a
guard fail that passed when it checked again, and recompiled inside the request (seconds). Run-only,
such a miss runs the frame eagerly, with the same result.
"""

from __future__ import annotations

import copy
import logging
import shutil
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import fx

from cnnviz.attribution.fast.tail import TailRunner
from cnnviz.models import LoadedModel
from core.lanes import single_threaded_default
from core.predicting import eager_forward
from core.schemas.models import CompileState, ForwardKind

log = logging.getLogger(__name__)

AGREEMENT_RTOL = 1e-3  # compiled logits within this fraction of the eager logits' largest magnitude
# Batch sizes compiled, in this order (each serves as soon as it is checked): one image (a lone
# request), four (full groups under load; larger groups run in fours), two (groups of two and
# three). Measured on 2 cores, the Lite0 compiled forward per image fell from one to two to four
# images, so a group of three runs as two plus one rather than four padded; eight was no cheaper
# per image than four.
BATCHES = (1, 4, 2)
Compiled = Callable[[torch.Tensor], tuple[torch.Tensor, ...]]
"""One compiled batch size: a normalized batch in, ``(logits, *split.needed)`` out."""


@dataclass
class _Split:
    """The compiled graph's road to the default layer: what it returns besides the logits, and the tail."""

    layer: str
    needed: list[fx.Node]  # the head values the tail reads, in the order the graph returns them
    runner: TailRunner  # the tail, run eagerly from the layer's output (so its gradient is the eager one)


@dataclass
class _Compiled:
    state: CompileState
    reason: str = ""
    shape: tuple[int, ...] | None = None  # one image's (channels, height, width)
    # torch thread count -> batch size -> compiled graph, as each is ready (a new dict each time)
    fns: dict[int, dict[int, Compiled]] = field(default_factory=dict)
    split: _Split | None = None
    done: threading.Event = field(default_factory=threading.Event)


def compiler_missing() -> str | None:
    """Why this process cannot compile (no C++ compiler, no Inductor), or None."""
    if not hasattr(torch, "compile"):
        return "this PyTorch has no torch.compile"
    if not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
        return "no C++ compiler (g++) on PATH"
    return None


class CompiledForwards:
    """The process's compiled predict forwards, one per loaded model (see the module docstring)."""

    def __init__(self, enabled: bool, threads: int | tuple[int, ...]) -> None:
        # The lanes' widths (core/lanes.py ComputeLanes.widths), the widest first; each gets its own graphs.
        self.widths = tuple(max(1, w) for w in ((threads,) if isinstance(threads, int) else threads))
        self.threads = self.widths[0]
        missing = None if enabled else "disabled (CNNVIZ_COMPILE_PREDICT=false)"
        self.off_reason = missing or compiler_missing()
        self._lock = threading.Lock()
        self._one_compile = threading.Lock()  # Inductor's config is global: one compile at a time
        # Keyed by the module itself, weakly: an unloaded model takes its compiled copy with it.
        self._models: weakref.WeakKeyDictionary[torch.nn.Module, _Compiled] = weakref.WeakKeyDictionary()

    def _entry(self, model: LoadedModel) -> _Compiled | None:
        return self._models.get(model.module)

    def state(self, model: LoadedModel) -> tuple[CompileState, str]:
        """(state, reason): ``off`` until a compile starts, and for good where it cannot."""
        reason = self._cannot(model)
        if reason:
            return "off", reason
        e = self._entry(model)
        return (e.state, e.reason) if e else ("off", "not compiled yet: starts on the model's first predict")

    def _cannot(self, model: LoadedModel) -> str | None:
        if self.off_reason:
            return self.off_reason
        if not model.classifier:
            return f"a {model.task} model: the compiled forward serves class logits"
        if model.device.type != "cpu":
            return f"not on {model.device.type}: the eager forward serves there"
        if not isinstance(model.module, torch.nn.Module) or isinstance(model.module, torch.jit.ScriptModule):
            return "a TorchScript archive is already compiled"
        if model.runtime is not None:
            return "an ONNX graph: onnxruntime runs predict"
        return None

    def ensure(self, model: LoadedModel) -> None:
        """Start the model's compile in the background, once; returns at once."""
        if self._cannot(model):
            return
        with self._lock:
            if self._entry(model) is not None:
                return
            entry = _Compiled("compiling", "compiling in the background; predict runs eager meanwhile")
            self._models[model.module] = entry
        threading.Thread(target=self._compile, args=(model, entry), name="cnnviz-compile", daemon=True).start()

    def wait(self, model: LoadedModel, timeout: float | None = None) -> CompileState:
        """Block until the model's compile has finished (tests, benchmarks); its state."""
        e = self._entry(model)
        if e is not None:
            e.done.wait(timeout)
        return self.state(model)[0]

    def _serves(self, model: LoadedModel, x: torch.Tensor) -> tuple[_Compiled, dict[int, Compiled]] | None:
        """The entry and the graphs of the calling thread's width if ``x`` meets every guard they were
        compiled under (image shape, dtype, device, layout, and the calling thread's torch thread count,
        which Dynamo's global-state guard also checks: a call from a thread of another width compiled a
        second graph, seconds inside that request), so a request can never trigger a recompile; else None."""
        e = self._entry(model)
        if e is None or e.state == "failed":
            return None
        fns = e.fns.get(torch.get_num_threads(), {})
        if (1 in fns and x.dim() == 4 and tuple(x.shape[1:]) == e.shape and 0 < x.shape[0] <= MAX_IMAGES
                and x.dtype == torch.float32 and x.device.type == "cpu" and not x.requires_grad):
            return e, fns
        return None

    def forward(self, model: LoadedModel, x: torch.Tensor) -> tuple[torch.Tensor, ForwardKind]:
        """Logits for ``x`` and which forward ran (``compiled`` or ``eager``)."""
        served = self._serves(model, x)
        if served is None:
            return eager_forward(model, x)
        with torch.no_grad():
            return _run(served[1], x)[0], "compiled"

    def layer_forward(self, model: LoadedModel, x: torch.Tensor,
                      layer: str) -> tuple[torch.Tensor, torch.Tensor, str] | None:
        """For the CAM family (cnnviz.attribution.fast.layer_forward): the logits and the default layer's
        output as a gradient leaf, from the compiled graph and the eager tail; None where it cannot serve."""
        served = self._serves(model, x)
        if served is None:
            return None
        e, fns = served
        if e.split is None or e.split.layer != layer:
            return None
        with torch.no_grad():
            out = _run(fns, x)
        values = dict(zip(e.split.needed, out[1:], strict=True))
        leaf = values[e.split.runner.target_node].detach().requires_grad_(True)
        with torch.enable_grad():
            logits = e.split.runner.run_batch(values, leaf)
        return logits, leaf, "compiled"

    def _compile(self, model: LoadedModel, entry: _Compiled) -> None:
        try:
            with self._one_compile:
                twin, graph, split = _prepare(model)
                entry.split = split
                # Each width compiles its own copy of the graph, so Dynamo keeps its graphs apart and a
                # lane's call checks only the guards of its own width's entries.
                copies = {w: _copy_graph(graph, twin) for w in self.widths}
                plan = [(w, b) for b in BATCHES for w in self.widths]
                for i, (width, batch) in enumerate(plan):  # each serves as soon as it is built and checked
                    # This thread's kernels run at the lane's width (Inductor reads the count when it generates
                    # code); setting it also sets the process default, which goes back to one thread at once.
                    torch.set_num_threads(width)
                    torch.get_num_threads()
                    single_threaded_default()
                    fn = self._build(model, twin, copies[width], split, batch)
                    entry.shape = (3, model.preprocessing.input_size, model.preprocessing.input_size)
                    # New dicts: a reader never sees one change size.
                    entry.fns = {**entry.fns, width: {**entry.fns.get(width, {}), batch: fn}}
                    if i + 1 < len(plan):
                        entry.reason = f"{_sizes(entry.fns)} ready and serving; compiling more"
            entry.state = "ready"
            entry.reason = (f"compiled with Inductor (frozen) for {_sizes(entry.fns)}: "
                            "predict" + (f", and the CAM family at layer {split.layer}" if split else ""))
            log.info("compiled forward of %s ready (%s)", model.name, entry.reason)
        except Exception as exc:  # noqa: BLE001 - any compiler failure leaves the model eager
            entry.fns = {}
            entry.state, entry.reason = "failed", f"{type(exc).__name__}: {str(exc)[:300]}"
            log.warning("compiling the forward of %s failed; it stays eager: %s", model.name, entry.reason)
        finally:
            entry.done.set()

    @staticmethod
    def _build(model: LoadedModel, twin: torch.nn.Module, graph: torch.nn.Module, split: _Split | None,
               batch: int) -> Compiled:
        """Compile ``graph`` for ``batch`` images and check it against the eager twin on a probe."""
        size = model.preprocessing.input_size
        probe = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(batch))
        probe = model.preprocessing.normalize(probe)
        import torch._inductor.config as inductor_config

        # cpp_wrapper: the whole graph is one C++ call that releases the GIL. Inductor's default Python
        # wrapper calls each fused kernel holding it, so a forward stalled the event loop and the other
        # requests' threads (a fifth of the server's GIL time under 8 clients, measured with py-spy).
        with torch.no_grad(), inductor_config.patch(freezing=True, cpp_wrapper=True):
            fn = torch.compile(graph, dynamic=False)
            got = fn(probe)
            want = twin(probe)
            layer_want = split.runner.head_values(probe) if split else {}
        _agree(f"logits (batch {batch})", got[0], want)
        if split is not None:
            for node, value in zip(split.needed, got[1:], strict=True):
                _agree(f"{split.layer} ({node.name}, batch {batch})", value, layer_want[node])
        return torch._dynamo.run(fn)  # run-only: never a compile inside a request (module docstring)


MAX_IMAGES = 64  # the most images one compiled call takes (in chunks of the compiled batch sizes)


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _sizes(fns: dict[int, dict[int, Compiled]]) -> str:
    """Which graphs are ready, said as batch sizes, per torch width where lanes of several widths compute."""
    def batches(by_batch: dict[int, Compiled]) -> str:
        return "batches of " + _and([str(b) for b in sorted(by_batch)])

    if len(fns) == 1:
        return batches(next(iter(fns.values())))
    return _and([f"{batches(fns[w])} at {w} thread{'s' if w > 1 else ''}" for w in sorted(fns, reverse=True)])


def _copy_graph(graph: torch.nn.Module, twin: torch.nn.Module) -> torch.nn.Module:
    """A graph of its own for one width, sharing the weights: a new GraphModule class (with its own
    code object, where Dynamo keys its cache) or a new wrapper of the twin."""
    if isinstance(graph, fx.GraphModule):
        copy_ = fx.Graph()
        copy_.output(copy_.graph_copy(graph.graph, {}))
        return fx.GraphModule(graph, copy_)
    return _Outputs(twin)


def _run(fns: dict[int, Compiled], x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The compiled graph's outputs for any number of images, in chunks of the largest compiled batch
    that fits what is left (seven: four, two, one; one image is always compiled)."""
    n, parts, i = x.shape[0], [], 0
    sizes = sorted(fns, reverse=True)
    while i < n:
        b = next(s for s in sizes if s <= n - i)
        parts.append(fns[b](x[i:i + b].contiguous()))
        i += b
    return tuple(torch.cat(p) if len(p) > 1 else p[0] for p in zip(*parts, strict=True))


def _prepare(model: LoadedModel) -> tuple[torch.nn.Module, torch.nn.Module, _Split | None]:
    """A hook-free frozen copy of the module, and the graph to compile from it."""
    twin = copy.deepcopy(model.module).eval().requires_grad_(False)
    for m in twin.modules():  # a copy taken while an explanation had its capture hooks installed
        for hooks in (m._forward_hooks, m._forward_pre_hooks, m._backward_hooks, m._backward_pre_hooks):
            hooks.clear()
    graph, split = _split_at(twin, model.default_layer)
    return twin, graph, split


class _Outputs(torch.nn.Module):
    """The plain module as a graph that returns a tuple, like a split one: ``(logits,)``."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.module(x),)


def _split_at(twin: torch.nn.Module, layer: str | None) -> tuple[torch.nn.Module, _Split | None]:
    """The graph to compile: one returning the logits and the values the tail after ``layer`` reads
    (so one compile serves predict and the CAM family), or the plain module where fx cannot trace it."""
    runner = TailRunner(twin, layer) if layer else None
    if runner is None or runner.gm is None:
        return _Outputs(twin), None
    nodes = list(runner.gm.graph.nodes)
    needed = sorted(runner.needed, key=nodes.index)
    env: dict[fx.Node, fx.Node] = {}
    graph = fx.Graph()
    for node in nodes:
        if node.op == "output":
            graph.output((env[node.args[0]], *[env[n] for n in needed]))  # type: ignore[index]
        else:
            env[node] = graph.node_copy(node, lambda a: env[a])
    assert layer is not None
    return fx.GraphModule(runner.gm, graph), _Split(layer, needed, runner)


def _agree(what: str, got: torch.Tensor, want: torch.Tensor) -> None:
    scale = float(want.abs().max()) or 1.0
    err = float((got.float() - want.float()).abs().max())
    if not err <= AGREEMENT_RTOL * scale:
        raise RuntimeError(f"compiled {what} differs from eager by {err:.3g} (scale {scale:.3g})")
