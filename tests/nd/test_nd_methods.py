"""Methods on 1-D and 3-D grids (issue 26, item 3): each equals a plain computation written here, and a
batched answer equals the lone one. Tiny random convnets; no training."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from cnnviz.attribution import ClassTargets, get_method
from cnnviz.attribution.perturbation import rise_masks_grid
from cnnviz.models.catalog import load_model
from cnnviz.models.input_spec import input_fields
from cnnviz.models.specs import ModelSpec

NETS = "tests.nd.test_nd_methods"


def tiny_signal_net(num_classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv1d(2, 6, 5, padding=2), nn.ReLU(), nn.MaxPool1d(2), nn.Conv1d(6, 8, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(8, num_classes))


def tiny_volume_net(num_classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.BatchNorm3d(4), nn.ReLU(), nn.MaxPool3d(2),
                         nn.Conv3d(4, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool3d(1), nn.Flatten(),
                         nn.Linear(6, num_classes))


def _spec(name: str, factory: str, entry: dict) -> ModelSpec:
    fields = input_fields(entry, name, ValueError)
    return ModelSpec(name=name, arch=f"factory:{NETS}:{factory}", weights="", labels=("a", "b", "c"),
                     num_classes=3, declared=frozenset({"num_classes"}), **fields)


@pytest.fixture(scope="module")
def signal_model():
    return load_model(_spec("sig", "tiny_signal_net", {"input": "signal", "channels": 2, "length": 48}))


@pytest.fixture(scope="module")
def volume_model():
    return load_model(_spec("vol", "tiny_volume_net", {"input": "volume", "channels": 1, "size": [6, 8, 8]}))


def x_of(model, n: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, *model.spec.input_shape, generator=torch.Generator().manual_seed(seed))


def test_layer_table_and_default_layer(signal_model, volume_model):
    assert signal_model.layer("3").grid == "cl" and signal_model.layer("3").output_shape == (8, 24)
    assert signal_model.default_layer == "4"
    assert volume_model.layer("4").grid == "cdhw" and volume_model.layer("4").output_shape == (6, 3, 4, 4)
    assert volume_model.default_layer == "5"


@pytest.mark.parametrize("which", ["signal_model", "volume_model"])
def test_gradcam_equals_a_plain_computation(which, request):
    model = request.getfixturevalue(which)
    x = x_of(model, 2)
    layer = model.default_layer
    res = get_method("gradcam").attribute(model, x, ClassTargets(indices=((1,), (2,))))
    for i, cls in enumerate((1, 2)):
        seen: dict[str, torch.Tensor] = {}
        h = model.submodule(layer).register_forward_hook(lambda m, a, o, seen=seen: seen.setdefault("a", o))
        with torch.enable_grad():
            xi = x[i:i + 1].clone().requires_grad_(True)
            out = model.module(xi)
            acts = seen["a"]
            (g,) = torch.autograd.grad(out[0, cls], acts)
        h.remove()
        dims = tuple(range(1, acts.dim() - 1))
        w = g[0].mean(dim=dims)  # [K]
        plain = torch.relu((w.view(-1, *(1,) * len(dims)) * acts[0]).sum(0))
        torch.testing.assert_close(res.maps[i][0], plain.detach(), rtol=1e-5, atol=1e-6)


def test_occlusion_1d_equals_a_plain_loop(signal_model):
    x = x_of(signal_model, 1)
    window, stride, target = 8, 4, 0
    res = get_method("occlusion").attribute(signal_model, x, ClassTargets(indices=((target,),)), window=window,
                                            stride=stride, fill="mean")
    assert res.extras["engine"] == "full"
    length = x.shape[-1]
    with torch.no_grad():
        base = signal_model.module(x)[0, target]
        total, count = torch.zeros(length), torch.zeros(length)
        for s in range(0, length - window + 1, stride):
            xo = x.clone()
            xo[..., s:s + window] = 0.0  # "mean": zeros after normalization
            total[s:s + window] += base - signal_model.module(xo)[0, target]
            count[s:s + window] += 1
    torch.testing.assert_close(res.maps[0][0], total / count, rtol=1e-5, atol=1e-6)


def test_occlusion_3d_equals_a_plain_loop_and_batches(volume_model):
    x = x_of(volume_model, 2)
    window, stride = 4, 2
    res = get_method("occlusion").attribute(volume_model, x, ClassTargets(indices=((1,), (1,))), window=window,
                                            stride=stride)
    d, h, w = x.shape[2:]
    with torch.no_grad():
        base = volume_model.module(x[1:])[0, 1]
        total, count = torch.zeros(d, h, w), torch.zeros(d, h, w)
        for a in range(0, d - window + 1, stride):
            for b in list(range(0, h - window + 1, stride)) + ([h - window] if (h - window) % stride else []):
                for c in range(0, w - window + 1, stride):
                    xo = x[1:].clone()
                    xo[..., a:a + window, b:b + window, c:c + window] = 0.0
                    total[a:a + window, b:b + window, c:c + window] += base - volume_model.module(xo)[0, 1]
                    count[a:a + window, b:b + window, c:c + window] += 1
    torch.testing.assert_close(res.maps[1][0], total / count, rtol=1e-4, atol=1e-5)
    alone = get_method("occlusion").attribute(volume_model, x[1:], ClassTargets(indices=((1,),)), window=window,
                                              stride=stride)
    torch.testing.assert_close(alone.maps[0][0], res.maps[1][0])


def test_rise_1d_and_3d_equal_the_weighted_sum_of_their_masks(signal_model, volume_model):
    for model, cell in ((signal_model, 6), (volume_model, 3)):
        x = x_of(model, 1)
        grid = tuple(x.shape[2:])
        res = get_method("rise").attribute(model, x, ClassTargets(indices=((2,),)), masks=24, cell=cell, p=0.5,
                                           seed=3, batch_size=8)
        gen = torch.Generator().manual_seed(3)
        masks = torch.cat([rise_masks_grid(8, cell, 0.5, grid, gen, x.device, x.dtype) for _ in range(3)])
        assert masks.shape == (24, *grid) and 0 <= float(masks.min()) and float(masks.max()) <= 1
        with torch.no_grad():
            probs = model.probabilities(model.module(x * masks[:, None]))[:, 2]
        plain = torch.einsum("m,m...->...", probs, masks) / (24 * 0.5)
        torch.testing.assert_close(res.maps[0][0], plain, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("which", ["signal_model", "volume_model"])
def test_saliency_is_the_input_gradient_and_ig_is_complete(which, request):
    model = request.getfixturevalue(which)
    x = x_of(model, 1)
    res = get_method("saliency").attribute(model, x, ClassTargets(indices=((0,),)))
    xg = x.clone().requires_grad_(True)
    with torch.enable_grad():
        (g,) = torch.autograd.grad(model.module(xg)[0, 0], xg)
    torch.testing.assert_close(res.maps[0][0], g[0].abs().amax(0), rtol=1e-4, atol=1e-6)
    ig = get_method("integrated_gradients").attribute(model, x, ClassTargets(indices=((0,),)), steps=16,
                                                      baseline="black", reduce="sum")
    row = ig.extras["completeness"][0][0]
    assert abs(row["attribution_sum"] - row["score_difference"]) <= 0.02 * max(1.0, abs(row["score_difference"]))


@pytest.mark.parametrize("method", ["gradcampp", "xgradcam", "hirescam", "layercam", "eigencam", "cam", "scorecam",
                                    "ablationcam", "guided_backprop", "deconvnet", "input_x_gradient", "smoothgrad",
                                    "guided_gradcam"])
def test_every_method_answers_on_both_grids_and_batches(method, signal_model, volume_model):
    for model in (signal_model, volume_model):
        x = x_of(model, 2)
        kw = {"samples": 3} if method == "smoothgrad" else {}
        both = get_method(method).attribute(model, x, ClassTargets(indices=((1,), (2,))), **kw)
        alone = get_method(method).attribute(model, x[1:], ClassTargets(indices=((2,),)), **kw)
        assert both.maps[1][0].dim() == x.dim() - 2 and torch.isfinite(both.maps[1][0]).all()
        if get_method(method).independent_images(get_method(method).Params.build(None, **kw)):
            torch.testing.assert_close(both.maps[1][0], alone.maps[0][0], rtol=1e-4, atol=1e-5)


def test_models_file_input_keys_are_checked():
    with pytest.raises(ValueError, match="length"):
        input_fields({"input": "signal", "channels": 1}, "m", ValueError)
    with pytest.raises(ValueError, match="size"):
        input_fields({"input": "volume", "size": [8, 8]}, "m", ValueError)
    with pytest.raises(ValueError, match="do not apply"):
        input_fields({"input": "image", "length": 8}, "m", ValueError)
    with pytest.raises(ValueError, match="input must be"):
        input_fields({"input": "video"}, "m", ValueError)
    f = input_fields({"input": "volume", "channels": 2, "size": [4, 5, 6], "spacing": [2, 1, 1]}, "m", ValueError)
    spec = dataclasses.replace(ModelSpec(name="v", arch="x", weights=""), **f)
    assert spec.input_shape == (2, 4, 5, 6) and spec.spacing == (2.0, 1.0, 1.0)
