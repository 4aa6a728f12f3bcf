"""The gradient family and the rectifier rules, on tiny seeded networks (no weights needed).

Each test checks a property a wrong implementation would fail: IG completeness, guided backprop
and deconvnet against captum and hand-derived formulas, unit targets against direct autograd,
a clean model after the rule context, and correct results under concurrent requests.
"""

from __future__ import annotations

import threading

import pytest
import torch
import torch.nn.functional as F
from captum.attr import Deconvolution, GuidedBackprop, IntegratedGradients, Saliency
from tiny import FunctionalBlock, TinyNet, tiny_batch, tiny_model, wrap
from torch import nn

from cnnviz.attribution import ClassTargets, EngineError, UnitTarget, get_method
from cnnviz.attribution.rules import rectifier_rule
from cnnviz.blur import gaussian_blur


def one(name: str, model, x, targets=None, **params) -> torch.Tensor:
    """Maps of every image for its first target, stacked ``[N,H,W]``."""
    e = get_method(name).attribute(model, x, targets or ClassTargets(top_k=1), **params)
    return torch.stack([m[0] for m in e.maps])


def plain_grad(model, x: torch.Tensor, cls: list[int]) -> torch.Tensor:
    xg = x.clone().requires_grad_(True)
    out = model.module(xg)
    (g,) = torch.autograd.grad(out[torch.arange(len(cls)), cls].sum(), xg)
    return g


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def x(model):
    return tiny_batch(3, model=model)


def module_only_twin(seed: int = 0):
    """The tiny net with only nn.ReLU modules (captum's rules see modules only), same weights as
    ``tiny_model(relu6=False)`` whose residual block calls ``F.relu`` functionally."""

    class ModuleBlock(FunctionalBlock):
        def __init__(self, ch: int) -> None:
            super().__init__(ch, "relu")
            self.relu = nn.ReLU()

        def forward(self, x):
            return self.relu(self.bn(self.conv(x)) + x)

    functional = tiny_model(relu6=False, seed=seed)
    twin = TinyNet(relu6=False)
    twin.block = ModuleBlock(16)
    twin.load_state_dict(functional.module.state_dict())
    return functional, wrap(twin)


# ---------------------------------------------------------------------------- saliency & rules

def test_saliency_is_max_abs_gradient_and_matches_captum(model, x):
    cls = model.module(x).argmax(1).tolist()
    ours = one("saliency", model, x)
    g = plain_grad(model, x, cls)
    torch.testing.assert_close(ours, g.abs().amax(1))
    theirs = Saliency(model.module).attribute(x, target=cls)  # abs=True by default
    torch.testing.assert_close(ours, theirs.amax(1))
    torch.testing.assert_close(one("saliency", model, x, reduce="sum"), g.sum(1))
    torch.testing.assert_close(one("saliency", model, x, reduce="l2"), g.norm(dim=1))
    torch.testing.assert_close(one("saliency", model, x, reduce="abs-sum"), g.abs().sum(1))


def test_guided_and_deconvnet_differ_from_gradient_and_each_other(model, x):
    sal = one("saliency", model, x, reduce="sum")
    guided = one("guided_backprop", model, x, reduce="sum")
    deconv = one("deconvnet", model, x, reduce="sum")
    for a, b in ((sal, guided), (sal, deconv), (guided, deconv)):
        assert (a - b).abs().max() > 1e-3 * a.abs().max()
        assert torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1] < 0.99


