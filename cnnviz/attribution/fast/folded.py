"""A copy of a frozen model with each batch norm folded into the convolution before it, for gradients.

In eval mode a batch norm is an affine map per channel, so ``bn(conv(x))`` is one convolution
with scaled weights and a shifted bias. The served module keeps its batch norms (the CAM family,
units and layer views read their outputs by name); methods that only differentiate or perturb
the class scores (saliency, integrated gradients, SmoothGrad, guided backprop, RISE, ...) run
this copy instead and skip a forward and a backward kernel per batch norm: on EfficientNet-Lite0
(49 of them) the input gradient of a batch of four went from 145 to 101 ms on 2 CPU threads.
It is the same function up to float rounding: logits within 2e-6 of their scale, input gradients
within 6e-4 on average; a few pixels move more, where a ReLU6 input sits within rounding of 0 or 6
and its gradient passes in one network but not the other (the eager module's own gradient is
that arbitrary there).

Pairs are found by running a probe: a batch norm whose input is exactly the tensor a
convolution just returned. That cannot see a convolution output that also flows elsewhere (a
skip taken before the norm), so the copy serves only after its logits and input gradient agree
with the original's on a probe; a model that fails, or has nothing to fold, keeps its own module.
"""

from __future__ import annotations

import copy
import logging
import threading
import weakref
from typing import Any

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from ...hooks import thread_hooks
from ...models import LoadedModel

log = logging.getLogger(__name__)

LOGITS_RTOL = 1e-4  # of the largest logit: folding moves them by ~1e-6 in float32
GRADIENT_RTOL = 1e-2  # mean relative input-gradient difference: measured 6e-4 on Lite0

_FOLDED: weakref.WeakKeyDictionary[nn.Module, nn.Module] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()
_UNFOLDED: weakref.WeakSet[nn.Module] = weakref.WeakSet()


def keep_unfolded(module: nn.Module) -> nn.Module:
    """Run ``module`` itself, never a folded copy: for short-lived copies (the randomization test's
    networks) whose folding would cost a deep copy and a probe forward and backward each, more than
    it saves on their few batches."""
    _UNFOLDED.add(module)
    return module


def folded_module(model: LoadedModel) -> nn.Module:
    """The folded copy of ``model.module`` (built once, checked), or the module itself."""
    module = model.module
    if module in _UNFOLDED:
        return module
    got = _FOLDED.get(module)
    if got is not None:
        return got
    with _LOCK:
        got = _FOLDED.get(module)
        if got is None:
            got = _build(model)
            _FOLDED[module] = got
        return got


def _foldable(module: nn.Module) -> bool:
    if not isinstance(module, nn.Module) or isinstance(module, torch.jit.ScriptModule) or module.training:
        return False
    params = list(module.parameters())
    return bool(params) and all(not p.requires_grad and p.dtype == torch.float32 for p in params)


def _build(model: LoadedModel) -> nn.Module:
    module = model.module
    if not model.classifier or not _foldable(module):
        return module  # the probe compares [N, classes] logits: a detector's output is no such row
    try:
        twin = copy.deepcopy(module)
        for m in twin.modules():  # a copy taken while an explanation had its hooks installed
            for hooks in (m._forward_hooks, m._forward_pre_hooks, m._backward_hooks, m._backward_pre_hooks):
                hooks.clear()
        probe = model.preprocessing.normalize(  # [2,3,S,S] for an image model; a signal's or volume's own shape
            torch.rand(2, *model.spec.input_shape, generator=torch.Generator().manual_seed(7))).to(model.device)
        folded = _fold(twin, probe)
        if not folded:
            return module
        _check(module, twin, probe)
    except Exception as exc:  # noqa: BLE001 - any surprise keeps the model's own module
        log.info("batch norms of %s not folded (%s: %s); gradients run the module itself", model.name,
                 type(exc).__name__, str(exc)[:200])
        return module
    log.info("folded %d batch norms of %s into their convolutions for gradient methods", folded, model.name)
    return twin


def _fold(twin: nn.Module, probe: torch.Tensor) -> int:
    """Fold every (conv, batch norm) pair the probe shows into the conv; the norms become identities."""
    produced: dict[int, tuple[nn.Module, torch.Tensor]] = {}  # the outputs themselves: no id is reused
    pairs: list[tuple[nn.Conv2d, nn.BatchNorm2d]] = []

    def conv_out(mod: nn.Module, _inp: Any, out: Any) -> None:
        if isinstance(out, torch.Tensor):
            produced[id(out)] = (mod, out)

    def bn_in(mod: nn.Module, inp: tuple[Any, ...], _out: Any) -> None:
        got = produced.get(id(inp[0])) if inp else None
        if got is not None and got[1] is inp[0] and all(b is not mod for _, b in pairs):
            pairs.append((got[0], mod))  # type: ignore[arg-type]

    hooks = []
    for m in twin.modules():  # subclasses too (a "same"-padding conv): the agreement check has the last word
        if isinstance(m, nn.Conv2d):
            hooks.append((m, conv_out))
        elif isinstance(m, nn.BatchNorm2d) and m.track_running_stats and m.running_mean is not None:
            hooks.append((m, bn_in))
    with thread_hooks(hooks), torch.no_grad():
        twin(probe)
    convs = [c for c, _ in pairs]
    if len(set(map(id, convs))) != len(convs):
        raise RuntimeError("a convolution feeds two batch norms")
    parents = {id(child): (parent, name) for parent in twin.modules() for name, child in parent.named_children()}
    for conv, bn in pairs:
        assert bn.running_mean is not None and bn.running_var is not None
        w, b = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight,
                                    bn.bias)
        conv.weight = nn.Parameter(w.detach(), requires_grad=False)
        conv.bias = nn.Parameter(b.detach(), requires_grad=False)
        parent, name = parents[id(bn)]
        setattr(parent, name, nn.Identity())
    return len(pairs)


def _check(module: nn.Module, twin: nn.Module, probe: torch.Tensor) -> None:
    """The twin's logits and input gradient agree with the module's on the probe, or raise."""
    outs, grads = [], []
    for net in (module, twin):
        x = probe.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            out = net(x)
            (g,) = torch.autograd.grad(out.max(1).values.sum(), x)
        outs.append(out.detach())
        grads.append(g)
    a, b = outs
    scale = float(a.abs().max()) or 1.0
    err = float((a - b).abs().max())
    if not err <= LOGITS_RTOL * scale:
        raise RuntimeError(f"folded logits differ by {err:.3g} (scale {scale:.3g})")
    # The mean, not the max: a rectifier whose input sits within rounding of its kink passes its
    # gradient in one network and not the other, which moves a few pixels and nothing else.
    a, b = grads
    err = float((a - b).abs().mean() / (a.abs().mean() or 1.0))
    if not err <= GRADIENT_RTOL:
        raise RuntimeError(f"folded input gradients differ by {err:.3g} on average (relative)")
