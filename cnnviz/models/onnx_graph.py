"""An ONNX graph as a model: onnxruntime runs it, and onnx2torch's conversion (where it converts) explains it.

``arch = "onnx"`` in the models file. Predictions and the black-box methods (occlusion, RISE) run the
graph on onnxruntime (:class:`OnnxRuntimeModule`), the engine the model was exported for. The
methods that need a layer's output or a gradient (the CAM and gradient families) run onnx2torch's
conversion of the same graph, a ``torch.fx`` module whose nodes are the graph's own (``0/Conv``,
``2/Relu``...), kept only when its logits equal onnxruntime's on a probe. A graph that does not
convert still answers predict and the black-box methods; ``GET /v1/models/{model}`` lists which
methods answer. Both packages are the ``[onnx]`` extra.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

AGREE_ATOL = 1e-3  # logits of the conversion and of onnxruntime on a probe, relative to their scale


class OnnxError(RuntimeError):
    """The graph cannot be read or run by onnxruntime."""


class OnnxRuntimeModule(nn.Module):
    """Logits from onnxruntime: a module so the engine can call it, but with no autograd and no layers.

    A graph exported for a fixed batch of one runs a batch one image at a time. ``converted`` is
    onnx2torch's module of the same graph where it converted and agreed (not a submodule: its layers
    are the model's layers, named as in the graph, not under a prefix).
    """

    def __init__(self, path: Path, threads: int) -> None:
        super().__init__()
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, threads)
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise OnnxError(f"onnxruntime cannot load {path}: {exc}") from exc
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise OnnxError(f"{path}: the graph takes {len(inputs)} inputs; an image classifier takes one")
        self.input_name = inputs[0].name
        shape = inputs[0].shape
        self.fixed_batch = isinstance(shape[0], int) and shape[0] == 1 if shape else False
        self.input_side = shape[-1] if len(shape) == 4 and isinstance(shape[-1], int) and shape[-1] == shape[-2] \
            else None
        self.__dict__["converted"] = None  # set by the builder; kept out of the module tree

    @property
    def converted(self) -> nn.Module | None:
        return self.__dict__["converted"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        arr = x.detach().to("cpu", torch.float32).contiguous().numpy()
        if self.fixed_batch and arr.shape[0] != 1:
            out = np.concatenate([self._run(arr[i:i + 1]) for i in range(arr.shape[0])])
        else:
            out = self._run(arr)
        return torch.from_numpy(out).to(x.device)

    def _run(self, arr: np.ndarray) -> np.ndarray:
        return np.asarray(self.session.run(None, {self.input_name: arr})[0], dtype=np.float32)


def load_onnx(path: Path, input_size: int | None, threads: int) -> tuple[OnnxRuntimeModule, str]:
    """The onnxruntime module with its conversion attached where onnx2torch converts the graph faithfully,
    and a line saying what became of the conversion."""
    runtime = OnnxRuntimeModule(path, threads)
    size = input_size or runtime.input_side or 224
    converted, note = _convert(path, runtime, size)
    runtime.__dict__["converted"] = converted
    return runtime, note


def _convert(path: Path, runtime: OnnxRuntimeModule, size: int) -> tuple[nn.Module | None, str]:
    try:
        import onnx
        import onnx2torch

        module: Any = onnx2torch.convert(onnx.load(str(path)))
    except Exception as exc:  # noqa: BLE001 - any graph onnx2torch cannot take leaves the model black-box
        return None, f"onnx2torch cannot convert it ({type(exc).__name__}: {str(exc)[:200]})"
    module.eval()
    probe = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            got = module(probe)
        want = runtime(probe)
    except Exception as exc:  # noqa: BLE001 - a conversion that does not run is no conversion
        return None, f"its conversion does not run ({type(exc).__name__}: {str(exc)[:200]})"
    if not isinstance(got, torch.Tensor) or got.shape != want.shape:
        return None, "its conversion returns other outputs than the graph"
    scale = float(want.abs().max()) or 1.0
    err = float((got - want).abs().max())
    if err > AGREE_ATOL * scale:
        return None, f"its conversion differs from onnxruntime by {err:.3g} on a probe"
    return module, "converted by onnx2torch (layers and gradients from the conversion)"
