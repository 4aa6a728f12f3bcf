"""A zoo of small seeded models, one per source of the models file, saved to files and declared in TOML.

Shared by tests/unit/test_own_models.py and tests/http/test_own_models.py. Everything is built
here, from seeds: nothing is downloaded (timm models are created with ``pretrained=False``).
"""

from __future__ import annotations

import json
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

NETS_MODULE = "cnnviz_test_nets"
LABELS3 = ("cat", "dog", "bird")
TAGS4 = ("red", "green", "round", "striped")

# A user's own network, importable by the factory source (``factory:cnnviz_test_nets:build``).
NETS_SOURCE = textwrap.dedent('''
    import torch
    from torch import nn


    class SmallNet(nn.Module):
        """Conv-BN-ReLU x3 (strides 1, 2, 2), global average pooling, one linear classifier."""

        def __init__(self, num_classes: int = 3, width: int = 8) -> None:
            super().__init__()
            w = width
            self.features = nn.Sequential(
                nn.Conv2d(3, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(),
                nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.ReLU(),
                nn.Conv2d(2 * w, 2 * w, 3, stride=2, padding=1), nn.ReLU(),
            )
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(2 * w, num_classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.flatten(self.pool(self.features(x)), 1))


    class NoGradNet(SmallNet):
        """A deployed network whose forward runs without autograd (its backward is unavailable)."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return self.fc(torch.flatten(self.pool(self.features(x)), 1))


    def build(num_classes: int = 3, width: int = 8) -> nn.Module:
        return SmallNet(num_classes, width)
''')


def nets(root: Path) -> Any:
    """The test networks' module, written under ``root`` and imported from there."""
    (root / f"{NETS_MODULE}.py").write_text(NETS_SOURCE)
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    sys.modules.pop(NETS_MODULE, None)
    import importlib

    return importlib.import_module(NETS_MODULE)


def seeded(fn, seed: int = 0) -> nn.Module:
    """``fn()`` built under a fixed seed, with non-trivial batch-norm statistics, in eval mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = fn()
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return net.eval()


def save_weights(net: nn.Module, path: Path) -> str:
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.detach().contiguous() for k, v in net.state_dict().items()}, str(path))
    else:
        torch.save(net.state_dict(), path)
    return str(path)


def tiny_vit(num_classes: int = 3) -> nn.Module:
    import timm

    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=num_classes, **VIT_KWARGS)


def tiny_swin(num_classes: int = 3) -> nn.Module:
    import timm

    return timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, num_classes=num_classes,
                             **SWIN_KWARGS)


VIT_KWARGS = {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 32, "num_heads": 2}
SWIN_KWARGS = {"img_size": 32, "patch_size": 4, "window_size": 4, "depths": [1, 1], "num_heads": [1, 2],
               "embed_dim": 16}


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    return repr(v)


def models_toml(entries: dict[str, dict[str, Any]]) -> str:
    """A models file: ``[models.<name>]`` per entry, a ``kwargs`` dict as its sub-table."""
    out = []
    for name, entry in entries.items():
        out.append(f"[models.{name}]")
        out += [f"{k} = {_value(v)}" for k, v in entry.items() if k != "kwargs"]
        if "kwargs" in entry:
            out.append(f"[models.{name}.kwargs]")
            out += [f"{k} = {_value(v)}" for k, v in entry["kwargs"].items()]
        out.append("")
    return "\n".join(out)


def build_zoo(root: Path) -> Path:
    """One model of each source under ``root``; returns the models file declaring them."""
    import torchvision

    mod = nets(root)
    x = torch.zeros(2, 3, 32, 32)
    # torchvision: a ResNet-18 fine-tuned to 3 classes, with a labels file.
    save_weights(seeded(lambda: torchvision.models.resnet18(num_classes=3)), root / "r18.safetensors")
    (root / "labels.txt").write_text("\n".join(LABELS3) + "\n")
    # timm: a tiny ViT (token grid, attention) from a .pth file.
    save_weights(seeded(tiny_vit), root / "vit.pth")
    # factory: the user's SmallNet; a multi-label sigmoid head with labels in a JSON file.
    save_weights(seeded(lambda: mod.build(num_classes=4)), root / "small4.safetensors")
    (root / "tags.json").write_text(json.dumps(list(TAGS4)))
    # TorchScript: scripted SmallNet; and one whose forward runs without autograd.
    with warnings.catch_warnings():  # torch.jit is deprecated; deployed archives still use it
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(seeded(lambda: mod.SmallNet(3))), str(root / "small.ts"))
        torch.jit.save(torch.jit.script(seeded(lambda: mod.NoGradNet(3))), str(root / "nograd.ts"))
    # torch.export: SmallNet with a dynamic batch dimension (the layer tree survives unflattening).
    batch = torch.export.Dim("batch", min=1, max=1024)
    ep = torch.export.export(seeded(lambda: mod.SmallNet(3)), (x,), dynamic_shapes={"x": {0: batch}})
    torch.export.save(ep, str(root / "small.pt2"))
    entries = {
        "tv": {"arch": "resnet18", "weights": "r18.safetensors", "labels": "labels.txt", "input_size": 64,
               "description": "fine-tuned to 3 classes"},
        "vit": {"arch": "timm:vit_tiny_patch16_224", "weights": "vit.pth", "num_classes": 3, "kwargs": VIT_KWARGS},
        "mine": {"arch": f"factory:{NETS_MODULE}:build", "weights": "small4.safetensors", "labels": "tags.json",
                 "head": "sigmoid", "input_size": 32, "kwargs": {"width": 8}},
        "ts": {"arch": "torchscript", "weights": "small.ts", "input_size": 32, "labels": list(LABELS3)},
        "ts_nograd": {"arch": "torchscript", "weights": "nograd.ts", "input_size": 32},
        "exp": {"arch": "export", "weights": "small.pt2"},
        "exp_frozen": {"arch": "export", "weights": "small.pt2", "gradients": False},
    }
    path = root / "models.toml"
    path.write_text(models_toml(entries))
    return path
