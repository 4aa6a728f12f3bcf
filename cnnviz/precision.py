"""Reduced-precision forward passes: which precisions a device offers, and where autocast applies.

A request may ask for its forward passes in ``bf16`` or ``fp16`` (``torch.autocast``); ``fp32``
is the default. Only the network's forward passes run under autocast, at the few places a method
calls the network (:func:`forward_precision`); everything a method computes from the outputs
(channel weights, quadrature sums, the spreading of occlusion drops, blurs, reductions) stays
float32, because autocast would otherwise also lower einsum, conv_transpose and conv calls
there, where it saves nothing and only loses digits. Backward passes follow the dtypes autocast
recorded in the forward, as PyTorch recommends; input gradients come back in the input's float32.

The precision is per thread (like torch's own autocast state): :func:`run_precision` sets it
for one engine call on the thread that computes, and nested engine calls (guided Grad-CAM's
Grad-CAM) inherit it. A method may decline a reduced precision for its parameters
(:meth:`cnnviz.attribution.Method.full_precision_reason`); it then runs float32 and says so.

What a device offers (:func:`offered`), and why:

* CPU: ``bf16`` and ``fp16`` only where oneDNN has native kernels for them (bf16: AVX512-BF16 or
  AMX; fp16: AVX512-FP16 or AMX-FP16), as oneDNN itself reports. Emulated, they are not worth
  having: on a 2-core AVX512-BF16 CPU without native fp16 (torch 2.14.1, EfficientNet-Lite0,
  224 px) an fp16 autocast forward took 253 ms against 17 ms in fp32 (bf16: 13 ms), and forward +
  backward 865 ms against 40 ms.
* CUDA: ``fp16`` always; ``bf16`` where the GPU computes it natively (compute capability 8.0+,
  :func:`torch.cuda.is_bf16_supported` without emulation).
* MPS: ``fp16``. Any other device: ``fp32`` only.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal, get_args

import torch

from .errors import EngineError

Precision = Literal["fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

__all__ = ["DTYPES", "PRECISIONS", "Precision", "PrecisionRun", "active", "check_precision", "forward_precision",
           "offered", "run_precision"]


def _cpu_native() -> dict[str, bool]:
    """Whether oneDNN runs bf16 / fp16 natively on this CPU (False where torch cannot say)."""
    try:
        return {"bf16": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
                "fp16": bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())}
    except (AttributeError, RuntimeError):  # a torch without oneDNN, or without these queries
        return {"bf16": False, "fp16": False}


@functools.cache
def offered(device: torch.device | str) -> tuple[str, ...]:
    """The precisions usable on ``device``, fp32 first (see the module docstring for why)."""
    dev = torch.device(device)
    if dev.type == "cpu":
        if not torch.amp.is_autocast_available("cpu"):
            return ("fp32",)
        native = _cpu_native()
        return ("fp32", *[p for p in ("bf16", "fp16") if native[p]])
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            return ("fp32",)
        with torch.cuda.device(dev):
            native_bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
        return ("fp32", "fp16", "bf16") if native_bf16 else ("fp32", "fp16")
    if dev.type == "mps" and torch.amp.is_autocast_available("mps"):
        return ("fp32", "fp16")
    return ("fp32",)


def check_precision(device: torch.device | str, precision: str) -> None:
    """Refuse a precision this device cannot run usefully: an engine error the caller sees (a 422)."""
    if precision not in PRECISIONS:
        raise EngineError("bad-parameter", f"unknown precision {precision!r}", list(PRECISIONS))
    choices = offered(device)
    if precision not in choices:
        dev = torch.device(device)
        native = {"bf16": "AVX512-BF16 or AMX", "fp16": "AVX512-FP16 or AMX-FP16"}
        why = (f" (this CPU has no native {precision} kernels, {native[precision]}; emulated they run several "
               "times slower than fp32)" if dev.type == "cpu" and precision in native else "")
        raise EngineError("precision-unsupported", f"{precision} is not offered on {dev.type}{why}; "
                          f"this device offers {', '.join(choices)}", list(choices), device=dev.type)


@dataclass
class PrecisionRun:
    """One engine call's precision: what was asked, what runs, and how many forwards autocast took."""

    asked: str
    running: str
    device_type: str
    reason: str | None = None  # why a reduced precision asked for runs as fp32
    forwards: int = 0  # forward passes run under autocast

    @property
    def ran(self) -> str:
        """The precision the forward passes really ran in: fp32 unless one forward ran reduced."""
        return self.running if self.forwards else "fp32"


_local = threading.local()


def active() -> PrecisionRun | None:
    """This thread's current engine call, if one is in progress."""
    return getattr(_local, "run", None)


@contextmanager
def run_precision(device: torch.device | str, precision: str | None,
                  reason: str | None = None) -> Iterator[PrecisionRun]:
    """One engine call at ``precision`` on this thread (checked against ``device``).

    ``reason``: the method declines reduced precision for these parameters; it runs fp32 and the
    run records why. ``precision`` None inherits an enclosing call's (a nested engine call), or fp32.
    """
    outer = active()
    if precision is None:
        if outer is not None:
            yield outer
            return
        precision = "fp32"
    check_precision(device, precision)
    running = "fp32" if reason is not None else precision
    run = PrecisionRun(precision, running, torch.device(device).type, reason if precision != "fp32" else None)
    _local.run = run
    try:
        yield run
    finally:
        _local.run = outer


@contextmanager
def forward_precision() -> Iterator[None]:
    """Around one forward pass of the network: autocast to this thread's reduced precision, if any.

    A no-op outside an engine call and at fp32, so code that also serves other callers
    (inspection views, metrics) can run through it unchanged.
    """
    run = active()
    if run is None or run.running == "fp32":
        yield
        return
    run.forwards += 1
    with torch.autocast(device_type=run.device_type, dtype=DTYPES[run.running]):
        yield
