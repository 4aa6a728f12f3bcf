"""A model ready to explain: the frozen network with its preprocessing, labels and layer table.

:func:`validate_layer` is the one check of a layer name against it, for every method and view.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import EngineError, closest
from .layers import LayerInfo
from .preprocess import Preprocessing
from .specs import ModelSpec


@dataclass
class LoadedModel:
    """A frozen network in eval mode with everything the engine needs to explain it."""

    spec: ModelSpec
    module: nn.Module
    preprocessing: Preprocessing
    labels: tuple[str, ...]
    layers: list[LayerInfo]
    default_layer: str | None
    device: torch.device
    gradients: bool = True  # the backward pass is available (and allowed by the models file)
    runtime: nn.Module | None = None  # what predicts and runs the black-box methods when not ``module`` (ONNX)
    _by_name: dict[str, LayerInfo] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._by_name = {li.name: li for li in self.layers}

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def runtime_module(self) -> nn.Module:
        """The network predictions and the black-box methods run: onnxruntime for an ONNX graph, else ``module``.

        ``module`` is what hooks and gradients need (for an ONNX graph, its onnx2torch conversion, or
        the onnxruntime module itself where the graph did not convert).
        """
        return self.runtime if self.runtime is not None else self.module

    @property
    def input_kind(self) -> str:
        """What the network takes: ``image``, ``signal`` (``[C,L]``) or ``volume`` (``[C,D,H,W]``)."""
        return self.spec.input

    @property
    def head(self) -> str:
        return self.spec.head

    @property
    def task(self) -> str:
        """classification | multilabel | detection | segmentation (:data:`cnnviz.models.specs.TASKS`)."""
        return self.spec.task

    @property
    def classifier(self) -> bool:
        """Its output is one row of class logits: what predict's top-k, the compiled and folded forwards,
        the incremental occlusion engine and request batching assume."""
        return self.spec.task in ("classification", "multilabel")

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Class probabilities ``[N,C]`` from logits: softmax, or per-class sigmoid for a sigmoid head."""
        logits = logits.float()
        return logits.sigmoid() if self.spec.head == "sigmoid" else logits.softmax(1)

    def layer(self, name: str) -> LayerInfo:
        """The named layer; KeyError if the model has no such module."""
        return self._by_name[name]

    def submodule(self, name: str) -> nn.Module:
        return self.module.get_submodule(name)

    def has_layer(self, name: str) -> bool:
        return name in self._by_name

    def usable_by(self, name: str) -> list[str]:
        """Method families that can use the named layer on this model."""
        return self.layer(name).usable_by(self.gradients)


def validate_layer(model: LoadedModel, layer: str | None, *, spatial: bool = True, family: str | None = None) -> str:
    """The layer to use: the model's default, or a named one that exists and that the method can use.

    ``family="cam"`` accepts any grid (convolutional maps, token grids, channels-last maps);
    ``spatial`` without a family asks for a convolutional ``[C,h,w]`` output (the inspection views);
    ``spatial=False`` takes any observable layer (unit targets). An unknown name lists the layers
    closest to it (not the last few of the table), so a typo of an early layer still shows the one meant.
    """
    if layer is None:
        if model.default_layer is None:
            raise EngineError("layer-unusable", f"model {model.name} exposes no layer outputs (a TorchScript"
                              " archive); use occlusion or rise, or export it with torch.export",
                              model=model.name)
        return model.default_layer
    if not model.has_layer(layer):
        if family == "cam":
            candidates = [li.name for li in model.layers if "cam" in li.usable_by(model.gradients)]
        elif spatial:
            candidates = [li.name for li in model.layers if li.spatial]
        else:
            candidates = [li.name for li in model.layers]
        also = [model.default_layer] if model.default_layer else []
        raise EngineError("unknown-layer", f"model {model.name} has no layer {layer!r}",
                          closest(layer, candidates or [li.name for li in model.layers], also=also),
                          model=model.name)
    info = model.layer(layer)
    if not info.hookable:
        raise EngineError("layer-unusable", f"layer {layer!r} of model {model.name} is inside a TorchScript"
                          " archive: its output cannot be observed", model=model.name, usable_by=[])
    if family == "cam":
        if info.grid is None:
            if info.output_shape is not None and len(info.output_shape) == 1:
                raise EngineError("layer-not-spatial", f"layer {layer!r} has output {info.output_shape}; this"
                                  " method needs a spatial [C,h,w] output or a token grid", model=model.name,
                                  usable_by=info.usable_by(model.gradients))
            raise EngineError("layer-unusable", f"layer {layer!r} has output {info.output_shape}, neither a"
                              " [C,h,w] map nor a grid of patch tokens; the CAM family cannot use it",
                              model=model.name, usable_by=info.usable_by(model.gradients))
    elif spatial and not info.spatial:
        raise EngineError("layer-not-spatial", f"layer {layer!r} has output {info.output_shape};"
                          " this method needs a spatial [C,h,w] output", model=model.name,
                          usable_by=info.usable_by(model.gradients))
    return layer
