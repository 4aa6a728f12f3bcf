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

The guided rule reads the forward mask from the rectifier's *output*, which for ReLU, ReLU6 and
a leaky ReLU with a non-negative slope is positive (and below 6) exactly where the input is;
that keeps the rule right when an activation ran in place and its input tensor was overwritten.

Speed (what a profile of ResNet-18 on a 2-core CPU showed, and what is done about it):

* The mode sees every torch call of the forward pass. Whether a model calls rectifiers
  functionally at all is decided once, from its first complete forward pass under the rule
  (a :class:`_Plan`, cached per model): when every rectifier ran inside a hooked rectifier
  module and none is in place, later passes apply the rule by the module hooks alone, which is
  exactly what the mode would have produced. A model whose forward calls ``F.relu`` (torchvision
  blocks written that way, EfficientNet-style ``F.relu6``/``hardtanh``) keeps the mode.
* On CPU the mode also runs each frozen convolution with weights prepacked for oneDNN once per
  model (:mod:`.fast.fastconv`): the per-call weight reorder was as costly as the wide layers'
  convolutions, forward and backward, and the RGB stem's input gradient was 5x its forward.
* No guided mask is computed or stored: the backward reads the tensor the rectifier's own
  backward saves, with the same fused kernels (see :class:`Rule`). On CPU the bool mask and
  the bool-float product it took were not vectorized (a 64x112x112 mask product: 2.2 ms, the
  fused kernel and a clamp: 0.2 ms), and on EfficientNet-Lite's ReLU6 the mask alone took four
  passes over every activation.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ..hooks import thread_hooks
