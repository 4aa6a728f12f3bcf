"""The fast paths of the rectifier rules: the cached per-model plan, the float guided mask, and
prepacked frozen convolutions (:mod:`cnnviz.attribution.fast.fastconv`).

Each fast path must give what the general path gives: the plan's hook-only pass the same
gradient as the mode, the float mask the same as the bool mask, a prepacked convolution the
same output and input gradient as ``F.conv2d``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from captum.attr import Deconvolution, GuidedBackprop
from tiny import tiny_batch, tiny_model, wrap
from torch import nn

from cnnviz.attribution import ClassTargets, UnitTarget, get_method, rules
from cnnviz.attribution.fast import fastconv
from cnnviz.attribution.fast.folded import folded_module
from cnnviz.attribution.rules import forget_plan, rectifier_rule


class _Spy:
    """Records the ``functional`` flag of every rule mode created while installed."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.flags: list[bool] = []
        spy = self
        base = rules._RectifierMode

        class Recording(base):  # type: ignore[misc, valid-type]
            def __init__(self, *a, **kw):
                super().__init__(*a, **kw)
                spy.flags.append(self.functional)

        monkeypatch.setattr(rules, "_RectifierMode", Recording)


def _grad(module: nn.Module, x: torch.Tensor, rule: str, cls: list[int]) -> tuple[torch.Tensor, list[str]]:
    xg = x.clone().requires_grad_(True)
    with rectifier_rule(module, rule) as warnings:
        out = module(xg)
    (g,) = torch.autograd.grad(out[torch.arange(len(cls)), cls].sum(), xg)
    return g, warnings


class _AllFunctional(nn.Module):
    """Every rectifier called functionally, in the forms the mode knows; ``modules=True``: the same
    net with rectifier modules instead (what captum's rules see)."""

    def __init__(self, modules: bool = False) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.c3 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)
        self.acts = nn.ModuleList([nn.ReLU(), nn.ReLU(), nn.ReLU()]) if modules else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.acts is not None:
            a, b, c = self.acts
            x = c(self.c3(b(self.c2(a(self.c1(x))))))
        else:
            x = torch.relu(self.c3(self.c2(F.relu(self.c1(x))).relu()))
        return self.fc(x.mean((2, 3)))


@pytest.mark.parametrize("rule", ["guided", "deconvnet"])
def test_module_only_model_takes_the_hook_path_with_the_mode_paths_gradient(rule, monkeypatch):
    model = tiny_model(functional=False)  # nn.ReLU and nn.ReLU6 modules only
    x = tiny_batch(3, model=model)
    cls = model.module(x).argmax(1).tolist()
    spy = _Spy(monkeypatch)
    forget_plan(model.module)
    probed, _ = _grad(model.module, x, rule, cls)  # first pass: the full mode, and a plan
    assert rules._PLANS[model.module].functional is False
    fast, warnings = _grad(model.module, x, rule, cls)
    assert spy.flags == [True, False]  # the second pass no longer wraps functional calls
    torch.testing.assert_close(fast, probed, rtol=0, atol=0)
    assert warnings == []


def test_hook_path_equals_captum_on_a_relu_module_net():
    model = tiny_model(functional=False, relu6=False)
    x = tiny_batch(2, model=model)
    cls = model.module(x).argmax(1).tolist()
    forget_plan(folded_module(model))  # class scores run the folded copy
    for name, peer in (("guided_backprop", GuidedBackprop), ("deconvnet", Deconvolution)):
        for _ in range(2):  # probe, then the hook path
            ours = get_method(name).attribute(model, x, ClassTargets(indices=tuple((c,) for c in cls)),
                                              reduce="sum")
            theirs = peer(model.module).attribute(x.clone(), target=cls).sum(1)
            torch.testing.assert_close(torch.stack([m[0] for m in ours.maps]), theirs, rtol=1e-4, atol=1e-6)
    assert rules._PLANS[folded_module(model)].functional is False


