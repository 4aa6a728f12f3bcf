"""Tiny seeded CNNs wrapped as :class:`LoadedModel`, for engine tests that must not need weights.

``tiny_model()`` is a 32x32, 10-class conv net with the pieces attribution methods care about:
ReLU modules, a block that calls ``F.relu`` functionally (as torchvision blocks do), a ReLU6,
batch norm with non-trivial running statistics, and a GAP + Linear head (so CAM is defined).
``kind="silu"`` swaps every rectifier for SiLU (modules and functional calls); ``gap=False``
flattens instead of pooling (CAM undefined); ``functional=False, relu6=False`` leaves only
``nn.ReLU`` modules, the only rectifiers captum's rule-based methods know about.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cnnviz.models import LoadedModel, ModelSpec, Preprocessing, default_target_layer, layer_table

SIZE = 32
CLASSES = 10
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


class FunctionalBlock(nn.Module):
    """Conv + BN + a functional rectifier, with a residual add (like torchvision's BasicBlock)."""

    def __init__(self, ch: int, kind: str) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(ch)
        self.kind = kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x)) + x
        return F.relu(y) if self.kind == "relu" else F.silu(y)


class TinyNet(nn.Module):
    def __init__(self, kind: str = "relu", gap: bool = True, functional: bool = True, relu6: bool = True,
                 num_classes: int = CLASSES) -> None:
        super().__init__()

        def act(six: bool = False) -> nn.Module:
            if kind == "silu":
                return nn.SiLU()
            return nn.ReLU6() if (six and relu6) else nn.ReLU()

        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.act1 = act()
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.act2 = act()
        self.block = FunctionalBlock(16, kind) if functional else None
        self.conv3 = nn.Conv2d(16, 16, 3, stride=2, padding=1)
        self.act3 = act(six=True)  # ReLU6 (the default model's rectifier)
        self.gap = gap
        self.pool = nn.AdaptiveAvgPool2d(1) if gap else nn.Flatten()
        self.fc = nn.Linear(16 if gap else 16 * (SIZE // 4) ** 2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.act2(self.conv2(x))
        if self.block is not None:
            x = self.block(x)
        x = self.act3(self.conv3(x))
        return self.fc(self.pool(x).flatten(1))


def _randomize_bn(module: nn.Module, gen: torch.Generator) -> None:
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(c, generator=gen) * 0.1)


def wrap(module: nn.Module, name: str = "tiny", size: int = SIZE, mean: tuple[float, float, float] = MEAN,
         std: tuple[float, float, float] = STD, num_classes: int = CLASSES,
         default_layer: str | None = None) -> LoadedModel:
    """Freeze any module and wrap it as the catalog would (layer table, default layer, CPU)."""
    module.eval().requires_grad_(False)
    spec = ModelSpec(name=name, arch=name, weights="", input_size=size, mean=mean, std=std,
                     num_classes=num_classes, labels="none")
    table = layer_table(module, size)
    if default_layer is None:
        default_layer = default_target_layer(table)
    labels = tuple(f"class {i}" for i in range(num_classes))
    return LoadedModel(spec, module, Preprocessing(size, mean, std), labels, table, default_layer,
                       torch.device("cpu"))


def tiny_model(kind: str = "relu", gap: bool = True, functional: bool = True, relu6: bool = True,
               seed: int = 0) -> LoadedModel:
    """A seeded :class:`TinyNet` as a :class:`LoadedModel` (see the module docstring)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = TinyNet(kind, gap, functional, relu6)
        gen = torch.Generator().manual_seed(seed + 1)
        _randomize_bn(net, gen)
    return wrap(net, name=f"tiny-{kind}")


def tiny_batch(n: int = 2, seed: int = 0, model: LoadedModel | None = None) -> torch.Tensor:
    """``n`` random images in [0,1], normalized with the model's (or ImageNet) statistics."""
    gen = torch.Generator().manual_seed(seed)
    pixels = torch.rand(n, 3, SIZE, SIZE, generator=gen)
    prep = model.preprocessing if model is not None else Preprocessing(SIZE, MEAN, STD)
    return prep.normalize(pixels)