def test_guided_backprop_and_deconvnet_equal_captum_with_functional_relu():
    functional, twin = module_only_twin()
    x = tiny_batch(2, model=functional)
    cls = functional.module(x).argmax(1).tolist()
    for ours_name, captum_cls in (("guided_backprop", GuidedBackprop), ("deconvnet", Deconvolution)):
        theirs = captum_cls(twin.module).attribute(x.clone(), target=cls)
        # Ours on the net whose block calls F.relu: the thread-local mode must catch the call.
        ours = one(ours_name, functional, x, reduce="sum")
        torch.testing.assert_close(ours, theirs.sum(1), rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(one(ours_name, functional, x), theirs.abs().amax(1), rtol=1e-4, atol=1e-6)


class _Mlp(nn.Module):
    def __init__(self, act: str) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.l1, self.l2 = nn.Linear(6, 32), nn.Linear(32, 4)
        with torch.no_grad():
            self.l1.weight.mul_(8)  # pre-activations well past 6, so ReLU6's upper bound matters
        self.act = act
        self.leaky = nn.LeakyReLU(0.2)
        self.six = nn.ReLU6()

    def forward(self, x):
        h = self.l1(x)
        if self.act == "relu6-module":
            a = self.six(h)
        elif self.act == "hardtanh":
            a = F.hardtanh(h, 0.0, 6.0)
        elif self.act == "relu6-functional":
            a = F.relu6(h)
        elif self.act == "leaky":
            a = self.leaky(h)
        elif self.act == "torch.relu":
            a = torch.relu(h)
        else:
            a = h.relu()
        return self.l2(a)


@pytest.mark.parametrize("act", ["relu6-module", "hardtanh", "relu6-functional", "leaky", "torch.relu", "method"])
@pytest.mark.parametrize("rule", ["guided", "deconvnet"])
def test_rules_by_hand(act: str, rule: str):
    """grad_in = W1^T [ rule(W2^T g) ] with the rule written out, for each rectifier form."""
    net = _Mlp(act).requires_grad_(False)
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(1))
    w = torch.randn(5, 4, generator=torch.Generator().manual_seed(2))
    h = net.l1(x)
    upstream = w @ net.l2.weight  # dL/da  [5,32]
    pos = h > 0
    if act in ("relu6-module", "hardtanh", "relu6-functional"):
        pos &= h < 6
        assert (h > 6).any()
    expected_mid = upstream.clamp(min=0) * pos if rule == "guided" else upstream.clamp(min=0)
    expected = expected_mid @ net.l1.weight
    xg = x.clone().requires_grad_(True)
    with rectifier_rule(net, rule) as warnings:
        out = net(xg)
    (g,) = torch.autograd.grad((out * w).sum(), xg)
    torch.testing.assert_close(g, expected)
    assert warnings == []


def test_rule_context_leaves_model_clean(model, x):
    cls = model.module(x).argmax(1).tolist()
    before = plain_grad(model, x, cls)
    xg = x.clone().requires_grad_(True)
    with rectifier_rule(model.module, "guided"):
        out = model.module(xg)
    (guided,) = torch.autograd.grad(out[torch.arange(3), cls].sum(), xg)
    assert not torch.allclose(guided, before)
    torch.testing.assert_close(plain_grad(model, x, cls), before)
    with pytest.raises(RuntimeError, match="boom"):
        with rectifier_rule(model.module, "deconvnet"):
            model.module(x.clone().requires_grad_(True))
            raise RuntimeError("boom")
    assert all(not m._forward_hooks for m in model.module.modules())
    assert not torch._C._is_torch_function_mode_enabled()
    torch.testing.assert_close(plain_grad(model, x, cls), before)
    with pytest.raises(ValueError):
        with rectifier_rule(model.module, "nope"):
            pass


def test_silu_net_warns_and_relu_net_does_not(x):
    silu = tiny_model("silu")
    e = get_method("guided_backprop").attribute(silu, x, ClassTargets())
    assert any("SiLU" in w and "ordinary gradient" in w for w in e.warnings), e.warnings
    # No rectifier at all: the guided map is the plain gradient.
    torch.testing.assert_close(one("guided_backprop", silu, x), one("saliency", silu, x))
    assert get_method("guided_backprop").attribute(tiny_model(), x, ClassTargets()).warnings == []
    assert get_method("saliency").attribute(silu, x, ClassTargets()).warnings == []


