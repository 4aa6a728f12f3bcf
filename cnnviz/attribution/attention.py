"""Attention rollout (Abnar & Zuidema 2020) for vision transformers.

Each block's attention ``A_l`` ``[N,heads,L,L]`` is recomputed from the input of its attention
module (timm's ``Attention`` with fused kernels never materializes it; ``nn.MultiheadAttention``
of torchvision's ViT is called without weights): ``softmax(q k^T * scale)`` from the module's
own ``qkv`` projection (and q/k norms). Heads are fused (mean, max or min), the weakest
``discard_ratio`` of the weights is dropped (never the class token's own), the identity is added
for the residual path, rows are renormalized, and the layers are multiplied in order:
``R = A'_L ... A'_1``. The map is the class token's row over the patch tokens (the mean row for a
model without class token), on the patch grid. It is class-agnostic: every target gets the same
map. No backward pass, so it also answers for models marked ``gradients = false``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..hooks import thread_hooks
from ..models import LoadedModel
from ..params import Params, param
from ..precision import forward_precision
from .base import (
    ClassTargets,
    EngineError,
    Explanation,
    MapKind,
    Method,
    Targets,
    checkpoint_rows,
    class_scores,
    register,
)


@dataclass(frozen=True)
class RolloutParams(Params):
    discard_ratio: float = param(0.9, ge=0.0, le=0.99, description="fraction of each layer's weakest attention "
                                 "weights set to 0 before rolling out (the class token's own weight is kept)")
    head_fusion: Literal["mean", "max", "min"] = param("mean", description="how the heads' attention maps "
                                                       "are combined per layer")


def _is_timm_attention(mod: nn.Module) -> bool:
    return (isinstance(getattr(mod, "qkv", None), nn.Linear) and isinstance(getattr(mod, "num_heads", None), int)
            and not hasattr(mod, "window_size"))  # Swin's windowed attention is not global


def attention_modules(module: nn.Module) -> list[nn.Module]:
    """Global self-attention modules: timm-style (``qkv`` + ``num_heads``) and ``nn.MultiheadAttention``."""
    return [m for m in module.modules() if _is_timm_attention(m) or isinstance(m, nn.MultiheadAttention)]


def _weights(mod: nn.Module, inp: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
    """The attention probabilities ``[N,heads,L,L]`` the module computes for its input."""
    x = inp[0] if inp else kwargs.get("x", kwargs.get("query"))
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        return None
    if isinstance(mod, nn.MultiheadAttention):
        if not mod.batch_first or not mod._qkv_same_embed_dim:
            return None
        h = mod.num_heads
        n, length, c = x.shape
        q, k, _ = F.linear(x, mod.in_proj_weight, mod.in_proj_bias).chunk(3, -1)
        q = q.reshape(n, length, h, c // h).transpose(1, 2)
        k = k.reshape(n, length, h, c // h).transpose(1, 2)
        scale = (c // h) ** -0.5
    else:
        h = mod.num_heads
        n, length, _ = x.shape
        qkv = mod.qkv(x)
        d = qkv.shape[-1] // (3 * h)
        q, k, _ = qkv.reshape(n, length, 3, h, d).permute(2, 0, 3, 1, 4).unbind(0)
        if isinstance(getattr(mod, "q_norm", None), nn.Module):
            q, k = mod.q_norm(q), mod.k_norm(k)
        scale = float(getattr(mod, "scale", d ** -0.5))
    return ((q * scale) @ k.transpose(-2, -1)).float().softmax(-1)


def rollout(attentions: list[torch.Tensor], discard_ratio: float, head_fusion: str) -> torch.Tensor:
    """``R = A'_L ... A'_1`` ``[N,L,L]`` from per-layer attentions ``[N,heads,L,L]``."""
    n, _, length, _ = attentions[0].shape
    eye = torch.eye(length, device=attentions[0].device)
    result = eye.expand(n, length, length).clone()
    for att in attentions:
        fused = {"mean": att.mean(1), "max": att.amax(1), "min": att.amin(1)}[head_fusion]
        if discard_ratio > 0:
            flat = fused.reshape(n, -1).clone()
            drop = int(flat.shape[1] * discard_ratio)
            if drop:
                idx = flat.topk(drop, dim=1, largest=False).indices
                keep = torch.ones_like(flat).scatter_(1, idx, 0.0)
                keep[:, 0] = 1.0  # the class token attending to itself
                flat = flat * keep
            fused = flat.view(n, length, length)
        a = (fused + eye) / 2
        a = a / a.sum(-1, keepdim=True)
        result = a @ result
    return result


@register
class AttentionRollout(Method):
    """Abnar & Zuidema 2020: attention rolled out through the layers, read at the class token."""

    name = "attention_rollout"
    title = "Attention rollout"
    family: ClassVar[str] = "attention"
    map_kinds: ClassVar[tuple[MapKind, ...]] = ("positive",)
    Params = RolloutParams

    def unavailable(self, model: LoadedModel) -> str | None:
        if not attention_modules(model.module):
            return "needs self-attention modules (a vision transformer)"
        return super().unavailable(model)

    def run(self, model: LoadedModel, x: torch.Tensor, targets: Targets, layer: str | None,
            params: RolloutParams) -> Explanation:
        if not isinstance(targets, ClassTargets):
            raise EngineError("unsupported-target", "attention_rollout explains class scores, not units")
        mods = attention_modules(model.module)
        if not mods:
            raise EngineError("attention-unavailable", f"model {model.name} has no self-attention modules;"
                              " attention rollout needs a vision transformer", model=model.name)
        seen: list[torch.Tensor] = []
        skipped: list[str] = []

        def hook(mod: nn.Module, inp: tuple[Any, ...], _out: Any) -> None:
            w = _weights(mod, inp, {})
            if w is not None and w.shape[0] == x.shape[0]:
                seen.append(w)
            else:
                skipped.append(type(mod).__name__)

        with torch.no_grad(), thread_hooks([(m, hook) for m in mods]), forward_precision():
            logits = model.module(x)
        checkpoint_rows(model, x.shape[0], x)
        lengths = {w.shape[-1] for w in seen}
        if not seen or skipped or len(lengths) != 1:
            raise EngineError("attention-unavailable", f"model {model.name} has no global self-attention over one"
                              " token sequence (windowed attention, as in Swin, cannot be rolled out)",
                              model=model.name)
        length = lengths.pop()
        prefix = getattr(model.module, "num_prefix_tokens", None)
        if not isinstance(prefix, int):
            prefix = next((p for p in range(5) if math.isqrt(length - p) ** 2 == length - p), 0)
        g = math.isqrt(length - prefix)
        if g * g != length - prefix:
            raise EngineError("attention-unavailable", f"{length - prefix} patch tokens do not form a square grid")
        r = rollout(seen, params.discard_ratio, params.head_fusion)
        rows_r = r[:, 0, prefix:] if prefix else r.mean(1)
        maps_t = rows_r.reshape(-1, g, g)
        maps_t = maps_t / maps_t.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]
        rows = targets.resolve(logits)
        scores, probs = class_scores(logits, rows, model.head)
        maps = [[maps_t[i].float().cpu() for _ in r_] for i, r_ in enumerate(rows)]
        return Explanation(self.name, maps, rows, scores, probs,
                           extras={"layers": len(seen), "prefix_tokens": prefix, "class_agnostic": True})

    def cost(self, model: LoadedModel, n_images: int, n_targets: int, params: Any, layer: str | None) -> float:
        return float(n_images * 1.5)
