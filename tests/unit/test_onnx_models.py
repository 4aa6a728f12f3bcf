"""ONNX models (issue 28): ``arch = "onnx"`` answers predict and the black-box methods on onnxruntime and
every other method through onnx2torch's conversion; the answers equal the torch network it was exported
from. A graph onnx2torch cannot convert (a ``Shrink`` node) still answers the black-box methods, and
the model's detail lists which methods answer.

The networks are the zoo's seeded SmallNet (tests/own_models_kit.py), exported in the test at 32 px.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from own_models_kit import LABELS3, models_toml, nets, save_weights, seeded
from torch import nn

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx2torch")

SIZE = 32


def _export(net: nn.Module, path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.rand(1, 3, SIZE, SIZE),), str(path), input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                          dynamo=False)


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    from cnnviz.models import Catalog

    root = tmp_path_factory.mktemp("onnx")
    mod = nets(root)
    (root / "cnnviz_onnx_twins.py").write_text(
        "from torch import nn\n\nimport cnnviz_test_nets\n\n\n"
        "def opaque(num_classes=3):\n    net = cnnviz_test_nets.build(num_classes=num_classes)\n"
        "    net.features.append(nn.Hardshrink(0.01))\n    return net\n")
    net = seeded(lambda: mod.build(num_classes=3))
    save_weights(net, root / "small.pt")
    _export(net, root / "small.onnx")
    opaque = seeded(lambda: mod.build(num_classes=3))
    opaque.features.append(nn.Hardshrink(0.01))  # exported as an ONNX Shrink node: onnx2torch has no converter
    save_weights(opaque, root / "opaque.pt")
    _export(opaque, root / "opaque.onnx")
    common = {"labels": list(LABELS3), "input_size": SIZE}
    (root / "models.toml").write_text(models_toml({
        "torchnet": {"arch": f"factory:{mod.__name__}:build", "weights": "small.pt", **common},
        "onnxnet": {"arch": "onnx", "weights": "small.onnx", **common},
        "opaque_torch": {"arch": "factory:cnnviz_onnx_twins:opaque", "weights": "opaque.pt", **common},
        "opaque": {"arch": "onnx", "weights": "opaque.onnx", "labels": list(LABELS3)},
    }))
    return Catalog.open(str(root / "models.toml"), "cpu", "onnxnet")


@pytest.fixture(scope="module")
def x():
    return torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


def _maps(model, method: str, x: torch.Tensor, **params):
    from cnnviz.attribution import METHODS, ClassTargets

    m = METHODS[method]
    return m.attribute(model, x, ClassTargets(top_k=2), None, m.Params.build(**params))


def test_predict_runs_on_onnxruntime_and_equals_torch(catalog, x) -> None:
    from cnnviz.models.onnx_graph import OnnxRuntimeModule
    from core.predicting import eager_forward

    onnx, torch_ = catalog.get("onnxnet"), catalog.get("torchnet")
    assert isinstance(onnx.runtime, OnnxRuntimeModule) and onnx.runtime_module is onnx.runtime
    assert onnx.gradients and onnx.module is onnx.runtime.converted  # converted: layers and gradients
    got, _ = eager_forward(onnx, x)
    with torch.no_grad():
        want = torch_.module(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("method", "params"), [("gradcam", {}), ("gradcampp", {}), ("saliency", {}),
                                                 ("occlusion", {"window": 8, "stride": 4}),
                                                 ("rise", {"masks": 64, "cell": 4})])
def test_maps_equal_the_torch_models(catalog, x, method, params) -> None:
    onnx, torch_ = catalog.get("onnxnet"), catalog.get("torchnet")
    got, want = _maps(onnx, method, x, **params), _maps(torch_, method, x, **params)
    assert got.targets == want.targets
    for gi, wi in zip(got.maps, want.maps, strict=True):
        for g, w in zip(gi, wi, strict=True):
            assert g.shape == w.shape
            torch.testing.assert_close(g, w, rtol=1e-3, atol=1e-4 * float(w.abs().max() + 1e-12))
    if method == "occlusion":
        assert got.extras["engine"] == "full"  # whole forwards on onnxruntime


def test_unconvertible_graph_answers_black_box_methods(catalog, x) -> None:
    from cnnviz.attribution import METHODS, EngineError

    opaque, twin = catalog.get("opaque"), catalog.get("opaque_torch")
    assert opaque.module is opaque.runtime and not opaque.gradients and opaque.default_layer is None
    answering = sorted(n for n, m in METHODS.items() if m.unavailable(opaque) is None)
    assert {"occlusion", "rise"} <= set(answering) and "gradcam" not in answering and "saliency" not in answering
    got, want = _maps(opaque, "rise", x, masks=64, cell=4), _maps(twin, "rise", x, masks=64, cell=4)
    for gi, wi in zip(got.maps, want.maps, strict=True):
        for g, w in zip(gi, wi, strict=True):
            torch.testing.assert_close(g, w, rtol=1e-3, atol=1e-5)
    with pytest.raises(EngineError):
        _maps(opaque, "gradcam", x)


def test_model_detail_and_v2_metadata_say_which_methods_answer(catalog) -> None:
    from fastapi.testclient import TestClient

    from core.settings import Settings
    from service.app import create_app

    app = create_app(Settings(redis_url=None, api_keys=[], preload_models=False, compile_predict=False),
                     catalog=catalog)
    with TestClient(app) as c:
        detail = c.get("/v1/models/opaque").json()
        assert detail["ready"] and detail["name"] == "opaque" and detail["gradients"] is False
        assert {"occlusion", "rise"} <= set(detail["methods"]) and "gradcam" not in detail["methods"]
        assert "gradcam" in c.get("/v1/models/onnxnet").json()["methods"]
        meta = c.get("/v2/models/opaque").json()
        assert meta["platform"] == "onnxruntime_onnx" and "gradcam" not in meta["parameters"]["methods"]
        r = c.post("/v2/models/opaque/infer", json={"inputs": [{"name": "input", "datatype": "FP32",
                                                                "shape": [1, 3, SIZE, SIZE], "data": [0.5] * 3072}]})
        assert r.status_code == 200 and r.json()["outputs"][0]["shape"] == [1, 3]
