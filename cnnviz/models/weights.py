"""Weight files: tensors read without running pickled code, and checked key by key against the network.

A file that is missing, unreadable, or does not match the architecture is a :class:`ModelLoadError`
naming the file and the first key that differs, raised when the catalog loads the model (at service
or worker start-up), never a half-loaded network.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from .specs import ModelLoadError, ModelSpec


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load tensors without executing pickled code: safetensors, or torch.load(weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd: Any = load_file(str(path), device="cpu")
        else:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same start-up error
        raise ModelLoadError(f"cannot read weights file {path}: {exc}") from exc
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict):
        raise ModelLoadError(f"weights file {path} does not hold a state dict")
    return sd


def _first_mismatch(expected: dict[str, torch.Tensor], sd: dict[str, torch.Tensor]) -> str | None:
    """The first key (in the model's order) that the file lacks, has extra, or holds in another shape."""
    for k, v in expected.items():
        if k not in sd:
            return f"{k!r} is missing from the file"
        if tuple(sd[k].shape) != tuple(v.shape):
            return f"{k!r} has shape {list(sd[k].shape)} in the file, {list(v.shape)} in the model"
    extra = [k for k in sd if k not in expected]
    return f"{extra[0]!r} is in the file but not in the model" if extra else None


def load_weights(module: nn.Module, spec: ModelSpec) -> None:
    sd = read_state_dict(spec.weights)
    if spec.arch.startswith(("googlenet", "inception")):
        sd = {k: v for k, v in sd.items() if not k.startswith("aux")}
    expected = module.state_dict()
    first = _first_mismatch(expected, sd)
    counts = (f"{sum(k not in sd for k in expected)} missing, {sum(k not in expected for k in sd)} unexpected, "
              f"{sum(k in sd and tuple(sd[k].shape) != tuple(v.shape) for k, v in expected.items())} of another "
              "shape")
    if first is not None:
        raise ModelLoadError(f"weights file {spec.weights} does not match {spec.arch}: first mismatching key "
                             f"{first} ({counts})")
    try:
        module.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        raise ModelLoadError(f"weights file {spec.weights} does not match {spec.arch}: {exc}") from exc
