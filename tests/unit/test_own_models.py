"""Your own model (issue 17): every source of the models file, heads and labels, default layers,
token grids, attention rollout and gradient-free deployed models. Small seeded models only."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from own_models_kit import (
    LABELS3,
    SWIN_KWARGS,
    TAGS4,
    VIT_KWARGS,
    build_zoo,
    models_toml,
    seeded,
    tiny_swin,
    tiny_vit,
)
from torch import nn
from torchvision.models.vgg import VGG, make_layers

from cnnviz.attribution import ClassTargets, EngineError, UnitTarget, get_method
from cnnviz.attribution.attention import rollout
from cnnviz.attribution.base import gradient_free_methods
from cnnviz.hooks import thread_hooks
from cnnviz.models import Catalog, ModelLoadError, default_target_layer, layer_table, specs_from_file
from cnnviz.models.layers import detect_grid

timm = pytest.importorskip("timm")


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo")
    return root, Catalog(specs_from_file(build_zoo(root)), device="cpu", default="tv")


def _x(model, n: int = 1, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    s = model.spec.input_size
    return model.preprocessing.normalize(torch.rand(n, 3, s, s, generator=gen))


# ------------------------------------------------------------------------------------------
# Default target layers, checked against the names the field uses for each architecture
# ------------------------------------------------------------------------------------------

def _vgg() -> nn.Module:
    net = VGG(make_layers([8, "M", 16, "M", 32, "M", 32, "M", 32, "M"]), num_classes=3, init_weights=False)
    net.classifier = nn.Sequential(nn.Linear(32 * 49, 16), nn.ReLU(), nn.Dropout(), nn.Linear(16, 3))
    return net


ARCHS = {
    # name: (builder, input size, the known target layer)
    "resnet": (lambda: torchvision.models.resnet18(num_classes=3), 64, "layer4"),
    "vgg": (_vgg, 64, "features.14"),  # features[-1]; not the adaptive avgpool that follows
    "mobilenetv3": (lambda: torchvision.models.mobilenet_v3_small(num_classes=3), 64, "features.12"),
    # SqueezeNet: the last map before the 1x1 logits convolution.
    "squeezenet": (lambda: torchvision.models.squeezenet1_1(num_classes=3), 64, "features.12"),
    "convnext": (lambda: timm.create_model("convnext_tiny", pretrained=False, num_classes=3, depths=(1, 1, 1, 1),
                                           dims=(8, 16, 24, 32)), 64, "stages.3"),
    "efficientnet": (lambda: timm.create_model("test_efficientnet", pretrained=False, num_classes=3), 64, "bn2"),
    "vit": (tiny_vit, 32, "blocks.1.norm1"),  # the last block's output no longer reaches the class token
    "swin": (tiny_swin, 32, "norm"),  # channels-last [h,w,C] grid
}


@pytest.mark.parametrize("arch", list(ARCHS))
def test_default_target_layer(arch):
    build, size, expected = ARCHS[arch]
    net = seeded(build).requires_grad_(False)
    table = layer_table(net, size)
    assert default_target_layer(table, 3) == expected


def test_layer_table_marks_token_grids():
    net = seeded(tiny_vit).requires_grad_(False)
    table = {li.name: li for li in layer_table(net, 32)}
    block = table["blocks.1"]
    assert (block.grid, block.prefix_tokens, block.output_shape, block.grid_hw) == ("tokens", 1, (17, 32), (4, 4))
    assert block.feeds_head is False and table["blocks.1.norm1"].feeds_head is True
    assert table["blocks.0.attn.q_norm"].grid is None  # [heads, L, d]: no grid
    assert table["head"].grid is None and table["head"].usable_by() == ["gradient", "perturbation"]
    assert block.usable_by() == ["cam", "gradient", "perturbation"] and block.usable_by(False) == ["cam",
                                                                                                  "perturbation"]
    swin = {li.name: li for li in layer_table(seeded(tiny_swin).requires_grad_(False), 32)}
    assert swin["layers.1"].grid == "nhwc" and swin["layers.1"].grid_hw == (4, 4)
    assert detect_grid((197, 768), 224) == ("tokens", 1) and detect_grid((196, 768), 224) == ("tokens", 0)
    assert detect_grid((64, 7, 7), 224) == ("chw", 0) and detect_grid((7, 7, 64), 224) == ("nhwc", 0)


# ------------------------------------------------------------------------------------------
# Transformers: token grids, attention rollout, rectifier warnings
# ------------------------------------------------------------------------------------------

def test_gradcam_on_vit_tokens_equals_by_hand(zoo):
    _, cat = zoo
    model = cat.get("vit")
    x = _x(model, 2)
    res = get_method("gradcam").attribute(model, x, ClassTargets(indices=((1,), (2,))))
    assert res.layer == "blocks.1.norm1"
    # By hand: the layer's tokens as a leaf, the class scores' gradient, the 4x4 grid of patch tokens.
    box = {}

    def hook(_m, _i, out):
        box["t"] = out.detach().requires_grad_(True)
        return box["t"]

    with thread_hooks([(model.submodule("blocks.1.norm1"), hook)]), torch.enable_grad():
        logits = model.module(x)
    (g,) = torch.autograd.grad(logits[0, 1] + logits[1, 2], box["t"])
    acts = box["t"].detach()[:, 1:].transpose(1, 2).reshape(2, 32, 4, 4)
    grads = g[:, 1:].transpose(1, 2).reshape(2, 32, 4, 4)
    by_hand = F.relu((grads.mean((2, 3))[:, :, None, None] * acts).sum(1))
    for i in range(2):
        assert res.maps[i][0].shape == (4, 4)
        torch.testing.assert_close(res.maps[i][0], by_hand[i], rtol=1e-4, atol=1e-6)
    assert by_hand.abs().sum() > 0


def test_swin_and_vit_cam_family_on_grids(zoo):
    _, cat = zoo
    vit = cat.get("vit")
    x = _x(vit)
    for method in ("eigencam", "layercam"):
        assert get_method(method).attribute(vit, x, ClassTargets()).maps[0][0].shape == (4, 4)
    # A unit of a token layer is a channel of its grid; the gradient of the input is not zero.
    unit = get_method("saliency").attribute(vit, x, UnitTarget("blocks.0", 3, 1, 2))
    assert unit.maps[0][0].shape == (32, 32) and unit.maps[0][0].abs().sum() > 0
    swin = seeded(tiny_swin).requires_grad_(False)
    from tiny import wrap

    m = wrap(swin, name="swin", size=32, num_classes=3)
    r = get_method("gradcam").attribute(m, _x(m), ClassTargets())
    assert r.layer == "norm" and r.maps[0][0].shape == (4, 4) and r.maps[0][0].sum() > 0
    # Swin's head is GAP + linear on that grid: plain CAM is defined there.
    assert get_method("cam").attribute(m, _x(m), ClassTargets()).maps[0][0].shape == (4, 4)
    with pytest.raises(EngineError) as err:
        get_method("attention_rollout").attribute(m, _x(m), ClassTargets())
    assert err.value.slug == "attention-unavailable"  # windowed attention does not roll out


def test_attention_rollout_matches_materialized_attention(zoo):
    _, cat = zoo
    model = cat.get("vit")
    x = _x(model)
    res = get_method("attention_rollout").attribute(model, x, ClassTargets(top_k=2), discard_ratio=0.0,
                                                    head_fusion="max")
    assert res.maps[0][0].shape == (4, 4) and torch.equal(res.maps[0][0], res.maps[0][1])
    # timm's unfused attention path runs its dropout on the attention probabilities: record them there.
    seen = []
    blocks = list(model.module.blocks)
    for b in blocks:
        b.attn.fused_attn = False
    try:
        with torch.no_grad(), thread_hooks([(b.attn.attn_drop, lambda _m, _i, o: seen.append(o)) for b in blocks]):
            model.module(x)
    finally:
        for b in blocks:
            b.attn.fused_attn = True
    assert len(seen) == 2
    r = rollout(seen, 0.0, "max")[0, 0, 1:].reshape(4, 4)
    torch.testing.assert_close(res.maps[0][0], r / r.max(), rtol=1e-4, atol=1e-6)
    with pytest.raises(EngineError, match="head_fusion"):
        get_method("attention_rollout").attribute(model, x, ClassTargets(), head_fusion="median")


def test_rectifier_rules_warn_about_gelu(zoo):
    _, cat = zoo
    res = get_method("guided_backprop").attribute(cat.get("vit"), _x(cat.get("vit")), ClassTargets())
    assert any("GELU" in w and "ordinary gradient" in w for w in res.warnings)


def test_layer_a_method_cannot_use_is_refused(zoo):
    _, cat = zoo
    vit = cat.get("vit")
    with pytest.raises(EngineError) as err:
        get_method("gradcam").attribute(vit, _x(vit), ClassTargets(), layer="blocks.0.attn.q_norm")
    assert err.value.slug == "layer-unusable"
    with pytest.raises(EngineError) as err:
        get_method("gradcam").attribute(vit, _x(vit), ClassTargets(), layer="head")
    assert err.value.slug == "layer-not-spatial"
    res = get_method("gradcam").attribute(vit, _x(vit), ClassTargets(), layer="blocks.1")
    assert any("does not reach the logits" in w for w in res.warnings)


# ------------------------------------------------------------------------------------------
# Sources, heads, labels, preprocessing
# ------------------------------------------------------------------------------------------

def test_every_source_loads_and_explains(zoo):
    _, cat = zoo
    expect = {"tv": ("layer4", True), "vit": ("blocks.1.norm1", True), "mine": ("features.6", True),
              "ts": (None, True), "ts_nograd": (None, False), "exp": ("features.6", True),
              "exp_frozen": ("features.6", False)}
    for name, (layer, grads) in expect.items():
        m = cat.get(name)
        assert (m.default_layer, m.gradients) == (layer, grads), name
        assert not m.module.training
        occ = get_method("occlusion").attribute(m, _x(m), ClassTargets(), window=16, stride=16)
        assert occ.maps[0][0].shape == (m.spec.input_size,) * 2
    assert cat.get("exp").spec.input_size == 32  # read from the exported program
    assert cat.get("ts").spec.num_classes == 3  # from the archive's output
    # An export archive keeps its module tree: Grad-CAM hooks its layers like the original's.
    r = get_method("gradcam").attribute(cat.get("exp"), _x(cat.get("exp"), 2), ClassTargets())
    assert r.maps[1][0].shape == (8, 8)


def test_labels_file_and_timm_preprocessing(zoo):
    root, cat = zoo
    assert cat.get("tv").labels == LABELS3 and cat.get("ts").labels == LABELS3
    assert cat.get("mine").labels == TAGS4
    vit = cat.get("vit")  # timm's pretrained config: mean/std 0.5, bicubic, crop 0.9; img_size from kwargs
    p = vit.preprocessing
    assert (p.input_size, p.mean, p.interpolation, p.crop_fraction) == (32, (0.5,) * 3, "bicubic", 0.9)
    # The models file wins over timm's config.
    toml = root / "override.toml"
    toml.write_text(models_toml({"v": {"arch": "timm:vit_tiny_patch16_224", "weights": "vit.pth", "num_classes": 3,
                                       "interpolation": "nearest", "resize": "center-crop", "mean": [0.4, 0.4, 0.4],
                                       "kwargs": VIT_KWARGS}}))
    m = Catalog(specs_from_file(toml), device="cpu").get("v")
    assert (m.preprocessing.interpolation, m.preprocessing.resize, m.preprocessing.mean) == ("nearest",
                                                                                          "center-crop", (0.4,) * 3)
    assert m.preprocessing.fit(torch.rand(3, 50, 70)).shape == (3, 32, 32)


def test_sigmoid_head_probabilities(zoo):
    _, cat = zoo
    m = cat.get("mine")
    assert m.head == "sigmoid"
    x = _x(m, 2)
    with torch.no_grad():
        logits = m.module(x)
    for method, kw in (("gradcam", {}), ("saliency", {}), ("rise", {"masks": 16})):
        res = get_method(method).attribute(m, x, ClassTargets(top_k=4), **kw)
        for i in range(2):
            assert len(res.probabilities[i]) == 4
            for t, c in enumerate(res.targets[i]):
                assert res.scores[i][t] == pytest.approx(float(logits[i, c]), rel=1e-4, abs=1e-5)
                assert res.probabilities[i][t] == pytest.approx(float(torch.sigmoid(logits[i, c])), rel=1e-5)
    assert sum(get_method("gradcam").attribute(m, x, ClassTargets(top_k=4)).probabilities[0]) != pytest.approx(1.0)


def test_mismatched_file_names_file_and_first_key(zoo, tmp_path):
    root, _ = zoo
    toml = tmp_path / "bad.toml"
    toml.write_text(models_toml({"v": {"arch": "timm:vit_tiny_patch16_224", "weights": str(root / "vit.pth"),
                                       "num_classes": 5, "kwargs": VIT_KWARGS}}))
    with pytest.raises(ModelLoadError, match=r"vit\.pth.*first mismatching key 'head\.weight' has shape"):
        Catalog(specs_from_file(toml), device="cpu").load_all()
    toml.write_text(models_toml({"v": {"arch": "resnet18", "weights": str(root / "r18.safetensors"),
                                       "labels": ["a", "b"], "num_classes": 3}}))
    with pytest.raises(ModelLoadError, match="2 labels"):
        specs_from_file(toml)
    toml.write_text(models_toml({"v": {"arch": "factory:nowhere_at_all:build"}}))
    with pytest.raises(ModelLoadError, match="nowhere_at_all"):
        Catalog(specs_from_file(toml), device="cpu").load_all()
    toml.write_text(models_toml({"v": {"arch": "export", "weights": str(tmp_path / "missing.pt2")}}))
    with pytest.raises(ModelLoadError, match="missing.pt2"):
        Catalog(specs_from_file(toml), device="cpu").load_all()


# ------------------------------------------------------------------------------------------
# Deployed models without gradients
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["exp_frozen", "ts_nograd"])
def test_gradient_free_models(zoo, name):
    _, cat = zoo
    m = cat.get(name)
    x = _x(m)
    assert get_method("rise").attribute(m, x, ClassTargets(), masks=16).maps[0][0].shape == (32, 32)
    for method in ("gradcam", "saliency", "integrated_gradients", "guided_gradcam", "smoothgrad"):
        with pytest.raises(EngineError) as err:
            get_method(method).attribute(m, x, ClassTargets())
        assert err.value.slug == "gradients-unavailable"
        assert get_method(method).unavailable(m) == "needs gradients"
        # The way out it names comes from the registry: the gradient-free methods that answer for this model.
        assert err.value.choices == gradient_free_methods(m) and str(err.value).endswith(", ".join(err.value.choices))
    assert set(gradient_free_methods()) == {"cam", "eigencam", "scorecam", "ablationcam", "occlusion", "rise",
                                            "drise", "attention_rollout"}
    if name == "exp_frozen":
        assert gradient_free_methods(m) == ["ablationcam", "cam", "eigencam", "occlusion", "rise", "scorecam"]
    else:
        assert gradient_free_methods(m) == ["occlusion", "rise"]
    if name == "exp_frozen":  # the layer is exposed: Eigen-CAM and Score-CAM still answer
        assert get_method("eigencam").attribute(m, x, ClassTargets()).maps[0][0].shape == (8, 8)
        assert get_method("scorecam").attribute(m, x, ClassTargets(), batch_size=16).maps[0][0].shape == (8, 8)
        assert get_method("scorecam").unavailable(m) is None
    else:  # TorchScript exposes no layer outputs
        with pytest.raises(EngineError) as err:
            get_method("eigencam").attribute(m, x, ClassTargets())
        assert err.value.slug == "layer-unusable"
        assert m.layers and not any(li.hookable for li in m.layers)


def test_swin_kwargs_are_lists_in_toml():
    assert models_toml({"s": {"arch": "timm:x", "weights": "w", "kwargs": SWIN_KWARGS}}).count("[1, 1]") == 1
