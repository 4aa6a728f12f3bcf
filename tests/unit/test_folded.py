"""The gradient methods' copy with batch norms folded into their convolutions: the same function,
built only where it checks out, and the network the gradient methods really run."""

from __future__ import annotations

import torch
from torch import nn

from cnnviz.attribution import ClassTargets, UnitTarget, get_method
from cnnviz.attribution.fast.folded import folded_module
from tests.unit.tiny import tiny_batch, tiny_model, wrap


def _bns(module: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in module.modules())


def _input_gradient(net: nn.Module, x: torch.Tensor, cls: list[int]) -> torch.Tensor:
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(net(xg)[torch.arange(len(cls)), cls].sum(), xg)
    return g


def test_folded_copy_is_the_same_function_without_its_batch_norms():
    model = tiny_model()
    served_bns = _bns(model.module)
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    twin = folded_module(model)
    assert twin is not model.module and folded_module(model) is twin  # built once
    assert served_bns == 2 and _bns(twin) == 0  # both conv -> norm pairs folded
    assert all(torch.equal(before[k], v) for k, v in model.module.state_dict().items())  # served module untouched
    x = tiny_batch(3, model=model)
    with torch.no_grad():
        want, got = model.module(x), twin(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    cls = want.argmax(1).tolist()
    torch.testing.assert_close(_input_gradient(twin, x, cls), _input_gradient(model.module, x, cls),
                               rtol=1e-4, atol=1e-6)


class _SkipBeforeNorm(nn.Module):
    """A convolution whose output also skips past its norm: folding it would change the skip."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.conv, self.bn, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Linear(8, 10)
        self.bn.running_var.uniform_(0.2, 3.0)
        self.bn.running_mean.uniform_(-1.0, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.fc((self.bn(y) + y).relu().mean((2, 3)))


def test_a_convolution_that_also_skips_its_norm_is_not_folded():
    model = wrap(_SkipBeforeNorm(), num_classes=10)
    assert folded_module(model) is model.module


def test_trainable_or_training_modules_are_not_folded():
    model = tiny_model(seed=5)
    model.module.requires_grad_(True)
    assert folded_module(model) is model.module
    other = tiny_model(seed=6)
    other.module.train()
    assert folded_module(other) is other.module
    other.module.eval()


def test_gradient_methods_run_the_folded_copy_and_units_the_served_module():
    model = tiny_model(seed=7)
    twin = folded_module(model)
    ran: list[str] = []
    hooks = [model.module.register_forward_hook(lambda *_: ran.append("served")),
             model.module.get_submodule("act2").register_forward_hook(lambda *_: ran.append("served act2")),
             twin.register_forward_hook(lambda *_: ran.append("folded"))]
    x = tiny_batch(2, model=model)
    try:
        for method in ("saliency", "integrated_gradients", "guided_backprop"):
            ran.clear()
            get_method(method).attribute(model, x, ClassTargets(top_k=1))
            assert ran and set(ran) == {"folded"}, (method, ran)
        ran.clear()
        get_method("saliency").attribute(model, x, UnitTarget("act2", 1))  # a unit names a served layer
        assert ran and set(ran) == {"served act2"}, ran
        ran.clear()
        get_method("occlusion").attribute(model, x, ClassTargets(top_k=1), window=16, stride=16)
        assert "folded" not in ran  # perturbations compare against the served module's own scores
    finally:
        for h in hooks:
            h.remove()
