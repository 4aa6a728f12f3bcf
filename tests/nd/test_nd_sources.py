"""Sources of 3-D convnets (issue 26, item 2): torchvision's video convnets and a MONAI network through
``factory:``, declared as volume models, load with a 3-D layer table and explain with Grad-CAM."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from cnnviz.attribution import ClassTargets, get_method
from cnnviz.models.catalog import load_model
from cnnviz.models.specs import specs_from_file


def test_torchvision_video_convnet_and_monai_factory(tmp_path):
    pytest.importorskip("monai")
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.video.mc3_18(num_classes=4)  # random weights: a local file, nothing downloaded
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / "mc3.safetensors"))
    (tmp_path / "models.toml").write_text("""
[models.mc3]
arch = "mc3_18"
weights = "mc3.safetensors"
num_classes = 4
input = "volume"
channels = 3
size = [4, 32, 32]

[models.monai]
arch = "factory:monai.networks.nets:DenseNet"
input = "volume"
channels = 1
size = [16, 16, 16]
[models.monai.kwargs]
spatial_dims = 3
in_channels = 1
out_channels = 3
init_features = 8
growth_rate = 4
block_config = [2, 2]
""")
    specs = {s.name: s for s in specs_from_file(tmp_path / "models.toml")}
    for name, layer_grid in (("mc3", "cdhw"), ("monai", "cdhw")):
        model = load_model(specs[name])
        assert model.input_kind == "volume" and model.layer(model.default_layer).grid == layer_grid
        assert len(model.labels) == (4 if name == "mc3" else 3)  # MONAI's out_channels: no labels, class_0..2
        x = torch.randn(2, *model.spec.input_shape, generator=torch.Generator().manual_seed(1))
        both = get_method("gradcam").attribute(model, x, ClassTargets(indices=((1,), (2,))))
        alone = get_method("gradcam").attribute(model, x[1:], ClassTargets(indices=((2,),)))
        assert both.maps[0][0].dim() == 3 and torch.isfinite(both.maps[0][0]).all()
        torch.testing.assert_close(both.maps[1][0], alone.maps[0][0], rtol=1e-4, atol=1e-6)
