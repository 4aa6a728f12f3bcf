"""Backward rules for rectifiers (guided backprop, deconvnet) without backward hooks.

Guided backprop (Springenberg et al. 2015) and the deconvnet (Zeiler & Fergus 2014) differ from
the plain gradient only in what a rectifier passes backwards:

* ``guided``:    ``grad_in = grad_out.clamp(min=0) * (input > 0)``  (``* (input < 6)`` for ReLU6)
* ``deconvnet``: ``grad_in = grad_out.clamp(min=0)``                 (the forward mask is ignored)

Backward hooks are the usual way to change that, but on CUDA autograd runs backward in its own
threads, so a hook cannot tell which request's backward it is looking at, and a hook left on a
shared model changes every other request's gradients. Here the rule is put *into the graph* of
the current thread's forward pass instead: a forward hook (which always runs in the calling
thread, see :mod:`.hooks`) returns ``Rule.apply(input, output)``, a custom autograd function
whose forward is the identity on ``output`` and whose backward sends the rule's gradient straight
to ``input``. Other threads' graphs never contain it, and nothing remains on the model afterwards.

Rectifiers called functionally (``F.relu`` inside torchvision blocks, ``torch.relu``,
``F.relu6``, ``F.hardtanh(x, 0, 6)``, ``F.leaky_relu``) have no module to hook; a
:class:`~torch.overrides.TorchFunctionMode`, which is thread-local, wraps their results the same
way while the context is active. A module rectifier usually calls the functional form itself and
is then wrapped by the mode; its forward hook sees the wrapped output and leaves it alone, so the
rule is applied once.

The forward masks are computed from the rectifier's *output*, which for ReLU, ReLU6 and a leaky
ReLU with a non-negative slope is positive (and below 6) exactly where the input is; that keeps
the rule right when an activation ran in place and its input tensor was overwritten.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ..hooks import thread_hooks

log = logging.getLogger(__name__)

RuleName = Literal["guided", "deconvnet"]
RULES: tuple[str, ...] = ("guided", "deconvnet")
_TITLES = {"guided": "guided backprop", "deconvnet": "deconvnet"}

# Activations whose gradient the rules do not replace: the map then mixes rules and plain gradients.
UNRULED_MODULES: tuple[type[nn.Module], ...] = (
    nn.SiLU, nn.Hardswish, nn.GELU, nn.Mish, nn.ELU, nn.SELU, nn.CELU, nn.Softplus, nn.Sigmoid,
    nn.Hardsigmoid, nn.Tanh, nn.Tanhshrink, nn.Softsign, nn.RReLU, nn.GLU,
)
_UNRULED_FUNCTIONS: dict[Callable[..., Any], str] = {
    F.silu: "SiLU", F.hardswish: "Hardswish", F.gelu: "GELU", F.mish: "Mish", F.elu: "ELU", F.selu: "SELU",
    F.celu: "CELU", F.softplus: "Softplus", F.hardsigmoid: "Hardsigmoid", torch.sigmoid: "Sigmoid",
    torch.tanh: "Tanh",
}


class _Held:
    """Carries a tensor into :class:`Rule` without making it an autograd input.

    A custom Function that returns one of its tensor inputs returns a view, and a later in-place
    op on that view (``y += x`` in a residual block) is forbidden. Passed in a holder, the output
    comes back as the Function's own result: no copy, no view, and the rectifier's own graph
    node is dropped, since nothing refers to it any more.
    """

    __slots__ = ("tensor",)

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor


class Rule(torch.autograd.Function):
    """Identity on a rectifier's output in the forward pass; the chosen rule in the backward pass.

    ``Rule.apply(input, _Held(output), rule, upper, from_input)`` returns ``output`` as a new graph
    node whose backward sends the rule's gradient to ``input``, skipping the rectifier's own
    backward, so exactly the rule acts. ``upper`` is the clipping bound of a bounded rectifier
    (6 for ReLU6) or None. The guided mask is read from the output unless ``from_input`` (PReLU,
    whose slope may be negative); only the boolean mask is saved, not the activations.
    """

    @staticmethod
    def forward(ctx: Any, inp: torch.Tensor, held: _Held, rule: str,  # type: ignore[override]
                upper: float | None, from_input: bool = False) -> torch.Tensor:
        out = held.tensor
        ctx.rule = rule
        if rule == "guided":
            src = inp if from_input else out
            mask = src > 0
            if upper is not None:
                mask &= src < upper
            ctx.save_for_backward(mask)
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None, None]:  # type: ignore[override]
        grad = grad_out.clamp(min=0)
        if ctx.rule == "guided":
            (mask,) = ctx.saved_tensors
            grad = grad * mask
        return grad, None, None, None, None


def _is_ruled(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and isinstance(t.grad_fn, Rule._backward_cls)


def _wrap(inp: Any, out: Any, rule: str, upper: float | None, from_input: bool = False) -> Any:
    """``out`` with the rule built into its graph, or ``out`` itself where there is no graph."""
    if not (isinstance(inp, torch.Tensor) and isinstance(out, torch.Tensor)) or _is_ruled(out):
        return out
    if not (torch.is_grad_enabled() and inp.requires_grad):
        return out
    if inp.shape != out.shape:
        return out
    if out is inp:
        # An in-place rectifier the mode did not catch: its input is gone, and the gradient would
        # pass the rectifier's own backward too (harmless for guided, wrong for deconvnet).
        log.warning("in-place %s activation: the %s rule is approximate here; build the model with"
                    " inplace=False", out.grad_fn.__class__.__name__ if out.grad_fn else "?", rule)
    return Rule.apply(inp, _Held(out.detach()), rule, upper, from_input)


def _module_bound(mod: nn.Module) -> tuple[bool, float | None]:
    """Whether the rule applies to this activation module, and its upper bound (ReLU6: 6)."""
    if isinstance(mod, nn.ReLU6):
        return True, 6.0
    if isinstance(mod, nn.Hardtanh):
        return (mod.min_val == 0.0, mod.max_val if mod.min_val == 0.0 else None)
    if isinstance(mod, nn.ReLU):
        return True, None
    if isinstance(mod, nn.LeakyReLU):
        return mod.negative_slope >= 0, None
    if isinstance(mod, nn.PReLU):
        return True, None  # the guided mask comes from the input: the slope may be negative
    return False, None


def _arg(args: tuple[Any, ...], kwargs: dict[str, Any], i: int, name: str, default: Any) -> Any:
    if len(args) > i:
        return args[i]
    return kwargs.get(name, default)


class _RectifierMode(TorchFunctionMode):
    """Wraps functional rectifier results in :class:`Rule` for the thread that entered it."""

    def __init__(self, rule: str) -> None:
        super().__init__()
        self.rule = rule
        self.ruled_calls = 0
        self.unruled: Counter[str] = Counter()

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = dict(kwargs or {})
        upper: float | None = None
        ruled = False
        if func in (F.relu, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_):
            ruled = True
            if func is torch.relu_ or func is torch.Tensor.relu_:
                func = torch.relu  # in place would overwrite the input the rule routes to
            kwargs.pop("inplace", None)
        elif func is F.relu6:
            ruled, upper = True, 6.0
            kwargs.pop("inplace", None)
        elif func is F.hardtanh:
            lo = _arg(args, kwargs, 1, "min_val", -1.0)
            hi = _arg(args, kwargs, 2, "max_val", 1.0)
            if float(lo) == 0.0:
                ruled, upper = True, float(hi)
                args = args[:1]
                kwargs = {"min_val": lo, "max_val": hi}
        elif func is F.leaky_relu:
            slope = _arg(args, kwargs, 1, "negative_slope", 0.01)
            if float(slope) >= 0:
                ruled = True
                args = args[:1]
                kwargs = {"negative_slope": slope}
        elif func in _UNRULED_FUNCTIONS:
            self.unruled[_UNRULED_FUNCTIONS[func]] += 1
        out = func(*args, **kwargs)
        if ruled and args:
            self.ruled_calls += 1
            return _wrap(args[0], out, self.rule, upper)
        return out


def _module_hook(rule: str) -> Callable[[nn.Module, tuple[Any, ...], Any], Any]:
    def hook(mod: nn.Module, inp: tuple[Any, ...], out: Any) -> Any:
        applies, upper = _module_bound(mod)
        if not applies or not inp or _is_ruled(out):
            return None
        wrapped = _wrap(inp[0], out, rule, upper, from_input=isinstance(mod, nn.PReLU))
        return None if wrapped is out else wrapped
    return hook


def scan(module: nn.Module) -> tuple[int, Counter[str]]:
    """Count the rectifier modules the rules replace, and the other activation modules by kind."""
    ruled = 0
    other: Counter[str] = Counter()
    for m in module.modules():
        applies, _ = _module_bound(m)
        if applies:
            ruled += 1
        elif isinstance(m, (*UNRULED_MODULES, nn.ReLU, nn.LeakyReLU, nn.Hardtanh)):
            other[type(m).__name__] += 1
    return ruled, other


@contextmanager
def rectifier_rule(module: nn.Module, rule: RuleName | str) -> Iterator[list[str]]:
    """Apply ``rule`` to every rectifier in forward passes this thread runs inside the context.

    Yields a list of warnings: activations where the rule does not apply (SiLU, Hardswish, GELU,
    ...) keep their ordinary gradient, and a network with no rectifier at all gets the plain
    gradient. Warnings about functional activations seen only during the forward pass are
    appended when the context exits. Nothing stays on ``module`` afterwards, also after an error.
    """
    if rule not in RULES:
        raise ValueError(f"unknown rectifier rule {rule!r}; expected one of {RULES}")
    title = _TITLES[rule]
    n_ruled, other = scan(module)
    warnings = [f"{title}: {n} {kind} activation{'s' if n != 1 else ''} keep{'s' if n == 1 else ''} "
                f"{'their' if n != 1 else 'its'} ordinary gradient" for kind, n in sorted(other.items())]
    mode = _RectifierMode(rule)
    hook = _module_hook(rule)
    pairs = [(m, hook) for m in module.modules() if _module_bound(m)[0]]
    with ExitStack() as stack:
        stack.enter_context(thread_hooks(pairs))
        stack.enter_context(mode)
        yield warnings
    for kind in sorted(set(mode.unruled) - set(other)):
        warnings.append(f"{title}: functional {kind} calls keep their ordinary gradient")
    if n_ruled == 0 and mode.ruled_calls == 0:
        warnings.append(f"{title}: the network has no ReLU-type activation; the result is the plain gradient")
    for w in warnings:
        log.debug("%s", w)