@pytest.mark.parametrize("rule", ["guided", "deconvnet"])
def test_model_with_only_functional_rectifiers_keeps_the_rule(rule, monkeypatch):
    functional = _AllFunctional().eval().requires_grad_(False)
    modules = _AllFunctional(modules=True).eval().requires_grad_(False)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    cls = functional(x).argmax(1).tolist()
    spy = _Spy(monkeypatch)
    forget_plan(functional)
    expected, _ = _grad(modules, x, rule, cls)
    plain_x = x.clone().requires_grad_(True)
    (plain,) = torch.autograd.grad(functional(plain_x)[torch.arange(2), cls].sum(), plain_x)
    for _ in range(3):
        got, _ = _grad(functional, x, rule, cls)
        torch.testing.assert_close(got, expected)
        assert not torch.allclose(got, plain)
    assert rules._PLANS[functional].functional is True
    assert spy.flags[-1] is True  # the mode stays for every later pass


def test_in_place_rectifier_modules_keep_the_mode(monkeypatch):
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(8, 8, 3, padding=1),
                        nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    net.eval().requires_grad_(False)
    twin = nn.Sequential(*[nn.ReLU() if isinstance(m, nn.ReLU) else m for m in net]).eval()
    x = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    cls = twin(x).argmax(1).tolist()
    spy = _Spy(monkeypatch)
    forget_plan(net)
    forget_plan(twin)
    expected, _ = _grad(twin, x, "deconvnet", cls)
    for _ in range(2):
        got, _ = _grad(net, x, "deconvnet", cls)
        torch.testing.assert_close(got, expected)
    assert rules._PLANS[net].functional is False
    assert spy.flags[-2:] == [True, True]  # the plan says hooks would do, but in place they cannot


def test_an_early_stopped_forward_makes_no_plan():
    model = tiny_model(functional=False)
    x = tiny_batch(2, model=model)
    forget_plan(model.module)
    forget_plan(folded_module(model))
    get_method("guided_backprop").attribute(model, x, UnitTarget("act2", 1))  # stops after act2
    assert model.module not in rules._PLANS  # a unit runs the served module
    get_method("guided_backprop").attribute(model, x, ClassTargets())
    assert rules._PLANS[folded_module(model)].functional is False


def test_the_plan_keeps_warning_about_functional_silu():
    class SiluHead(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(2)
            self.conv, self.act, self.fc = nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Linear(8, 4)

        def forward(self, x):
            return self.fc(F.silu(self.act(self.conv(x))).mean((2, 3)))

    model = wrap(SiluHead(), num_classes=4)
    x = tiny_batch(2, model=model)
    forget_plan(folded_module(model))
    for _ in range(2):
        e = get_method("deconvnet").attribute(model, x, ClassTargets())
        assert any("functional SiLU" in w for w in e.warnings), e.warnings
    assert rules._PLANS[folded_module(model)].functional is False


class _Layers(nn.Module):
    """``x -> l1 -> act -> l2``: the rule's effect on one activation module, to check by hand."""

    def __init__(self, act: nn.Module) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.l1, self.act, self.l2 = nn.Linear(6, 32), act, nn.Linear(32, 4)
        with torch.no_grad():
            self.l1.weight.mul_(8)  # pre-activations past the upper bounds

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l2(self.act(self.l1(x)))


@pytest.mark.parametrize("act", ["relu6", "hardtanh-0-2", "leaky", "prelu-negative", "relu-inplace", "relu"])
@pytest.mark.parametrize("rule", ["guided", "deconvnet"])
def test_module_rules_by_hand_on_both_paths(act: str, rule: str):
    """grad_in = W1^T [ rule(W2^T g) ], the guided mask from the pre-activation, for each module form;
    on the first pass (the mode) and on later ones (hooks alone where the plan allows)."""
    module = {"relu6": nn.ReLU6(), "hardtanh-0-2": nn.Hardtanh(0.0, 2.0), "leaky": nn.LeakyReLU(0.2),
              "prelu-negative": nn.PReLU(32, init=-0.5), "relu-inplace": nn.ReLU(inplace=True),
              "relu": nn.ReLU()}[act]
    net = _Layers(module).eval().requires_grad_(False)
    forget_plan(net)
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(1))
    w = torch.randn(5, 4, generator=torch.Generator().manual_seed(2))
    h = net.l1(x)
    upper = {"relu6": 6.0, "hardtanh-0-2": 2.0}.get(act)
    if upper is not None:
        assert (h > upper).any()
    passed = (h > 0) & (h < upper) if upper is not None else h > 0
    upstream = (w @ net.l2.weight).clamp(min=0)
    expected = ((upstream * passed) if rule == "guided" else upstream) @ net.l1.weight
    for _ in range(3):
        xg = x.clone().requires_grad_(True)
        with rectifier_rule(net, rule) as warnings:
            out = net(xg)
        (g,) = torch.autograd.grad((out * w).sum(), xg)
        torch.testing.assert_close(g, expected)
        assert warnings == []


