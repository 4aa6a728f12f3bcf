"""Trained networks and their training state as safetensors bytes: never a pickle.

A blob is a safetensors file whose header metadata carries one JSON document under ``cnnviz``
(what made the network: backbone, layers, hyper-parameters, metrics), so a worker or API process
on another machine can rebuild and check the network from the blob alone. Optimizer state is
flattened into tensors (``optim.<param index>.<name>``) with its non-tensor parts in the JSON,
so a checkpoint restores Adam exactly and a resumed run continues the same trajectory.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

META_KEY = "cnnviz"
MAX_HEADER_BYTES = 16 * 1024 * 1024


class CheckpointError(ValueError):
    """A blob that is not a cnnviz safetensors file, or that does not fit the network it is loaded into."""


def pack(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> bytes:
    """``tensors`` (made contiguous, on the CPU) and the JSON-able ``meta`` as safetensors bytes."""
    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    return st_save(flat, metadata={META_KEY: json.dumps(meta, separators=(",", ":"))})


def read_meta(blob: bytes) -> dict[str, Any]:
    """The JSON metadata of a blob, read from its header without touching the tensors."""
    if len(blob) < 8:
        raise CheckpointError("not a safetensors blob (too short)")
    (n,) = struct.unpack("<Q", blob[:8])
    if n > MAX_HEADER_BYTES or 8 + n > len(blob):
        raise CheckpointError("not a safetensors blob (bad header length)")
    try:
        header = json.loads(blob[8:8 + n])
        return json.loads(header.get("__metadata__", {}).get(META_KEY, "{}"))
    except (ValueError, AttributeError) as exc:
        raise CheckpointError(f"unreadable safetensors header: {exc}") from exc


def unpack(blob: bytes) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(tensors, meta)`` of a blob made by :func:`pack`."""
    meta = read_meta(blob)
    try:
        tensors = st_load(blob)
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        raise CheckpointError(f"unreadable safetensors data: {exc}") from exc
    return tensors, meta


def module_tensors(net: nn.Module, prefix: str = "net.") -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in net.state_dict().items()}


def load_module(net: nn.Module, tensors: dict[str, torch.Tensor], prefix: str = "net.") -> None:
    """Load ``prefix``-ed tensors strictly: a missing or extra weight is a :class:`CheckpointError`."""
    state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"the weights do not fit the network: {exc}") from exc


def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer's state as flat tensors plus the JSON rest (param groups, scalar state)."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, state in sd["state"].items():
        for name, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{idx}.{name}"] = value
            else:
                scalars.setdefault(str(idx), {})[name] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    for idx, values in (meta.get("scalars") or {}).items():
        state.setdefault(int(idx), {}).update(values)
    try:
        opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    except (KeyError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"the optimizer state does not fit: {exc}") from exc
