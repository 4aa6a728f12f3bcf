"""The layer table: every named module with its output shape, found by one dry-run forward."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class LayerInfo:
    """One named module as the API shows it."""

    name: str
    kind: str
    output_shape: tuple[int, ...] | None  # without the batch dimension; None if not a tensor
    order: int  # position in execution order (first call)

    @property
    def spatial(self) -> bool:
        s = self.output_shape
        return s is not None and len(s) == 3 and s[1] * s[2] > 1


def layer_table(model: nn.Module, input_size: int, device: torch.device | str = "cpu") -> list[LayerInfo]:
    """Run one forward on zeros and record each named module's first output shape, in call order.

    Modules that never run (e.g. an unused auxiliary head) are listed last with no shape.
    """
    shapes: dict[str, tuple[tuple[int, ...] | None, int]] = {}
    handles = []

    def make_hook(name: str):
        def hook(_mod: nn.Module, _inp: object, out: object) -> None:
            if name in shapes:
                return
            shape = tuple(out.shape[1:]) if isinstance(out, torch.Tensor) else None
            shapes[name] = (shape, len(shapes))
        return hook

    for name, mod in model.named_modules():
        if name:
            handles.append(mod.register_forward_hook(make_hook(name)))
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, input_size, input_size, device=device))
    finally:
        for h in handles:
            h.remove()
    table = []
    names = dict(model.named_modules())
    for name, (shape, order) in shapes.items():
        table.append(LayerInfo(name, type(names[name]).__name__, shape, order))
    table.sort(key=lambda li: li.order)
    seen = set(shapes)
    for name, mod in model.named_modules():
        if name and name not in seen:
            table.append(LayerInfo(name, type(mod).__name__, None, len(table)))
    return table


def default_target_layer(table: list[LayerInfo]) -> str:
    """The last module (in execution order) whose output still has a spatial grid larger than 1x1.

    That is the layer CAM methods conventionally use: deepest features, still localized.
    """
    spatial = [li for li in table if li.spatial]
    if not spatial:
        raise ValueError("the model has no layer with a spatial output")
    return spatial[-1].name