def test_mixed_net_warns_about_functional_silu(x):
    class Mixed(TinyNet):
        def forward(self, x):
            return super().forward(F.silu(x))

    torch.manual_seed(0)
    mixed = wrap(Mixed())
    e = get_method("deconvnet").attribute(mixed, x, ClassTargets())
    assert any("functional SiLU" in w for w in e.warnings), e.warnings


# ---------------------------------------------------------------------------- targets

def test_top_k_and_explicit_targets(model, x):
    logits = model.module(x)
    e = get_method("saliency").attribute(model, x, ClassTargets(top_k=3), reduce="sum")
    assert e.targets == logits.topk(3, dim=1).indices.tolist()
    for i in range(3):
        for t, c in enumerate(e.targets[i]):
            g = plain_grad(model, x[i:i + 1], [c])
            torch.testing.assert_close(e.maps[i][t], g.sum(1)[0])
            assert e.scores[i][t] == pytest.approx(float(logits[i, c]), rel=1e-5)
    # Different numbers of targets per image: missing slots must not leak into others.
    e2 = get_method("saliency").attribute(model, x[:2], ClassTargets(indices=((1, 2), (4,))), reduce="sum")
    assert [len(m) for m in e2.maps] == [2, 1]
    torch.testing.assert_close(e2.maps[1][0], plain_grad(model, x[1:2], [4]).sum(1)[0])
    with pytest.raises(EngineError):
        get_method("saliency").attribute(model, x, ClassTargets(indices=((10,),)))


@pytest.mark.parametrize("pos", [None, (1, 2)])
def test_unit_target_gradient_equals_direct_autograd(model, x, pos):
    layer, channel = "block", 5
    target = UnitTarget(layer, channel, *(pos or (None, None)))
    store = {}
    handle = model.module.get_submodule(layer).register_forward_hook(lambda m, i, o: store.update(a=o))
    xg = x.clone().requires_grad_(True)
    try:
        model.module(xg)
    finally:
        handle.remove()
    a = store["a"][:, channel]
    score = a.mean((1, 2)) if pos is None else a[:, pos[0], pos[1]]
    (g,) = torch.autograd.grad(score.sum(), xg)
    e = get_method("saliency").attribute(model, x, target, reduce="sum")
    torch.testing.assert_close(torch.stack([m[0] for m in e.maps]), g.sum(1))
    assert e.layer == layer and e.targets == [[channel]] * 3
    torch.testing.assert_close(torch.tensor([s[0] for s in e.scores]), score.detach())
    # Other gradient methods take unit targets too (a single neuron's path has sharp kinks: more steps).
    ig = get_method("integrated_gradients").attribute(model, x, target, steps=512, integration="trapezoid",
                                                      adaptive=False)
    assert all(c["relative_error"] < 0.02 for row in ig.extras["completeness"] for c in row)


def test_unit_target_errors(model, x):
    with pytest.raises(EngineError) as err:
        get_method("saliency").attribute(model, x, UnitTarget("nope", 0))
    assert err.value.slug == "unknown-layer" and "block" in err.value.choices
    with pytest.raises(EngineError):
        get_method("saliency").attribute(model, x, UnitTarget("block", 999))
    with pytest.raises(EngineError):
        get_method("guided_gradcam").attribute(model, x, UnitTarget("block", 0))


# ---------------------------------------------------------------------------- IG, x*grad, SmoothGrad

@pytest.mark.parametrize("integration", ["gauss-legendre", "trapezoid"])
@pytest.mark.parametrize("baseline", ["black", "mean", "blurred"])
def test_integrated_gradients_completeness(model, x, baseline, integration):
    e = get_method("integrated_gradients").attribute(model, x, ClassTargets(top_k=2), steps=256, adaptive=False,
                                                     baseline=baseline, integration=integration, batch_size=100)
    if baseline == "mean":
        ref = torch.zeros_like(x)
    elif baseline == "black":
        ref = model.preprocessing.normalize(torch.zeros_like(x))
    else:
        ref = gaussian_blur(x, 10.0)
    with torch.no_grad():
        diff = model.module(x) - model.module(ref)
    for i in range(3):
        for t, c in enumerate(e.targets[i]):
            total = float(e.maps[i][t].sum())  # default reduce "sum" keeps completeness per map
            assert total == pytest.approx(float(diff[i, c]), rel=0.01, abs=1e-4)
            rep = e.extras["completeness"][i][t]
            assert rep["score_difference"] == pytest.approx(float(diff[i, c]), rel=1e-4, abs=1e-6)
            assert rep["relative_error"] < 0.01