@pytest.mark.parametrize("act", [nn.ReLU, nn.ReLU6, nn.LeakyReLU])
def test_guided_saves_what_the_plain_backward_saves(act):
    """A later in-place change of a rectifier's output breaks the guided backward exactly where it
    breaks the plain one (ReLU saves its output; ReLU6 and LeakyReLU their input)."""

    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin, self.act = nn.Linear(4, 4), act()

        def forward(self, x):
            y = self.act(self.lin(x))
            y.mul_(2)  # in place, after the rectifier
            return y.sum()

    net = Scaled().requires_grad_(False)
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))

    def backward_fails(rule: str | None) -> bool:
        xg = x.clone().requires_grad_(True)
        try:
            if rule is None:
                out = net(xg)
            else:
                with rectifier_rule(net, rule):
                    out = net(xg)
            torch.autograd.grad(out, xg)
        except RuntimeError as exc:
            assert "inplace operation" in str(exc)
            return True
        return False

    plain = backward_fails(None)
    assert plain == (act is nn.ReLU)
    for _ in range(2):  # the probing pass and the hook path
        assert backward_fails("guided") == plain
        assert not backward_fails("deconvnet")  # nothing saved


# ---------------------------------------------------------------------------- prepacked convolutions

class _ConvMode(torch.overrides.TorchFunctionMode):
    hits = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.conv2d:
            out = fastconv.conv2d(args, kwargs)
            if out is not None:
                _ConvMode.hits += 1
                return out
        return func(*args, **(kwargs or {}))


GEOMETRIES = [
    # (N, Cin, H, W, Cout, kernel, stride, padding, dilation, groups, bias, channels_last)
    (1, 3, 64, 64, 16, 7, 2, 3, 1, 1, False, True),     # an RGB stem: the sub-pixel input gradient
    (2, 3, 33, 35, 8, 7, 2, 3, 1, 1, True, False),      # odd sizes: phase rows cropped
    (1, 3, 30, 30, 8, 4, 4, 0, 1, 1, False, True),
    (1, 2, 29, 29, 8, 5, 3, 0, 1, 1, False, True),
    (1, 3, 17, 17, 8, 3, 2, 0, 1, 1, False, True),
    (2, 16, 14, 14, 16, 3, 1, 1, 1, 1, True, True),     # stride 1: the flipped kernel
    (2, 16, 14, 14, 32, 1, 1, 0, 1, 1, False, True),
    (2, 16, 14, 14, 16, 5, 1, (2, 1), 1, 1, False, True),
    (2, 16, 14, 14, 16, 3, 1, 0, 1, 1, False, False),
    (2, 16, 14, 14, 16, 3, 1, 1, 1, 16, False, True),   # depthwise
    (2, 16, 14, 14, 32, 3, 1, 1, 1, 4, True, True),     # grouped
    (2, 16, 14, 14, 32, 1, 2, 0, 1, 1, False, True),    # strided: the transposed convolution
    (2, 16, 15, 15, 32, 3, 2, 1, 1, 1, False, False),
    (2, 16, 15, 15, 16, 3, 2, 1, 1, 16, False, True),
    (2, 16, 14, 14, 16, 3, 1, 2, 2, 1, False, True),    # dilated
    (1, 8, 14, 14, 16, (3, 1), (2, 1), (1, 0), 1, 1, False, True),
]


