"""bf16 forwards on the real EfficientNet-Lite0: maps agree with fp32, and answers say what ran.

Agreement is Pearson's r between the bf16 and the fp32 map of the same request (docs/precision.md
has the measurements for every method). Methods that decline bf16 must run fp32 exactly, say so,
and leave nothing behind (the incremental occlusion engine keeps working at fp32).
"""

from __future__ import annotations

import pytest
import torch
from conftest import to_tensor

from cnnviz.attribution import ClassTargets, EngineError, get_method
from cnnviz.precision import offered

pytestmark = [pytest.mark.model,
              pytest.mark.skipif("bf16" not in offered("cpu"), reason="this CPU has no native bf16 kernels")]


def _r(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1])


@pytest.fixture(scope="module")
def x(lite0, chelsea):
    return lite0.preprocessing.batch([to_tensor(chelsea)], device=lite0.device)


def _pair(lite0, x, method: str, reference: dict | None = None, **params):
    """(fp32, bf16) answers; ``reference`` overrides params of the fp32 one."""
    m = get_method(method)
    fp32 = m.attribute(lite0, x, ClassTargets(top_k=1), precision="fp32", **{**params, **(reference or {})})
    bf16 = m.attribute(lite0, x, ClassTargets(top_k=1), precision="bf16", **params)
    return fp32, bf16


@pytest.mark.parametrize(("method", "params", "reference"), [
    ("gradcam", {}, None),
    ("deconvnet", {}, None),  # the gradient method that keeps bf16 (the others decline it: below)
    # Full forwards (81 windows); the fp32 reference from the incremental engine, which gives the full
    # sweep's numbers (tests/model/test_incremental_lite0.py) several times faster.
    ("occlusion", {"engine": "full", "window": 48, "stride": 24}, {"engine": "auto"}),
], ids=["gradcam", "deconvnet", "occlusion-full"])
def test_bf16_maps_agree_with_fp32(lite0, x, method, params, reference):
    fp32, bf16 = _pair(lite0, x, method, reference, **params)
    assert (fp32.extras["precision"], bf16.extras["precision"]) == ("fp32", "bf16")
    assert bf16.targets == fp32.targets and bf16.scores[0][0] == pytest.approx(fp32.scores[0][0], rel=0.02)
    assert bf16.maps[0][0].dtype == torch.float32
    assert _r(fp32.maps[0][0], bf16.maps[0][0]) > 0.99
    assert not bf16.warnings
    assert not torch.is_autocast_enabled("cpu")


def test_saliency_declines_bf16_runs_fp32_and_says_so(lite0, x):
    fp32, asked = _pair(lite0, x, "saliency")
    assert asked.extras["precision"] == "fp32"
    assert any("ran in fp32, not bf16" in w for w in asked.warnings)
    assert torch.equal(asked.maps[0][0], fp32.maps[0][0])


def test_occlusion_on_the_incremental_engine_stays_fp32_and_the_engine_survives(lite0, x):
    params = {"window": 56, "stride": 28}
    fp32, asked = _pair(lite0, x, "occlusion", **params)
    assert asked.extras["engine"] == "incremental" and asked.extras["precision"] == "fp32"
    assert any("incremental engine" in w for w in asked.warnings)
    assert torch.equal(asked.maps[0][0], fp32.maps[0][0])
    again = get_method("occlusion").attribute(lite0, x, ClassTargets(top_k=1), **params)
    assert again.extras["engine"] == "incremental"  # a bf16 request never disables the plan


def test_guided_gradcam_declines_and_its_inner_gradcam_follows(lite0, x):
    fp32, asked = _pair(lite0, x, "guided_gradcam")
    assert asked.extras["precision"] == "fp32"
    assert torch.equal(asked.maps[0][0], fp32.maps[0][0])


@pytest.mark.skipif("fp16" in offered("cpu"), reason="this CPU has native fp16 kernels")
def test_fp16_on_this_cpu_is_refused(lite0, x):
    with pytest.raises(EngineError) as e:
        get_method("gradcam").attribute(lite0, x, ClassTargets(), precision="fp16")
    assert e.value.slug == "precision-unsupported" and e.value.choices == list(offered("cpu"))


def test_batching_never_mixes_precisions_and_keeps_the_one_asked(lite0, x):
    """Needs core/batching.py to key on and pass ``params.precision`` (ExplainBatcher.key and _batched)."""
    from core.batching import ExplainBatcher
    from core.schemas.explain import params_model

    batcher = ExplainBatcher()
    fp32, bf16 = (params_model("gradcam").model_validate({"precision": p}) for p in ("fp32", "bf16"))
    assert batcher.key(lite0, "gradcam", x, fp32) != batcher.key(lite0, "gradcam", x, bf16)
    for res in batcher.run_batch(lite0, "gradcam", [(x, bf16), (x, bf16)]):
        assert res.extras["precision"] == "bf16"
