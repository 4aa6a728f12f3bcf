"""Compiled forwards for predict: a frozen copy of the model, compiled once per process in the background.

Why: classification is one forward pass, and on the CPU the eager forward is far from the limit.
``torch.compile`` with Inductor's ``freezing`` folds batch norm into the convolutions, fuses the
elementwise tails (ReLU6, residual adds, padding) into the kernels around them and prepacks the
weights; measured on this 2-core machine, EfficientNet-Lite0 at 224 px, 2 threads: 14 ms eager,
7.4 ms compiled, logits within 1e-5. Explanations keep the eager module: they hook layers and
differentiate, which a frozen graph cannot.

How, so that no request ever waits for a compiler:

- a model's compile starts on its first predict (the default model's at start-up when models are
  preloaded) in a background thread; it took about 26 s cold on these 2 cores and 8-12 s with
  Inductor's cache warm (``TORCHINDUCTOR_CACHE_DIR``; keep it on a volume to keep restarts warm),
  and while it runs it shares the cores with the lanes, whose requests are slower meanwhile;
- until it is ready, and for every input it was not compiled for, predict runs the eager forward;
  the compiled one serves exactly one image at the model's input size, float32, on the CPU, so
  nothing ever recompiles on a request;
- the compiled logits must agree with the eager ones on a probe input (relative 1e-3) before
  they serve; a model that fails to compile or to agree stays eager, and says why;
- the state (``off``, ``compiling``, ``ready``, ``failed``) is in ``GET /v1/models/{model}`` and
  each predict answer names the forward it ran (``forward``: ``compiled`` or ``eager``).

It needs a C++ compiler (``g++``; the Docker image installs one) and is off on CUDA (where the eager
forward is already cheap) and with ``CNNVIZ_COMPILE_PREDICT=false``. The compile thread runs torch
with the lanes' thread count, so the kernels it generates use the lanes' OpenMP width; it resets
the process default to one thread afterwards (core/compute.py says why that matters).
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

from cnnviz.models import LoadedModel
from core.compute import single_threaded_default
from core.predicting import eager_forward
from core.schemas.models import CompileState, ForwardKind

log = logging.getLogger(__name__)

AGREEMENT_RTOL = 1e-3  # compiled logits within this fraction of the eager logits' largest magnitude


@dataclass
class _Compiled:
    state: CompileState
    reason: str = ""
    shape: tuple[int, ...] | None = None
    fn: Callable[[torch.Tensor], torch.Tensor] | None = None
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

    def __init__(self, enabled: bool, threads: int) -> None:
        self.threads = max(1, threads)
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
        if model.device.type != "cpu":
            return f"not on {model.device.type}: the eager forward serves there"
        if not isinstance(model.module, torch.nn.Module) or isinstance(model.module, torch.jit.ScriptModule):
            return "a TorchScript archive is already compiled"
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

    def forward(self, model: LoadedModel, x: torch.Tensor) -> tuple[torch.Tensor, ForwardKind]:
        """Logits for ``x`` and which forward ran (``compiled`` or ``eager``).

        The compiled one only where every guard it was compiled under holds (shape, dtype, device,
        layout, grad mode), so a request can never trigger a recompile.
        """
        e = self._entry(model)
        if (e is not None and e.state == "ready" and e.fn is not None and tuple(x.shape) == e.shape
                and x.dtype == torch.float32 and x.device.type == "cpu" and x.is_contiguous()
                and not x.requires_grad):
            with torch.no_grad():
                return e.fn(x), "compiled"
        return eager_forward(model, x)

    def _compile(self, model: LoadedModel, entry: _Compiled) -> None:
        # This thread's kernels run at the lanes' width (Inductor reads the count when it generates
        # code); setting it also sets the process default, which goes back to one thread at once.
        torch.set_num_threads(self.threads)
        torch.get_num_threads()
        single_threaded_default()
        try:
            with self._one_compile:
                fn, shape = self._build(model)
            entry.fn, entry.shape, entry.state, entry.reason = fn, shape, "ready", "compiled with Inductor (frozen)"
            log.info("compiled predict forward of %s ready for input %s", model.name, shape)
        except Exception as exc:  # noqa: BLE001 - any compiler failure leaves the model eager
            entry.state, entry.reason = "failed", f"{type(exc).__name__}: {str(exc)[:300]}"
            log.warning("compiling the predict forward of %s failed; it stays eager: %s", model.name, entry.reason)
        finally:
            entry.done.set()

    @staticmethod
    def _build(model: LoadedModel) -> tuple[Callable[[torch.Tensor], torch.Tensor], tuple[int, ...]]:
        twin = copy.deepcopy(model.module).eval().requires_grad_(False)
        for m in twin.modules():  # a copy taken while an explanation had its capture hooks installed
            for hooks in (m._forward_hooks, m._forward_pre_hooks, m._backward_hooks, m._backward_pre_hooks):
                hooks.clear()
        size = model.preprocessing.input_size
        probe = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
        probe = model.preprocessing.normalize(probe)
        import torch._inductor.config as inductor_config

        with torch.no_grad(), inductor_config.patch(freezing=True):
            fn = torch.compile(twin, dynamic=False)
            got = fn(probe)
            want = twin(probe)
        scale = float(want.abs().max()) or 1.0
        err = float((got.float() - want.float()).abs().max())
        if not err <= AGREEMENT_RTOL * scale:
            raise RuntimeError(f"compiled logits differ from eager by {err:.3g} (scale {scale:.3g})")
        return fn, tuple(probe.shape)