@pytest.mark.skipif(not fastconv.available(), reason="no oneDNN in this torch build")
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: "-".join(map(str, g)))
def test_prepacked_convolution_equals_conv2d(geometry):
    n, ci, h, w, co, k, s, p, d, g, bias, cl = geometry
    k2 = k if isinstance(k, tuple) else (k, k)
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(co, ci // g, *k2, generator=gen)
    b = torch.randn(co, generator=gen) if bias else None
    x = torch.randn(n, ci, h, w, generator=gen)
    if cl:
        cl_ = torch.channels_last
        weight, x = weight.contiguous(memory_format=cl_), x.contiguous(memory_format=cl_)
    weight = nn.Parameter(weight, requires_grad=False)  # only a model's own weights are packed
    xr = x.clone().requires_grad_(True)
    ref = F.conv2d(xr, weight, b, s, p, d, g)
    upstream = torch.randn(ref.shape, generator=gen)
    (gref,) = torch.autograd.grad(ref, xr, upstream)
    xp = x.clone().requires_grad_(True)
    _ConvMode.hits = 0
    with _ConvMode():
        out = F.conv2d(xp, weight, b, s, p, d, g)
    assert _ConvMode.hits == 1
    (gp,) = torch.autograd.grad(out, xp, upstream)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gp, gref, rtol=1e-5, atol=1e-5 * gref.abs().max().item())
    assert out.is_contiguous() == ref.is_contiguous() and gp.is_contiguous() == gref.is_contiguous()


@pytest.mark.skipif(not fastconv.available(), reason="no oneDNN in this torch build")
def test_prepacked_convolution_declines_and_repacks():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 8, 8, generator=gen)
    assert fastconv.conv2d((x, torch.randn(4, 4, 3, 3)), {}) is None  # not a parameter: computed per call
    weight = nn.Parameter(torch.randn(4, 4, 3, 3, generator=gen))
    assert fastconv.conv2d((x, weight), {}) is None  # trainable weights: not ours
    weight.requires_grad_(False)
    assert fastconv.conv2d((x, weight, None, 1, "same"), {}) is None  # string padding
    assert fastconv.conv2d((x.double(), nn.Parameter(weight.double(), requires_grad=False)), {}) is None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert fastconv.conv2d((x, weight), {}) is None  # autocast lowers the conv itself
    torch.testing.assert_close(fastconv.conv2d((x, weight, None, 1, 1), {}), F.conv2d(x, weight, None, 1, 1))
    weight.mul_(2)  # in place: the packed copy is stale and must be rebuilt
    torch.testing.assert_close(fastconv.conv2d((x, weight, None, 1, 1), {}), F.conv2d(x, weight, None, 1, 1))
    weight.data = torch.randn(4, 4, 3, 3, generator=gen)  # swapped storage, same version (as module.to() does)
    torch.testing.assert_close(fastconv.conv2d((x, weight, None, 1, 1), {}), F.conv2d(x, weight, None, 1, 1))


def test_packed_convolutions_context_gives_the_same_gradcam():
    model = tiny_model()
    x = tiny_batch(2, model=model)
    plain = get_method("gradcam").attribute(model, x, ClassTargets(top_k=2))
    with fastconv.packed_convolutions():
        packed = get_method("gradcam").attribute(model, x, ClassTargets(top_k=2))
    assert not torch._C._is_torch_function_mode_enabled()
    assert packed.targets == plain.targets
    for a, b in zip(packed.maps, plain.maps, strict=True):
        for ma, mb in zip(a, b, strict=True):
            torch.testing.assert_close(ma, mb, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not fastconv.available(), reason="no oneDNN in this torch build")
def test_prepacked_backward_falls_back_to_aten(monkeypatch):
    """Should oneDNN refuse a backward packing, the input gradient comes from aten's own backward."""
    gen = torch.Generator().manual_seed(0)
    weight = nn.Parameter(torch.randn(8, 4, 3, 3, generator=gen), requires_grad=False)
    x = torch.randn(2, 4, 9, 9, generator=gen)

    def refuse(self, grad, in_shape):
        raise RuntimeError("no packing for this geometry")

    monkeypatch.setattr(fastconv._Packed, "input_grad", refuse)
    xr, xp = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ref = F.conv2d(xr, weight, None, 2, 1)
    with _ConvMode():
        out = F.conv2d(xp, weight, None, 2, 1)
    upstream = torch.randn(ref.shape, generator=gen)
    torch.testing.assert_close(torch.autograd.grad(out, xp, upstream)[0], torch.autograd.grad(ref, xr, upstream)[0])
