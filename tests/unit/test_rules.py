"""The fast paths of the rectifier rules: the cached per-model plan, the float guided mask, and
prepacked frozen convolutions (:mod:`cnnviz.attribution.fastconv`).

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

from cnnviz.attribution import ClassTargets, UnitTarget, fastconv, get_method, rules
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
    forget_plan(model.module)
    for name, peer in (("guided_backprop", GuidedBackprop), ("deconvnet", Deconvolution)):
        for _ in range(2):  # probe, then the hook path
            ours = get_method(name).attribute(model, x, ClassTargets(indices=tuple((c,) for c in cls)),
                                              reduce="sum")
            theirs = peer(model.module).attribute(x.clone(), target=cls).sum(1)
            torch.testing.assert_close(torch.stack([m[0] for m in ours.maps]), theirs, rtol=1e-4, atol=1e-6)
    assert rules._PLANS[model.module].functional is False


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
    get_method("guided_backprop").attribute(model, x, UnitTarget("act2", 1))  # stops after act2
    assert model.module not in rules._PLANS
    get_method("guided_backprop").attribute(model, x, ClassTargets())
    assert rules._PLANS[model.module].functional is False


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
    forget_plan(model.module)
    for _ in range(2):
        e = get_method("deconvnet").attribute(model, x, ClassTargets())
        assert any("functional SiLU" in w for w in e.warnings), e.warnings
    assert rules._PLANS[model.module].functional is False


@pytest.mark.parametrize("rule", ["guided", "deconvnet"])
def test_bool_mask_path_equals_float_mask_path(rule, monkeypatch):
    """Off CPU the guided mask is a bool tensor; both forms must give the same gradient."""
    torch.manual_seed(4)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU6(), nn.Conv2d(8, 8, 3, padding=1),
                        nn.LeakyReLU(0.1), nn.Conv2d(8, 8, 3, padding=1), nn.PReLU(8, init=-0.3),
                        nn.Conv2d(8, 8, 3, padding=1), nn.Hardtanh(0.0, 2.0), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(8, 4)).eval().requires_grad_(False)
    with torch.no_grad():
        net[0].weight.mul_(6)  # pre-activations past 6, so the upper bounds matter
    x = torch.randn(2, 3, 10, 10, generator=torch.Generator().manual_seed(0))
    cls = net(x).argmax(1).tolist()
    floats, _ = _grad(net, x, rule, cls)
    monkeypatch.setattr(rules, "_float_mask", lambda t: False)
    bools, _ = _grad(net, x, rule, cls)
    torch.testing.assert_close(floats, bools, rtol=0, atol=0)


@pytest.mark.parametrize("upper", [None, 6.0, 0.5])
@pytest.mark.parametrize("nonneg", [True, False])
def test_guided_mask_float_equals_bool(upper, nonneg, monkeypatch):
    src = torch.tensor([-2.0, -0.0, 0.0, 1e-42, 0.3, 0.5, 5.9999995, 6.0, 7.0])
    if nonneg:
        src = src.clamp(min=0, max=upper) if upper is not None else src.clamp(min=0)
    got = rules.guided_mask(src, upper, nonneg)
    monkeypatch.setattr(rules, "_float_mask", lambda t: False)
    expected = rules.guided_mask(src, upper, nonneg)
    assert expected.dtype == torch.bool
    assert torch.equal(got, expected.to(got.dtype))


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
    weight = torch.randn(4, 4, 3, 3, generator=gen)
    assert fastconv.conv2d((x, weight.requires_grad_(True)), {}) is None  # trainable weights: not ours
    weight.requires_grad_(False)
    assert fastconv.conv2d((x, weight, None, 1, "same"), {}) is None  # string padding
    assert fastconv.conv2d((x.double(), weight.double()), {}) is None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert fastconv.conv2d((x, weight), {}) is None  # autocast lowers the conv itself
    torch.testing.assert_close(fastconv.conv2d((x, weight, None, 1, 1), {}), F.conv2d(x, weight, None, 1, 1))
    weight.mul_(2)  # in place: the packed copy is stale and must be rebuilt
    torch.testing.assert_close(fastconv.conv2d((x, weight, None, 1, 1), {}), F.conv2d(x, weight, None, 1, 1))