def test_integrated_gradients_equals_captum(model, x):
    cls = model.module(x).argmax(1).tolist()
    ours = one("integrated_gradients", model, x, steps=20, baseline="mean", batch_size=7, adaptive=False)
    theirs = IntegratedGradients(model.module).attribute(x, baselines=torch.zeros_like(x), target=cls,
                                                         n_steps=20, method="gausslegendre")
    torch.testing.assert_close(ours, theirs.sum(1), rtol=1e-4, atol=1e-6)


def test_input_x_gradient(model, x):
    cls = model.module(x).argmax(1).tolist()
    torch.testing.assert_close(one("input_x_gradient", model, x), (plain_grad(model, x, cls) * x).sum(1))


@pytest.mark.parametrize("base", ["saliency", "guided_backprop", "input_x_gradient", "integrated_gradients"])
def test_smoothgrad_without_noise_is_the_base(model, x, base):
    params = {"steps": 8, "adaptive": False} if base == "integrated_gradients" else {}
    expected = one(base, model, x, **params)
    got = one("smoothgrad", model, x, base=base, samples=4, noise=0.0, batch_size=5, **params)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


def test_smoothgrad_noise_is_seeded_and_averages(model, x):
    a = one("smoothgrad", model, x, samples=6, noise=0.2, seed=1)
    b = one("smoothgrad", model, x, samples=6, noise=0.2, seed=1)
    c = one("smoothgrad", model, x, samples=6, noise=0.2, seed=2)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)
    assert not torch.allclose(a, one("saliency", model, x))
    # The mean of per-sample gradients: one sample per call, same noise stream.
    cls = model.module(x).argmax(1).tolist()
    gen = torch.Generator().manual_seed(5)
    span = (x.flatten(1).amax(1) - x.flatten(1).amin(1)).view(-1, 1, 1, 1)
    rows = torch.arange(3).repeat_interleave(4)
    noisy = x[rows] + torch.randn((12, *x.shape[1:]), generator=gen) * 0.1 * span[rows]
    g = plain_grad(model, noisy, [cls[i] for i in rows.tolist()]).view(3, 4, *x.shape[1:]).mean(1)
    got = one("smoothgrad", model, x, samples=4, noise=0.1, seed=5, batch_size=64)
    torch.testing.assert_close(got, g.abs().amax(1), rtol=1e-4, atol=1e-6)


def test_guided_gradcam_is_guided_times_upsampled_gradcam(model, x):
    e = get_method("guided_gradcam").attribute(model, x, ClassTargets(top_k=1), reduce="sum")
    guided = get_method("guided_backprop").attribute(model, x, ClassTargets(top_k=1), reduce="sum")
    cam = get_method("gradcam").attribute(model, x, ClassTargets(top_k=1))
    assert e.layer == cam.layer == model.default_layer
    for i in range(3):
        up = F.interpolate(cam.maps[i][0][None, None], size=x.shape[-2:], mode="bilinear", align_corners=False)
        torch.testing.assert_close(e.maps[i][0], guided.maps[i][0] * up[0, 0], rtol=1e-4, atol=1e-7)
    assert get_method("guided_gradcam").attribute(model, x, ClassTargets(), layer="act2").layer == "act2"


def test_costs(model):
    gm = get_method
    assert gm("saliency").estimate_cost(model, 2, 1, {}) == 6
    ig = gm("integrated_gradients").estimate_cost(model, 1, 1, {"steps": 50, "adaptive": False})
    assert 150 <= ig <= 155
    sg = gm("smoothgrad").estimate_cost(model, 1, 1, {"samples": 10, "base": "integrated_gradients", "steps": 50,
                                                    "adaptive": False})
    assert 10 * ig <= sg <= 10 * ig + 5


