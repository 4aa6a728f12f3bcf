"""The model catalog: strict weight loading, models files, layer table, errors naming the file."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnviz.models import (
    DEFAULT_MODEL,
    Catalog,
    ModelLoadError,
    ModelSpec,
    default_device,
    layer_table,
    load_model,
    read_state_dict,
    specs_from_file,
)
from cnnviz.models.builders import BUILDERS
from cnnviz.models.efficientnet_lite import SameConv2d, efficientnet_lite
from cnnviz.models.layers import default_target_layer
from cnnviz.models.preprocess import Preprocessing


def test_same_padding_matches_tensorflow_rule():
    # TF SAME: output = ceil(in / stride); extra padding goes to the bottom/right.
    conv = SameConv2d(1, 1, 3, stride=2, bias=False)
    nn.init.ones_(conv.weight)
    x = torch.arange(16.0).view(1, 1, 4, 4)
    y = conv(x)
    assert y.shape[-2:] == (2, 2)
    # Top-left window covers rows 0..2, cols 0..2 of the unpadded input (pad only bottom/right).
    assert y[0, 0, 0, 0] == x[0, 0, :3, :3].sum()
    assert y[0, 0, 1, 1] == x[0, 0, 2:, 2:].sum()


@pytest.mark.parametrize("variant,params", [("efficientnet-lite0", 4_652_008), ("efficientnet-lite2", 6_092_072)])
def test_lite_parameter_counts(variant, params):
    m = efficientnet_lite(variant)
    assert sum(p.numel() for p in m.parameters()) == params


def test_lite_accepts_any_resolution():
    m = efficientnet_lite("efficientnet-lite0").eval()
    with torch.no_grad():
        assert m(torch.zeros(1, 3, 97, 131)).shape == (1, 1000)


def _save_resnet(tmp_path, fmt: str) -> str:
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=7)
    path = tmp_path / f"r18.{fmt}"
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    else:
        torch.save(net.state_dict(), path)
    return str(path)


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_models_file_loads_torchvision_arch(tmp_path, fmt):
    weights = _save_resnet(tmp_path, fmt)
    toml = tmp_path / "models.toml"
    toml.write_text(f'[models.r18]\narch = "resnet18"\nweights = "{weights}"\nnum_classes = 7\ninput_size = 64\n')
    cat = Catalog(specs_from_file(toml), device="cpu", default="r18")
    m = cat.get("r18")
    assert m.default_layer == "layer4"
    assert not any(p.requires_grad for p in m.module.parameters())
    assert not m.module.training
    assert m.labels[0] == "class_0" and len(m.labels) == 7
    assert m.layer("layer4").output_shape == (512, 2, 2)
    # In-place activations are switched off so rules and hooks see clean tensors.
    assert not any(getattr(mod, "inplace", False) for mod in m.module.modules())


def test_missing_weights_file_is_named(tmp_path):
    toml = tmp_path / "models.toml"
    toml.write_text('[models.r18]\narch = "resnet18"\nweights = "nowhere/r18.pth"\n')
    cat = Catalog(specs_from_file(toml), device="cpu")
    with pytest.raises(ModelLoadError, match="nowhere/r18.pth"):
        cat.load_all()


def test_mismatched_weights_are_named(tmp_path):
    weights = _save_resnet(tmp_path, "pth")
    toml = tmp_path / "models.toml"
    toml.write_text(f'[models.r34]\narch = "resnet34"\nweights = "{weights}"\nnum_classes = 7\n')
    with pytest.raises(ModelLoadError, match="r18.pth"):
        load_model(specs_from_file(toml)[0])


def test_pickled_objects_are_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pth"
    torch.save({"x": Evil()}, path)
    with pytest.raises(ModelLoadError, match="evil.pth"):
        read_state_dict(path)


def test_catalog_open_takes_its_configuration_as_arguments_and_reads_no_environment(tmp_path, monkeypatch):
    weights = _save_resnet(tmp_path, "pth")
    toml = tmp_path / "models.toml"
    toml.write_text(f'[models.r18]\narch = "resnet18"\nweights = "{weights}"\nnum_classes = 7\ninput_size = 64\n')
    monkeypatch.setenv("CNNVIZ_MODELS", str(toml))
    monkeypatch.setenv("CNNVIZ_DEVICE", "meta")
    monkeypatch.setenv("CNNVIZ_DEFAULT_MODEL", "r18")
    plain = Catalog.open(None, None, None)
    assert "r18" not in plain.names() and DEFAULT_MODEL in plain.names() and plain.default == DEFAULT_MODEL
    assert plain.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    own = Catalog.open(str(toml), "cpu", "r18")
    assert own.names()[-1] == "r18" and own.default == "r18" and own.device == torch.device("cpu")
    assert Catalog.open(str(toml), "cpu", None).default == DEFAULT_MODEL
    assert Catalog.open(None, "cpu", "no-such-model").default == plain.names()[0]  # a stale name: the first model


def test_the_device_pick_is_a_function_of_its_argument(monkeypatch):
    monkeypatch.setenv("CNNVIZ_DEVICE", "meta")
    assert default_device("cpu") == torch.device("cpu")
    assert default_device(torch.device("meta")) == torch.device("meta")
    assert default_device(None) == default_device() == torch.device("cuda" if torch.cuda.is_available() else "cpu")


def test_every_source_has_its_builder():
    sources = {"resnet18": "torchvision", "efficientnet-lite0": "torchvision", "timm:convnext_tiny": "timm",
               "factory:pkg.mod:fn": "factory", "torchscript": "torchscript", "export": "export", "onnx": "onnx"}
    for arch, source in sources.items():
        assert ModelSpec(name="m", arch=arch, weights="").source == source
    assert set(BUILDERS) == set(sources.values())


def test_unknown_keys_in_models_file(tmp_path):
    toml = tmp_path / "models.toml"
    toml.write_text('[models.x]\narch = "resnet18"\nweights = "a.pth"\ncolour = "red"\n')
    with pytest.raises(ModelLoadError, match="colour"):
        specs_from_file(toml)


def test_layer_table_order_and_default():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 8, 3, stride=2, padding=1),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
    table = layer_table(net, 16)
    assert [li.name for li in table] == [str(i) for i in range(7)]
    assert table[2].output_shape == (8, 8, 8)
    assert default_target_layer(table) == "3"  # last output with a spatial grid > 1x1


def test_preprocessing_stretch_and_crop():
    prep = Preprocessing(32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    img = torch.rand(3, 40, 80)
    assert prep.fit(img).shape == (3, 32, 32)
    assert prep.fit(img, 48, "center-crop").shape == (3, 48, 48)
    x = prep.batch([img, img], device="cpu")
    assert torch.allclose(prep.denormalize(x)[0], prep.fit(img), atol=1e-6)


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest"])
def test_fit_at_the_same_size_is_the_resize_it_skips(interpolation):
    """An image already at the network size skips the resize kernel: the answer is the kernel's, bit for
    bit, and the caller's tensor (here with values out of [0, 1]) is not clamped in place."""
    import torch.nn.functional as F

    prep = Preprocessing(32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), interpolation=interpolation)
    img = torch.rand(3, 32, 32) * 1.4 - 0.2
    kept = img.clone()
    kw = {"antialias": True, "align_corners": False} if interpolation != "nearest" else {}
    assert torch.equal(prep.fit(img), F.interpolate(img[None], size=(32, 32), mode=interpolation, **kw)[0].clamp(0, 1))
    assert torch.equal(img, kept)
    wide = torch.rand(3, 32, 40) * 1.4 - 0.2  # center-crop: the short side is already the crop's
    kept = wide.clone()
    prep_crop = Preprocessing(32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), crop_fraction=1.0, interpolation=interpolation)
    assert torch.equal(prep_crop.fit(wide, mode="center-crop"), wide[:, :, 4:36].clamp(0, 1))
    assert torch.equal(wide, kept)
