"""The CAM family on a tiny network: each variant against its defining formula or a brute force."""

from __future__ import annotations

import threading

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnviz.attribution import ClassTargets, EngineError, get_method
from cnnviz.attribution.fast.tail import TailRunner
from cnnviz.models import LoadedModel, ModelSpec, Preprocessing, default_target_layer, layer_table


class Tiny(nn.Module):
    """conv-relu, conv-relu with a skip over it, strided conv-relu, GAP, linear."""

    def __init__(self, gap: bool = True) -> None:
        super().__init__()
        self.conv1, self.relu1 = nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()
        self.conv2, self.relu2 = nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()
        self.conv3, self.relu3 = nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU()
        self.gap = gap
        self.pool = nn.AdaptiveAvgPool2d(1) if gap else nn.AdaptiveMaxPool2d(1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.relu1(self.conv1(x))
        b = self.relu2(self.conv2(a)) + a
        c = self.relu3(self.conv3(b))
        return self.fc(self.pool(c).flatten(1))


def tiny(gap: bool = True, seed: int = 0) -> LoadedModel:
    torch.manual_seed(seed)
    net = Tiny(gap).eval().requires_grad_(False)
    table = layer_table(net, 16)
    spec = ModelSpec(name="tiny", arch="tiny", weights="", input_size=16, num_classes=5, labels="none")
    return LoadedModel(spec, net, Preprocessing(16, (0.5,) * 3, (0.5,) * 3), tuple(f"c{i}" for i in range(5)),
                       table, default_target_layer(table), torch.device("cpu"))


@pytest.fixture(scope="module")
def model() -> LoadedModel:
    return tiny()


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(2, 3, 16, 16)


def acts_and_grads(model: LoadedModel, x: torch.Tensor, layer: str, cls: int):
    """Reference: activations and d logit / d activations by a plain full backward."""
    store = {}
    h = model.submodule(layer).register_forward_hook(lambda m, i, o: store.setdefault("a", o))
    xi = x.clone().requires_grad_(True)
    try:
        logits = model.module(xi)
    finally:
        h.remove()
    a = store["a"]
    (g,) = torch.autograd.grad(logits[:, cls].sum(), a)
    return a.detach(), g, logits.detach()


def test_default_layer_is_last_spatial(model):
    assert model.default_layer == "relu3"


def test_cam_equals_gradcam_up_to_positive_scale_on_gap_head(model, x):
    cam = get_method("cam").attribute(model, x, ClassTargets(indices=((3,),)))
    grad = get_method("gradcam").attribute(model, x, ClassTargets(indices=((3,),)))
    for i in range(2):
        c, g = cam.maps[i][0], grad.maps[i][0]
        assert c.max() > 0
        hw = c.numel()
        assert torch.allclose(c / hw, g, rtol=1e-4, atol=1e-6)


def test_cam_is_undefined_without_gap_head(x):
    with pytest.raises(EngineError) as e:
        get_method("cam").attribute(tiny(gap=False), x, ClassTargets(top_k=1))
    assert e.value.slug == "cam-undefined"


def test_gradcam_matches_full_backward_formula(model, x):
    a, g, _ = acts_and_grads(model, x, "relu2", 2)
    ref = F.relu((g.mean((2, 3), keepdim=True) * a).sum(1))
    got = get_method("gradcam").attribute(model, x, ClassTargets(indices=((2,),)), layer="relu2")
    assert got.layer == "relu2"
    assert torch.allclose(torch.stack([m[0] for m in got.maps]), ref, atol=1e-6)


def test_backprop_stops_at_the_target_layer(model, x):
    seen = {}
    hooks = [model.submodule(n).register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(n, o.requires_grad))
             for n in ("conv1", "conv2", "conv3")]
    try:
        get_method("gradcam").attribute(model, x, ClassTargets(top_k=1), layer="relu2")
    finally:
        for h in hooks:
            h.remove()
    # Nothing before the layer is recorded for autograd; the part after it is.
    assert seen == {"conv1": False, "conv2": False, "conv3": True}


@pytest.mark.parametrize("method", ["gradcampp", "xgradcam", "hirescam", "layercam"])
def test_gradient_variants_match_their_formulas(model, x, method):
    a, g, _ = acts_and_grads(model, x, "relu2", 4)
    if method == "gradcampp":
        g2, g3 = g**2, g**3
        alpha = g2 / (2 * g2 + a.sum((2, 3), keepdim=True) * g3 + 1e-7)
        alpha = torch.where(g != 0, alpha, torch.zeros_like(alpha))
        ref = F.relu(((alpha * F.relu(g)).sum((2, 3), keepdim=True) * a).sum(1))
    elif method == "xgradcam":
        w = (g * a).sum((2, 3), keepdim=True) / (a.sum((2, 3), keepdim=True) + 1e-7)
        ref = F.relu((w * a).sum(1))
    elif method == "hirescam":
        ref = F.relu((g * a).sum(1))
    else:
        ref = F.relu((F.relu(g) * a).sum(1))
    got = get_method(method).attribute(model, x, ClassTargets(indices=((4,),)), layer="relu2")
    assert torch.allclose(torch.stack([m[0] for m in got.maps]), ref, rtol=1e-4, atol=1e-6)