from .fast import fastconv

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

    ``Rule.apply(input, _Held(output), rule, upper, from_input)`` returns ``output`` as a new
    graph node whose backward sends the rule's gradient to ``input``, skipping the rectifier's
    own backward, so exactly the rule acts. ``upper`` is the clipping bound of a bounded
    rectifier (6 for ReLU6) or None.

    No mask is built in the forward pass. The guided backward reads the tensor the rectifier's
    own backward would have saved, the output of a ReLU, the input (``from_input``) of Hardtanh,
    ReLU6, LeakyReLU and PReLU, through the fused kernels autograd uses for them
    (``threshold_backward``: ``> 0``; ``hardtanh_backward``: ``0 < . < upper``), then clamps the
    result at 0. Output and input are positive (and below ``upper``) at the same places, so
    either is right, also after an in-place activation overwrote its input (the two are then
    one tensor); PReLU, whose slope may be negative, needs the input. Saving what the plain
    backward saves costs the same memory, and a later in-place change of the saved tensor is an
    autograd error exactly where it would be for the plain gradient.
    """

    @staticmethod
    def forward(ctx: Any, inp: torch.Tensor, held: _Held, rule: str,  # type: ignore[override]
                upper: float | None, from_input: bool = False) -> torch.Tensor:
        out = held.tensor
        ctx.rule = rule
        ctx.upper = upper
        if rule == "guided":
            ctx.save_for_backward(inp if from_input else out)
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None, None]:  # type: ignore[override]
        if ctx.rule != "guided":
            return grad_out.clamp(min=0), None, None, None, None
        (src,) = ctx.saved_tensors
        if ctx.upper is None:
            passed = torch.ops.aten.threshold_backward(grad_out, src, 0)
        else:
            passed = torch.ops.aten.hardtanh_backward(grad_out, src, 0.0, ctx.upper)
        return passed.clamp_(min=0), None, None, None, None


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


_RELUS = (F.relu, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_)


class _RectifierMode(TorchFunctionMode):
    """Thread-local: wraps functional rectifier results in :class:`Rule` (``functional``) and runs
    frozen CPU convolutions prepacked (``convs``, see :mod:`.fast.fastconv`), for the thread that entered it.

    It also counts what a :class:`_Plan` needs: ``wrapped`` results, and ``inside`` the ones a
    rectifier module's hook found already wrapped (the functional call was that module's own).
    """

    def __init__(self, rule: str, functional: bool = True, convs: bool = False) -> None:
        super().__init__()
        self.rule = rule
        self.functional = functional
        self.convs = convs
        self.ruled_calls = 0
        self.wrapped = 0
        self.inside = 0
        self.completed = False
        self.unruled: Counter[str] = Counter()

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        if func is torch.conv2d and self.convs:
            out = fastconv.conv2d(args, kwargs)
            if out is not None:
                return out
        if not self.functional:
            return func(*args, **(kwargs or {}))
        kwargs = dict(kwargs or {})
        upper: float | None = None
        ruled = from_input = False
        if func in _RELUS:
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
                ruled, from_input = True, True
                args = args[:1]
                kwargs = {"negative_slope": slope}
        elif func in _UNRULED_FUNCTIONS:
            self.unruled[_UNRULED_FUNCTIONS[func]] += 1
        out = func(*args, **kwargs)
        if ruled and args:
            self.ruled_calls += 1
            wrapped = _wrap(args[0], out, self.rule, upper, from_input=from_input or upper is not None)
            if wrapped is not out:
                self.wrapped += 1
            return wrapped
        return out


def _module_hook(rule: str, mode: _RectifierMode | None) -> Callable[[nn.Module, tuple[Any, ...], Any], Any]:
    def hook(mod: nn.Module, inp: tuple[Any, ...], out: Any) -> Any:
        applies, upper = _module_bound(mod)
        if not applies or not inp:
            return None
        if _is_ruled(out):
            if mode is not None:
                mode.inside += 1
            return None
        # The tensor the rectifier's own backward saves (see Rule): a ReLU's output, the others' input.
        wrapped = _wrap(inp[0], out, rule, upper, from_input=not isinstance(mod, nn.ReLU))
        return None if wrapped is out else wrapped
    return hook


@dataclass
class _Plan:
    """What a model's first complete forward pass under the full mode showed, for later passes.

    ``functional``: a rectifier was applied outside the rectifier modules (``F.relu`` in a
    block's forward), so the mode is needed to find it; otherwise the module hooks do exactly
    what the mode did. ``ruled``/``unruled``: the functional calls seen, for the warnings.
    ``modules``: the model's module count then, a cheap check that it is still the same model.
    Decided from one input: a model whose forward takes a branch with functional rectifiers
    only for some inputs would need :func:`forget_plan` (no CNN here does).
    """

    functional: bool
    ruled: int
    unruled: Counter[str] = field(default_factory=Counter)
    modules: int = 0


_PLANS: weakref.WeakKeyDictionary[nn.Module, _Plan] = weakref.WeakKeyDictionary()
_PLANS_LOCK = threading.Lock()


def forget_plan(module: nn.Module) -> None:
    """Drop the cached plan of ``module`` (after changing its forward code); the next pass probes again."""
    with _PLANS_LOCK:
        _PLANS.pop(module, None)


def _completion_hook(mode: _RectifierMode) -> Callable[[nn.Module, tuple[Any, ...], Any], Any]:
    """Marks a complete forward pass of the root module with gradients, the only kind a plan is made from."""
    def hook(mod: nn.Module, inp: tuple[Any, ...], out: Any) -> Any:
        if torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad for t in inp):
            mode.completed = True
        return None
    return hook


def scan(module: nn.Module) -> tuple[int, Counter[str]]:
    """Count the rectifier modules the rules replace, and the other activation modules by kind."""
    rectifiers, other, *_ = _survey(module)
    return len(rectifiers), other


@contextmanager
def rectifier_rule(module: nn.Module, rule: RuleName | str) -> Iterator[list[str]]:
    """Apply ``rule`` to every rectifier in forward passes this thread runs inside the context.

    Yields a list of warnings: activations where the rule does not apply (SiLU, Hardswish, GELU,
    ...) keep their ordinary gradient, and a network with no rectifier at all gets the plain
    gradient. Warnings about functional activations seen only during the forward pass are
    appended when the context exits. Nothing stays on ``module`` afterwards, also after an error.

    Gradients of forward passes inside the context are input gradients only: frozen CPU
    convolutions run prepacked (:mod:`.fast.fastconv`) and give their weights no gradient.
    """
    if rule not in RULES:
        raise ValueError(f"unknown rectifier rule {rule!r}; expected one of {RULES}")
    title = _TITLES[rule]
    rectifiers, other, inplace, convs, n_modules = _survey(module)
    n_ruled = len(rectifiers)
    warnings = [f"{title}: {n} {kind} activation{'s' if n != 1 else ''} keep{'s' if n == 1 else ''} "
                f"{'their' if n != 1 else 'its'} ordinary gradient" for kind, n in sorted(other.items())]
    plan = _PLANS.get(module)
    if plan is not None and plan.modules != n_modules:
        plan = None
    functional = plan is None or plan.functional or inplace
    mode = _RectifierMode(rule, functional=functional, convs=convs) if functional or convs else None
    hook = _module_hook(rule, mode)
    pairs = [(m, hook) for m in rectifiers]
    probing = plan is None and mode is not None
    if probing:
        assert mode is not None
        pairs.append((module, _completion_hook(mode)))
    with ExitStack() as stack:
        stack.enter_context(thread_hooks(pairs))
        if mode is not None:
            stack.enter_context(mode)
        yield warnings
    if probing and mode is not None and mode.completed:
        found = _Plan(functional=mode.wrapped > mode.inside, ruled=mode.ruled_calls, unruled=Counter(mode.unruled),
                      modules=n_modules)
        with _PLANS_LOCK:
            _PLANS[module] = found
        log.debug("rectifier plan for %s: %s", type(module).__name__,
                  "functional rectifiers, the mode stays" if found.functional else "module hooks alone")
    if functional and mode is not None:
        unruled, ruled_calls = mode.unruled, mode.ruled_calls
    else:
        assert plan is not None
        unruled, ruled_calls = plan.unruled, plan.ruled
    for kind in sorted(set(unruled) - set(other)):
        warnings.append(f"{title}: functional {kind} calls keep their ordinary gradient")
    if n_ruled == 0 and ruled_calls == 0:
        warnings.append(f"{title}: the network has no ReLU-type activation; the result is the plain gradient")
    for w in warnings:
        log.debug("%s", w)


def _survey(module: nn.Module) -> tuple[list[nn.Module], Counter[str], bool, bool, int]:
    """One walk over the model: what :func:`scan` counts (the rectifier modules to hook, the other
    activations), whether a rectifier runs in place, whether frozen CPU convolutions could run
    prepacked, and the module count."""
    rectifiers: list[nn.Module] = []
    other: Counter[str] = Counter()
    inplace = convs = False
    n = 0
    for m in module.modules():
        n += 1
        if _module_bound(m)[0]:
            rectifiers.append(m)
            inplace = inplace or bool(getattr(m, "inplace", False))
        elif isinstance(m, (*UNRULED_MODULES, nn.ReLU, nn.LeakyReLU, nn.Hardtanh)):
            other[type(m).__name__] += 1
        elif isinstance(m, nn.Conv2d) and not convs and fastconv.available():
            w = m.weight
            convs = w.device.type == "cpu" and w.dtype == torch.float32 and not w.requires_grad
    return rectifiers, other, inplace, convs, n