def test_bad_params(model, x):
    for params in ({"reduce": "max"}, {"steps": 1}, {"steps": 10_000}, {"baseline": "white"}):
        with pytest.raises(EngineError):
            get_method("integrated_gradients").attribute(model, x, ClassTargets(), **params)
    with pytest.raises(EngineError):
        get_method("smoothgrad").attribute(model, x, ClassTargets(), base="smoothgrad")


# ---------------------------------------------------------------------------- concurrency

def test_concurrent_guided_and_plain_gradients_stay_separate(model, x):
    expected = {name: one(name, model, x) for name in ("guided_backprop", "saliency", "deconvnet")}
    assert not torch.allclose(expected["guided_backprop"], expected["saliency"])
    barrier = threading.Barrier(3)
    errors: list[str] = []

    def work(name: str) -> None:
        try:
            barrier.wait()
            for _ in range(15):
                got = one(name, model, x)
                if not torch.allclose(got, expected[name], rtol=1e-5, atol=1e-7):
                    errors.append(f"{name} changed under concurrency")
        except Exception as exc:  # noqa: BLE001 - reported to the main thread
            errors.append(repr(exc))

    threads = [threading.Thread(target=work, args=(n,)) for n in expected]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_kronrod_rule_is_exact_for_polynomials():
    """G7/K15: Kronrod exact through degree 22, Gauss through 13 (the error estimate is their difference)."""
    from cnnviz.attribution.gradient import _kronrod_nodes

    nodes, wk, wg = _kronrod_nodes()
    for k in range(23):
        exact = 0.0 if k % 2 else 2.0 / (k + 1)
        assert float((wk * nodes**k).sum()) == pytest.approx(exact, abs=1e-12)
        if k <= 13:
            assert float((wg * nodes**k).sum()) == pytest.approx(exact, abs=1e-12)
    assert float((wg * nodes**14).sum()) != pytest.approx(2 / 15, abs=1e-6)  # G7 is not exact past 13


def test_adaptive_integrated_gradients_reaches_the_tolerance_and_reports_it(model, x):
    ig = get_method("integrated_gradients")
    fixed = ig.attribute(model, x, ClassTargets(top_k=1), steps=4, adaptive=False)
    coarse = max(c["relative_error"] for row in fixed.extras["completeness"] for c in row)
    e = ig.attribute(model, x, ClassTargets(top_k=1), steps=15, tolerance=0.002, max_steps=600, batch_size=64)
    reps = [c for row in e.extras["completeness"] for c in row]
    assert all(c["relative_error"] <= 0.002 for c in reps)
    assert all(c["adaptive"] and c["steps"] % 15 == 0 and 15 <= c["steps"] <= 600 for c in reps)
    assert coarse > 0.002  # the tolerance was not met by luck at a few fixed points
    # The maps still sum to the score difference they report.
    for i, row in enumerate(e.extras["completeness"]):
        assert float(e.maps[i][0].sum()) == pytest.approx(row[0]["score_difference"], rel=0.003, abs=1e-4)


def test_adaptive_integrated_gradients_stops_at_max_steps_and_warns(model, x):
    e = get_method("integrated_gradients").attribute(model, x, ClassTargets(top_k=1), steps=15, tolerance=0.001,
                                                     max_steps=15)
    assert all(c["steps"] == 15 for row in e.extras["completeness"] for c in row)
    worst = max(c["relative_error"] for row in e.extras["completeness"] for c in row)
    assert (worst > 0.001) == any("raise max_steps" in w for w in e.warnings)


def test_adaptive_cost_is_the_worst_case():
    from cnnviz.attribution.gradient import adaptive_points

    assert adaptive_points(32, 120) == (2, 120)
    assert adaptive_points(4, 15) == (1, 15)