def test_hirescam_equals_gradcam_on_gap_head(model, x):
    hi = get_method("hirescam").attribute(model, x, ClassTargets(top_k=2))
    gc = get_method("gradcam").attribute(model, x, ClassTargets(top_k=2))
    for i in range(2):
        for t in range(2):
            # dY/dA = w/hw everywhere, so the element-wise and the averaged weighting coincide.
            assert torch.allclose(hi.maps[i][t], gc.maps[i][t], rtol=1e-4, atol=1e-7)


def test_scorecam_weights_are_softmax_scores_of_masked_inputs(model, x):
    layer, cls = "relu3", 1
    a, _, _ = acts_and_grads(model, x, layer, cls)
    ref = []
    for i in range(2):
        w = []
        for k in range(a.shape[1]):
            m = F.interpolate(a[i:i + 1, k:k + 1], size=(16, 16), mode="bilinear", align_corners=False)
            m = (m - m.min()) / (m.max() - m.min()).clamp_min(1e-7)
            w.append(model.module(x[i:i + 1] * m).softmax(1)[0, cls])
        ref.append(F.relu((torch.stack(w)[:, None, None] * a[i]).sum(0)))
    got = get_method("scorecam").attribute(model, x, ClassTargets(indices=((cls,),)), layer=layer, batch_size=5)
    assert torch.allclose(torch.stack([m[0] for m in got.maps]), torch.stack(ref), rtol=1e-4, atol=1e-6)


def _ablation_reference(model, x, layer, cls):
    a, _, logits = acts_and_grads(model, x, layer, cls)
    out = []
    for i in range(2):
        w = []
        for k in range(a.shape[1]):
            def zero_k(m, inp, o, k=k):
                o = o.clone()
                o[:, k] = 0
                return o
            h = model.submodule(layer).register_forward_hook(zero_k)
            try:
                s = model.module(x[i:i + 1])[0, cls]
            finally:
                h.remove()
            base = logits[i, cls]
            w.append((base - s) / (base.abs() + 1e-7))
        out.append(F.relu((torch.stack(w)[:, None, None] * a[i]).sum(0)))
    return torch.stack(out)


@pytest.mark.parametrize("layer", ["relu2", "relu3"])
def test_ablationcam_tail_equals_brute_force(model, x, layer):
    ref = _ablation_reference(model, x, layer, 0)
    got = get_method("ablationcam").attribute(model, x, ClassTargets(indices=((0,),)), layer=layer, batch_size=3)
    assert torch.allclose(torch.stack([m[0] for m in got.maps]), ref, rtol=1e-4, atol=1e-5)


def test_tail_runner_traces_skip_connections(model, x):
    runner = TailRunner(model.module, "relu2")
    assert runner.traced
    values = runner.head_values(x)
    a, _, logits = acts_and_grads(model, x, "relu2", 0)
    # Unchanged layer output through the tail reproduces the logits (the skip input comes from the head).
    assert torch.allclose(runner.run(values, 1, a[1:2]), logits[1:2], atol=1e-5)


def test_eigencam_is_first_principal_component(model, x):
    a, _, _ = acts_and_grads(model, x, "relu3", 0)
    got = get_method("eigencam").attribute(model, x, ClassTargets(top_k=1))
    for i in range(2):
        flat = a[i].reshape(a.shape[1], -1).T.double()
        flat = flat - flat.mean(0)
        _, _, vh = torch.linalg.svd(flat, full_matrices=False)
        proj = (flat @ vh[0]).reshape(a.shape[-2:]).float()
        if (proj * a[i].sum(0)).sum() < 0:
            proj = -proj
        assert torch.allclose(got.maps[i][0], F.relu(proj), atol=1e-4)


def test_hooks_are_removed_even_on_error(model, x):
    with pytest.raises(EngineError):
        get_method("gradcam").attribute(model, x, ClassTargets(indices=((99,),)), layer="relu2")
    assert all(not m._forward_hooks for m in model.module.modules())
    assert all(not m._backward_hooks for m in model.module.modules())


def test_concurrent_requests_get_their_own_maps(model):
    torch.manual_seed(3)
    xs = [torch.randn(1, 3, 16, 16) for _ in range(6)]
    method = get_method("gradcam")
    expected = [method.attribute(model, xi, ClassTargets(indices=((i % 5,),))).maps[0][0] for i, xi in enumerate(xs)]
    results: dict[int, torch.Tensor] = {}
    barrier = threading.Barrier(6)

    def work(i: int) -> None:
        barrier.wait()
        for _ in range(20):
            results[i] = method.attribute(model, xs[i], ClassTargets(indices=((i % 5,),))).maps[0][0]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(6):
        assert torch.allclose(results[i], expected[i], atol=1e-6)
